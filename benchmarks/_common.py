"""Shared helpers for the benchmark scripts (each prints ratios measured in one run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def host_line() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from trtsweep.host import host_facts

    f = host_facts()
    return f"host: {f['host.cpu_model']} | flags {f['host.cpu_flags']} | {f['host.cores']} cores"


def child_pythonpath() -> str:
    """This checkout's ``src`` and root first, then the caller's PYTHONPATH made absolute: the sweep runs
    in another directory, and must run the same code as ``ROOT / "sweep.py"``."""
    given = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys([str(ROOT / "src"), str(ROOT), *given]))


def run_sweep(overrides: list[str], workdir: Path) -> tuple[float, pd.DataFrame, str]:
    """Run ``python sweep.py`` in ``workdir``; returns (wall seconds, results table, output)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=child_pythonpath())
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *overrides], cwd=workdir, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"sweep failed ({res.returncode}):\n{res.stderr[-3000:]}")
    csvs = sorted((workdir / "outputs").rglob("results.csv"), key=lambda p: p.stat().st_mtime)
    return wall, pd.read_csv(csvs[-1]), res.stdout + res.stderr
