"""Files that are complete or absent: atomic writes, and directories built once across processes.

A reader (another trial worker, a resumed sweep, ``trtsweep cache``) sees the old file or the new
one, never a partial one: everything is written to a temporary name beside its target and renamed
over it.  Temporary names end in ``.tmp`` (files) or hold ``.tmp`` (directories), which is how
``trtsweep cache`` recognises the leftovers of an interrupted write.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

#: OSError numbers that mean "this disk takes no more writes": full, over quota, file too large, read-only,
#: not allowed
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)


def unwritable(e: BaseException | None) -> str | None:
    """One line for an exception (or one in its chain) that says a file could not be written for want of
    space or permission, else None."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            where = e.filename or "a file"
            return (f"cannot write {where}: {e.strerror or os.strerror(e.errno)}; fix: free space on that disk or "
                    "make it writable (or write elsewhere: hydra.sweep.dir=..., cache_dir=...), then run the same "
                    "command again: finished trials are reused")
        e, seen = e.__cause__ or (None if e.__suppress_context__ else e.__context__), seen + 1
    return None


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` fills a temporary file beside ``path``, which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: Path, obj: Any) -> Path:
    """``obj`` as indented JSON (unknown types as ``str``), flushed to disk before the rename."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_npy(path: Path, array: Any) -> Path:
    """``numpy.save`` of ``array`` (through a file object: ``np.save`` would append ``.npy`` to a name)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return atomic_write(path, write)


@contextmanager
def build_once(target: Path, done: Callable[[Path], bool]) -> Iterator[Path | None]:
    """Build the directory ``target`` once, whatever the number of processes that want it.

    Under a file lock (``<target>.lock``): yields ``None`` when ``done(target)`` already holds (another
    process built it; the lock is held until the block ends, so it can be read safely), else a fresh,
    empty directory beside ``target`` to build in, which replaces ``target`` when the block ends
    without an exception (and is removed when it raises)::

        with build_once(target, lambda t: (t / "saved_model.pb").exists()) as work:
            if work is not None:
                build_into(work)
    """
    from filelock import FileLock

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if done(target):
            yield None
            return
        work = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
        try:
            yield work
            if target.exists():  # a partial or stale build that ``done`` refused
                shutil.rmtree(target)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
