"""Ownership of the embedded Chroma store by one process, and detection of a store left broken.

The embedded store (a Chroma ``PersistentClient`` on SQLite and HNSW files) is not
safe for writers in several processes. Every ``sightline`` command that opens it
first takes an exclusive ``fcntl.flock`` on ``data_dir/chroma.lock``. ``serve`` holds
it for its whole life and indexes at start-up, so ``sightline index`` while a server
runs stops with a message instead of writing under it. Within the owning process,
``KnowledgeBase`` serialises writes with a thread lock.

While an indexing run writes, the marker file ``data_dir/chroma.indexing`` exists.
A marker found at start-up means a run was killed half-way, so the store is deleted
and rebuilt from the documents.

Example::

    with StoreLock(settings.data_dir, command="index"):
        engine.index()
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from core.types import SightlineError

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "chroma.lock"
INDEXING_MARKER_NAME = "chroma.indexing"


class StoreLock:
    """Exclusive, non-blocking advisory lock on the data folder's Chroma store, released when the process ends."""

    def __init__(self, data_dir: Path, *, command: str) -> None:
        self.path = Path(data_dir) / LOCK_FILE_NAME
        self.command = command
        self._handle = None

    def acquire(self) -> None:
        """Take the lock, or raise SightlineError naming the process that holds it and what to do."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another sightline process"
            handle.close()
            raise SightlineError(
                f"The knowledge-base store in {self.path.parent} is in use by {holder}. "
                "A running `sightline serve` indexes the knowledge base when it starts: restart it to "
                f"pick up changed documents, or stop it before running `sightline {self.command}`."
            ) from None

        handle.seek(0)
        handle.truncate()
        handle.write(f"sightline {self.command} (pid {os.getpid()})\n")
        handle.flush()
        self._handle = handle
        logger.info("Took the store lock %s for %s", self.path, self.command)

    def release(self) -> None:
        """Release the lock; the kernel also releases it when the process dies."""
        if self._handle is None:
            return
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None
        logger.info("Released the store lock %s", self.path)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def indexing_marker(data_dir: Path) -> Path:
    """Return the path of the marker that exists while an indexing run writes to the store."""
    return Path(data_dir) / INDEXING_MARKER_NAME
