"""Atomic writes on a disk that takes no more (RLIMIT_FSIZE in a child process: writes past the limit fail
with EFBIG, as on a full disk), and the one line a sweep prints for it (trtsweep.atomic.unwritable)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from trtsweep.atomic import unwritable

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from pathlib import Path
from trtsweep.atomic import atomic_write_json, atomic_write_text, unwritable
target = Path(sys.argv[1])
for write in (lambda: atomic_write_text(target, "x" * 200_000), lambda: atomic_write_json(target, ["y" * 200_000])):
    try:
        write()
    except OSError as e:
        print(e.errno, unwritable(e))
    else:
        print("written")
"""


def _limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_write_that_does_not_fit_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("the previous results\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    r = subprocess.run([sys.executable, "-c", CHILD, str(target)], env=env, capture_output=True, text=True,
                       preexec_fn=_limit, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{errno.EFBIG} cannot write ") for line in lines), lines
    assert "File too large" in lines[0] and "run the same command again" in lines[0]
    assert target.read_text() == "the previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_unwritable_names_disk_errors_only():
    full = OSError(errno.ENOSPC, "No space left on device", "/out/trials/1.json")
    assert unwritable(full).startswith("cannot write /out/trials/1.json: No space left on device; fix: ")
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("while saving the config") from None
    except RuntimeError as wrapped:
        assert unwritable(wrapped) is None  # `from None` keeps the context; only an explicit chain is followed
    chained = RuntimeError("hydra")
    chained.__cause__ = OSError(errno.EROFS, "Read-only file system", "/out/x")
    assert "Read-only file system" in unwritable(chained)
    assert unwritable(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")) is None
    assert unwritable(ValueError("bad")) is None
