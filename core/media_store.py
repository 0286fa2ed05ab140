"""Private, short-lived storage of the media that users upload, per session.

Each session gets a folder with 0700 permissions under the store's root. An upload
is moved there from Gradio's upload cache when the question that carries it is
submitted, so Gradio no longer serves the original. The original (which may carry
EXIF and GPS data) is deleted once intake has decoded it, and only the
metadata-free PNG made from intake's pixels is kept for display. Every file of a session is deleted when the
session ends, when the user forgets its image, or after ``retention_s`` seconds.

Files that Gradio copies into its own cache to serve them are registered as derived
files of the upload, by the path Gradio gives them, so they are deleted with it.

Example::

    store = MediaStore(root=None, retention_s=3600, gradio_cache_dir=Path(os.environ["GRADIO_TEMP_DIR"]))
    private_path = store.adopt_upload("session-1", Path(upload_path))
    store.forget("session-1", media_id)
    store.end_session("session-1")
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.types import ImageInput

logger = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
MIN_SWEEP_INTERVAL_S = 5.0


@dataclass
class StoredMedia:
    """One upload kept for a session and the files made from it."""

    media_id: str
    """Random id of the upload until intake names it by content hash (``sha256:...``)."""
    path: Path | None
    """The private copy of the upload, or None once it is deleted after intake."""
    created_s: float
    """time.time() when the upload arrived."""
    derived: set[Path] = field(default_factory=set)
    """Display copies and Gradio cache files made from the upload."""


class MediaStore:
    """Per-session private folders for uploads, with forget, session end and retention sweeps.

    All methods are thread-safe. ``root=None`` makes a fresh folder in the system's
    temporary folder, which the store deletes in ``close``.
    """

    def __init__(self, *, root: Path | None, retention_s: float, gradio_cache_dir: Path | None = None) -> None:
        self.owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="sightline-media-")) if root is None else Path(root)
        _make_private_dir(self.root)
        self.retention_s = float(retention_s)
        self.gradio_cache_dir = Path(gradio_cache_dir).resolve() if gradio_cache_dir else None
        self._sessions: dict[str, dict[str, StoredMedia]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        logger.info("Media store at %s, retention %.0f s", self.root, self.retention_s)

    def session_dir(self, session_id: str) -> Path:
        """Return the session's private folder, created with 0700 permissions on first use."""
        folder = self.root / _safe_name(session_id)
        _make_private_dir(folder)
        return folder

    def adopt_upload(self, session_id: str, upload: Path) -> tuple[str, Path]:
        """Move an uploaded file into the session's private folder and return its media id and new path.

        The file keeps its name, because messages show it, inside a random sub-folder.
        Gradio's now empty upload folder is removed. A file outside Gradio's cache is
        copied, not moved, so the store never deletes a file it did not receive.
        """
        media_id = "upload:" + secrets.token_hex(8)
        folder = self.session_dir(session_id) / media_id.split(":", 1)[1]
        _make_private_dir(folder)
        target = folder / upload.name

        if self._in_gradio_cache(upload):
            shutil.move(str(upload), target)
            _remove_empty_dir(upload.parent)
        else:
            shutil.copyfile(upload, target)
        os.chmod(target, PRIVATE_FILE_MODE)

        with self._lock:
            self._sessions.setdefault(session_id, {})[media_id] = StoredMedia(
                media_id=media_id, path=target, created_s=time.time())
        logger.debug("Adopted upload session=%s media=%s bytes=%d", session_id, media_id, target.stat().st_size)
        return media_id, target

    def rename(self, session_id: str, media_id: str, new_id: str) -> None:
        """Key a stored upload by its content id (from intake) in place of its random upload id."""
        with self._lock:
            media = self._sessions.get(session_id, {}).pop(media_id, None)
            if media is None:
                return
            existing = self._sessions[session_id].get(new_id)
            if existing is not None:
                existing.derived |= media.derived | ({media.path} if media.path else set())
                return
            media.media_id = new_id
            self._sessions[session_id][new_id] = media

    def discard_original(self, session_id: str, media_id: str) -> None:
        """Delete the original upload bytes, which may carry metadata, once intake has decoded them."""
        with self._lock:
            media = self._sessions.get(session_id, {}).get(media_id)
            if media is None or media.path is None:
                return
            path, media.path = media.path, None
            media.derived.add(path.parent)
        _delete(path)
        _remove_empty_dir(path.parent)

    def save_display_copy(self, session_id: str, image: ImageInput) -> Path:
        """Write the intake's metadata-free pixels as a PNG in the session folder, once per image id."""
        folder = self.session_dir(session_id)
        path = folder / (image.id.replace("sha256:", "") + ".png")
        if not path.exists():
            image.image.save(path, format="PNG")
            os.chmod(path, PRIVATE_FILE_MODE)
        self.add_derived(session_id, image.id, path)
        panel_copy = self._gradio_panel_copy(image)
        if panel_copy is not None:
            with self._lock:
                self._sessions[session_id][image.id].derived.add(panel_copy)
        return path

    def _gradio_panel_copy(self, image: ImageInput) -> Path | None:
        """Return the cache folder where gr.AnnotatedImage(format="png") saves these pixels, or None without a cache.

        Gradio 6.31 names it by a seeded SHA-256 of the PNG that
        gradio.processing_utils.encode_pil_to_bytes makes.
        """
        if self.gradio_cache_dir is None:
            return None
        from gradio.processing_utils import encode_pil_to_bytes, hash_bytes

        return self.gradio_cache_dir / hash_bytes(encode_pil_to_bytes(image.image, "png"))

    def add_derived(self, session_id: str, media_id: str, path: Path) -> None:
        """Record a file made from an upload, so forget and sweeps delete it with the upload.

        A path in the session folder is also mapped to the folder in Gradio's cache that
        Gradio copies it to when it serves it.
        """
        paths = {Path(path)}
        cache_copy = self.gradio_cache_copy(Path(path))
        if cache_copy is not None:
            paths.add(cache_copy)
        with self._lock:
            media = self._sessions.setdefault(session_id, {}).setdefault(
                media_id, StoredMedia(media_id=media_id, path=None, created_s=time.time()))
            media.derived |= paths

    def gradio_cache_copy(self, path: Path) -> Path | None:
        """Return the folder in Gradio's cache that contains Gradio's copy of ``path``, or None without a cache.

        Gradio names that folder by a seeded SHA-256 of the file's content
        (gradio.processing_utils.hash_file in Gradio 6.31).
        """
        if self.gradio_cache_dir is None or not Path(path).is_file():
            return None
        from gradio.processing_utils import hash_file

        return self.gradio_cache_dir / hash_file(path)

    def owner_of(self, path: Path) -> str | None:
        """Return the session whose upload or derived file contains ``path``, or None when no session registered it."""
        path = Path(path)
        with self._lock:
            for session_id, session_media in self._sessions.items():
                for media in session_media.values():
                    for owned in media.derived | ({media.path} if media.path else set()):
                        if path == owned or path.is_relative_to(owned):
                            return session_id
        return None

    def media_ids(self, session_id: str) -> list[str]:
        with self._lock:
            return list(self._sessions.get(session_id, {}))

    def forget(self, session_id: str, media_id: str) -> int:
        """Delete one upload of a session and every file made from it; return how many paths were deleted."""
        with self._lock:
            media = self._sessions.get(session_id, {}).pop(media_id, None)
        if media is None:
            return 0
        deleted = self._delete_media(media)
        logger.info("Forgot media session=%s media=%s paths=%d", session_id, media_id, deleted)
        return deleted

    def end_session(self, session_id: str) -> int:
        """Delete every file of a session and its folder; return how many paths were deleted."""
        with self._lock:
            media_list = list(self._sessions.pop(session_id, {}).values())
        deleted = sum(self._delete_media(media) for media in media_list)
        folder = self.root / _safe_name(session_id)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            deleted += 1
        logger.info("Ended media session=%s paths=%d", session_id, deleted)
        return deleted

    def sweep(self, *, now_s: float | None = None) -> int:
        """Delete uploads older than the retention period, and Gradio cache files as old; return the count."""
        now_s = time.time() if now_s is None else now_s
        cutoff_s = now_s - self.retention_s

        expired: list[StoredMedia] = []
        with self._lock:
            for session_media in self._sessions.values():
                for media_id in [key for key, media in session_media.items() if media.created_s <= cutoff_s]:
                    expired.append(session_media.pop(media_id))
        deleted = sum(self._delete_media(media) for media in expired)

        # Files that no session registered (a crash between upload and intake, a session
        # that Gradio dropped) are found by age on disk.
        for folder in (self.root, self.gradio_cache_dir):
            if folder is not None:
                deleted += _delete_older_than(folder, cutoff_s)
        if deleted:
            logger.info("Retention sweep deleted %d paths older than %.0f s", deleted, self.retention_s)
        return deleted

    def start_sweeper(self, *, interval_s: float) -> None:
        """Run ``sweep`` every ``interval_s`` seconds in a daemon thread until ``close``."""
        interval_s = max(MIN_SWEEP_INTERVAL_S, float(interval_s))

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.sweep()
                except OSError as error:
                    logger.error("Retention sweep of %s failed: %s", self.root, error)

        self._sweeper = threading.Thread(target=loop, name="sightline-media-sweeper", daemon=True)
        self._sweeper.start()
        logger.info("Started the retention sweeper every %.0f s", interval_s)

    def close(self) -> None:
        """Stop the sweeper and delete every session's files, and the root folder when the store made it."""
        self._stop.set()
        with self._lock:
            sessions = list(self._sessions)
        for session_id in sessions:
            self.end_session(session_id)
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
        logger.info("Closed the media store at %s", self.root)

    def _in_gradio_cache(self, path: Path) -> bool:
        return self.gradio_cache_dir is not None and Path(path).resolve().is_relative_to(self.gradio_cache_dir)

    def _delete_media(self, media: StoredMedia) -> int:
        paths = set(media.derived) | ({media.path} if media.path is not None else set())
        deleted = 0
        for path in paths:
            if _delete(path):
                deleted += 1
                _remove_empty_dir(path.parent)
        return deleted


def _safe_name(session_id: str) -> str:
    """Turn a session id into a folder name that cannot leave the store's root."""
    cleaned = "".join(character for character in session_id if character.isalnum() or character in "-_")
    return cleaned or "anonymous"


def _make_private_dir(folder: Path) -> None:
    folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != PRIVATE_DIR_MODE:
        os.chmod(folder, PRIVATE_DIR_MODE)


def _delete(path: Path) -> bool:
    """Delete a file or a folder tree; return False when it was already gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as error:
        logger.error("Could not delete %s: %s", path, error)
        return False


def _remove_empty_dir(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _delete_older_than(folder: Path, cutoff_s: float) -> int:
    """Delete the files under ``folder`` last changed before ``cutoff_s``, then the folders left empty."""
    deleted = 0
    for directory, subdirectories, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(directory) / name
            try:
                if path.lstat().st_mtime <= cutoff_s and _delete(path):
                    deleted += 1
            except FileNotFoundError:
                continue
        if Path(directory) != folder:
            _remove_empty_dir(Path(directory))
    return deleted
