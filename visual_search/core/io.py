"""File and progress plumbing shared by the engine, training, the CLI and the app.

* :func:`atomic_path` / :func:`atomic_write_text` / :func:`atomic_copy`: a file is either the old one or
  the complete new one, never torn, even if the process is killed mid-write (temp file in the same
  folder, then ``os.replace``). The temp name is unique, so two writers never share one.
* :func:`progress_bar`: a tqdm bar driven by the engine's ``progress(done, total)`` callbacks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)``: how the engine, the importer and evaluation report progress."""

__all__ = [
    "ProgressFn",
    "atomic_copy",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "progress_bar",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temp path next to ``path``; write it, and on leaving the block it replaces
    ``path`` in one step. On an exception the temp file is removed and ``path`` is left as it was."""
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` durably (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_copy(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


@contextlib.contextmanager
def progress_bar(desc: str, unit: str, **tqdm_options: Any) -> Iterator[ProgressFn]:
    """A tqdm bar as a ``progress(done, total)`` callback; closed when the block ends.

    ``tqdm_options`` go to tqdm as they are (``disable``, ``file``, ``dynamic_ncols``...).
    """
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, **tqdm_options)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
