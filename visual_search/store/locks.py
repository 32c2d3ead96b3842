"""Concurrency guards of the embedded store: the data-dir lock (one process owns an index) and
the readers/exclusive gate (one thread may create, optimise or close while reads wait)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.errors import StoreUnavailableError

try:  # POSIX; on Windows the data-dir lock is skipped (qdrant-edge still locks the shard itself)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


IN_USE_MESSAGE = (
    "The index at this data dir is in use by another process{pid}. Stop it first, or pass another --data-dir."
)


class _DirLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<directory>/lock``, held until release().

    The holder's pid is written into the file so the refusal can name it. The kernel drops the lock
    when the holder exits or is killed, so no stale-lock cleanup is ever needed.
    """

    def __init__(self, directory: Path) -> None:
        self._fh: Any = None
        if fcntl is None:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fh = open(directory / "lock", "a+", encoding="ascii")  # noqa: SIM115 - held for the store's life
        except OSError as exc:  # e.g. a read-only copy of an index: nothing can write it, nothing to guard
            log.warning("Index lock not taken (%s); make sure no other process writes this index", exc)
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            if holder == str(os.getpid()):
                raise StoreUnavailableError(
                    "The index at this data dir is in use by this process already; close it first."
                ) from None
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreUnavailableError(IN_USE_MESSAGE.format(pid=pid)) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.seek(0)
                fh.truncate()
            fh.close()  # closing the descriptor drops the flock

    def __del__(self) -> None:  # an EdgeStore dropped without close() must not keep the dir locked
        self.release()


# The child that builds the HNSW graph. argv: shard path, and a JSON override of the stored HNSW
# config (or "null"): the indexing-thread count is a property of the machine, not of the index,
# so the current setting is applied to shards created elsewhere or with another setting.


class _Gate:
    """Many shared holders (reads, upserts) or one exclusive holder (create, optimize, close).
    A waiting exclusive holder blocks new shared ones, so it is never starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self, timeout: float, busy_message: str) -> Iterator[None]:
        with self._cond:
            if not self._cond.wait_for(lambda: not self._exclusive, timeout):
                raise StoreUnavailableError(busy_message)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: self._shared == 0)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
