"""ASGI middleware that serves a user's uploads and their display copies only to the browser that sent them.

Gradio 6.31 serves every file in its upload cache to anyone who has the URL. This
middleware gives each browser a random, HttpOnly cookie, records which browser
uploaded each file (from the response of ``/gradio_api/upload``), and returns 404 for
a request for a registered file from any other browser. Files that Sightline makes
from an upload are registered through the media store (``MediaStore.owner_of``).

Example::

    guard = FileGuard(media_store=store)
    app.launch(app_kwargs={"middleware": [Middleware(FileGuardMiddleware, guard=guard)]})
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import unquote

from core.media_store import MediaStore

logger = logging.getLogger(__name__)

COOKIE_NAME = "sightline_browser"
UPLOAD_PATHS = ("/gradio_api/upload",)
FILE_PREFIXES = ("/gradio_api/file=", "/file=")
MAX_UPLOAD_RESPONSE_BYTES = 1024 * 1024
"""The upload route returns a JSON list of paths. A larger response body is passed on unread."""


class FileGuard:
    """Registry of the browser that owns each uploaded file, thread-safe."""

    def __init__(self, *, media_store: MediaStore) -> None:
        self.media_store = media_store
        self._upload_owners: dict[Path, str] = {}
        self._session_browsers: dict[str, str] = {}
        self._lock = threading.Lock()

    def claim_upload(self, path: Path, browser: str) -> None:
        with self._lock:
            self._upload_owners[Path(path)] = browser

    def bind_session(self, session_id: str, browser: str | None) -> None:
        """Record the browser of a Gradio session, so files the session's answers made are served to it only."""
        if browser:
            with self._lock:
                self._session_browsers[session_id] = browser

    def owner(self, path: Path) -> str | None:
        """Return the browser that may fetch ``path``, or None when the file is not a user's."""
        path = Path(path)
        with self._lock:
            browser = self._upload_owners.get(path)
        if browser is not None:
            return browser
        session_id = self.media_store.owner_of(path)
        if session_id is None:
            return None
        with self._lock:
            # A session's file with no known browser is denied to everyone rather than served to all.
            return self._session_browsers.get(session_id, "")


class FileGuardMiddleware:
    """Pure ASGI middleware: set the browser cookie, record uploads, and deny other browsers' files."""

    def __init__(self, app, *, guard: FileGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        browser = _browser_cookie(scope)
        new_cookie = None
        if browser is None:
            browser = secrets.token_urlsafe(24)
            new_cookie = f"{COOKIE_NAME}={browser}; Path=/; HttpOnly; SameSite=Strict"
            _set_request_cookie(scope, browser)

        path = scope.get("path", "")
        file_path = _requested_file(path, scope)
        if file_path is not None:
            owner = self.guard.owner(file_path)
            if owner is not None and owner != browser:
                logger.warning("Denied a request for another browser's file %s", file_path.name)
                await _send_not_found(send)
                return

        is_upload = path in UPLOAD_PATHS and scope.get("method") == "POST"
        body = bytearray()

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start" and new_cookie is not None:
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"set-cookie", new_cookie.encode("latin-1"))]}
            elif message["type"] == "http.response.body" and is_upload and len(body) < MAX_UPLOAD_RESPONSE_BYTES:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    self._claim_uploads(bytes(body), browser)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _claim_uploads(self, body: bytes, browser: str) -> None:
        try:
            paths = json.loads(body)
        except ValueError:
            return
        if isinstance(paths, list):
            for uploaded in paths:
                if isinstance(uploaded, str):
                    self.guard.claim_upload(Path(uploaded).resolve(), browser)


def browser_of(request) -> str | None:
    """Return the browser cookie of a gr.Request, or None without one."""
    cookies = getattr(request, "cookies", None) or {}
    return cookies.get(COOKIE_NAME)


def _browser_cookie(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            cookie = SimpleCookie()
            cookie.load(value.decode("latin-1"))
            if COOKIE_NAME in cookie:
                return cookie[COOKIE_NAME].value
    return None


def _set_request_cookie(scope, browser: str) -> None:
    """Add the new cookie to this request too, so the first page load's own requests carry it."""
    headers = [header for header in scope.get("headers", []) if header[0] != b"cookie"]
    existing = b"; ".join(value for name, value in scope.get("headers", []) if name == b"cookie")
    joined = (existing + b"; " if existing else b"") + f"{COOKIE_NAME}={browser}".encode("latin-1")
    scope["headers"] = [*headers, (b"cookie", joined)]


def _requested_file(path: str, scope) -> Path | None:
    """Return the absolute file path of a Gradio file request, or None for any other request."""
    raw_path = scope.get("raw_path")
    text = unquote(raw_path.decode("latin-1")) if raw_path else path
    for prefix in FILE_PREFIXES:
        if text.startswith(prefix):
            requested = text[len(prefix):].split("?", 1)[0]
            try:
                return Path(requested).resolve()
            except (OSError, ValueError):
                return None
    return None


async def _send_not_found(send) -> None:
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": b"File not found."})
