"""Access control for the web app: where it may bind, who may log in, and how often a session may ask.

Passwords are stored as scrypt hashes (RFC 7914, through ``hashlib.scrypt``) in this form::

    scrypt$<log2 N>$<r>$<p>$<salt, base64>$<hash, base64>

``sightline hash-password`` prints one. The ``auth_users`` setting lists logins as
``name:hash`` pairs separated by commas.

Example::

    check_bind(settings)                      # raises SightlineError for an unsafe address
    users = parse_users(settings.auth_users)
    verify_password("secret", users["alice"])
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import deque

from core.settings import Settings
from core.types import SightlineError

logger = logging.getLogger(__name__)

HASH_SCHEME = "scrypt"
SCRYPT_LOG2_N = 15
"""scrypt cost: N = 2**15 with r = 8 needs 32 MiB and about 0.1 s per check."""
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
SCRYPT_MAX_MEMORY_BYTES = 128 * 1024 * 1024
RATE_WINDOW_S = 60.0
LOOPBACK_NAMES = ("localhost",)

BUSY_MESSAGE = "Sightline is busy, try again in a minute."


def hash_password(password: str) -> str:
    """Hash a password with scrypt and a random salt, in the documented ``scrypt$...`` form."""
    if not password:
        raise SightlineError("The password is empty; type a password to hash.")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    encoded_salt = base64.b64encode(salt).decode()
    encoded_digest = base64.b64encode(digest).decode()
    return f"{HASH_SCHEME}${SCRYPT_LOG2_N}${SCRYPT_R}${SCRYPT_P}${encoded_salt}${encoded_digest}"


def verify_password(password: str, stored_hash: str) -> bool:
    """Tell whether a password matches a stored hash, comparing in constant time; False for a malformed hash."""
    try:
        scheme, log2_n, r, p, encoded_salt, encoded_digest = stored_hash.split("$")
        if scheme != HASH_SCHEME:
            return False
        salt = base64.b64decode(encoded_salt, validate=True)
        expected = base64.b64decode(encoded_digest, validate=True)
        digest = _scrypt(password, salt, int(log2_n), int(r), int(p), length=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, *, length: int = HASH_BYTES) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** log2_n, r=r, p=p,
                          maxmem=SCRYPT_MAX_MEMORY_BYTES, dklen=length)


def parse_users(auth_users: str) -> dict[str, str]:
    """Parse ``name:hash,name:hash`` into a name-to-hash map; raise SightlineError naming a bad entry."""
    users: dict[str, str] = {}
    for entry in (part.strip() for part in auth_users.split(",")):
        if not entry:
            continue
        name, separator, stored_hash = entry.partition(":")
        if not separator or not name or not stored_hash.startswith(HASH_SCHEME + "$"):
            shown = name if separator else entry[:20]
            raise SightlineError(
                f"auth_users entry {shown!r} is not of the form name:scrypt$...; "
                "make the hash with `sightline hash-password`."
            )
        users[name] = stored_hash
    return users


def is_loopback(host: str) -> bool:
    """Tell whether an address or host name only reaches this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> dict[str, str]:
    """Return the users who may log in, and raise SightlineError when the bind address is unsafe.

    Binding to loopback needs nothing. Any other address needs ``allow_remote`` and at
    least one user, so the app never listens on a network without a login.
    """
    users = parse_users(settings.auth_users)
    if is_loopback(settings.host):
        return users
    if not settings.allow_remote:
        raise SightlineError(
            f"Refusing to bind to {settings.host}, which other machines can reach. Set allow_remote "
            "(SIGHTLINE_ALLOW_REMOTE=true) and at least one login in auth_users, or bind to 127.0.0.1."
        )
    if not users:
        raise SightlineError(
            f"Refusing to bind to {settings.host} without a login: add users to auth_users "
            "(SIGHTLINE_AUTH_USERS=name:hash), making each hash with `sightline hash-password`."
        )
    return users


class RateLimiter:
    """Sliding-window count of requests per key (a browser session), thread-safe."""

    def __init__(self, *, max_per_minute: int) -> None:
        self.max_per_window = max_per_minute
        self._times: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, *, now_s: float | None = None) -> bool:
        """Count a request for ``key`` and tell whether it is within the limit; 0 or less means no limit."""
        if self.max_per_window <= 0:
            return True
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            times = self._times.setdefault(key, deque())
            while times and times[0] <= now_s - RATE_WINDOW_S:
                times.popleft()
            if len(times) >= self.max_per_window:
                logger.warning("Rate limit reached session=%s limit=%d/min", key, self.max_per_window)
                return False
            times.append(now_s)
            return True

    def forget(self, key: str) -> None:
        with self._lock:
            self._times.pop(key, None)
