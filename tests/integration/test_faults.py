"""Faults during a sweep, with real processes: a trial that segfaults, hangs or runs out of memory; a
disk that fills up; two sweeps converting into one cache at the same time.

The faults are injected through the test-only environment variable ``TRTSWEEP_TEST_FAULT``
(:mod:`trtsweep.faults`), never through the user's config.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _row(df: pd.DataFrame, run_id: str) -> pd.Series:
    """results.csv's row of a trial, by its MLflow child run (the table has no data.seed column)."""
    rows = df[df["mlflow_run_id"] == run_id]
    assert len(rows) == 1, df[["mlflow_run_id", "status"]]
    return rows.iloc[0]


def test_segfault_hang_and_out_of_memory_are_failed_with_their_cause_and_the_sweep_goes_on(sweep):
    # data.seed=0 is a normal trial; the timeout includes a fresh worker's TensorFlow import (~20 s on 2 busy cores)
    faults = "segv@data.seed=1,hang@data.seed=2,oom@data.seed=3"
    res = sweep("-m", "engine=tflite", "precision=fp32", "data.seed=0,1,2,3", "trial.timeout_s=60",
                "trial.max_memory_mb=2500", env={"TRTSWEEP_TEST_FAULT": faults})
    assert res.returncode == 0, res.stderr[-3000:]
    causes = {1: "worker crashed with SIGSEGV", 2: "timed out after 60 s (trial.timeout_s)",
              3: "out of memory: worker used"}

    _, children = sweep.runs()
    by_seed = {int(c.data.params["data.seed"]): c for c in children}
    assert sorted(by_seed) == [0, 1, 2, 3] and len(children) == 4
    assert by_seed[0].data.tags["status"] == "ok" and by_seed[0].data.metrics["throughput_ips"] > 0
    for seed, cause in causes.items():
        run = by_seed[seed]
        assert run.info.status == "FAILED", (seed, run.info.status)
        assert run.data.tags["status"] == "failed", (seed, run.data.tags)
        assert cause in run.data.tags["reason"], (seed, run.data.tags["reason"])
    assert "trial.max_memory_mb=2500" in by_seed[3].data.tags["reason"]

    df = pd.read_csv(sweep.results_csv())
    assert len(df) == 4
    ok = _row(df, by_seed[0].info.run_id)
    assert ok.status == "ok" and ok.throughput_ips > 0
    for seed, cause in causes.items():
        row = _row(df, by_seed[seed].info.run_id)
        assert row.status == "failed" and cause in row.reason, (seed, row.status, row.reason)


# ---------------------------------------------------------------------------
# the outputs' disk fills up, or turns read-only, during a sweep
@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs for the sweep directory (root with CAP_SYS_ADMIN, else skipped)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the outputs (needs root and CAP_SYS_ADMIN): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt) -> None:
    """Write to ``mnt`` until it is full."""
    with open(mnt / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**16)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


def _wait_for_first_record(proc: subprocess.Popen, trials) -> None:
    deadline = time.time() + 400
    while not list(trials.glob("*.json")):
        if proc.poll() is not None:
            pytest.fail("the sweep ended before its first trial was recorded:\n" + proc.stdout.read()[-3000:])
        assert time.time() < deadline, "no trial recorded in 400 s"
        time.sleep(0.2)


# A read-only remount of a running sweep's disk is refused (EBUSY) while Hydra keeps the job's log open for
# writing, so the read-only case is the unit test of the same error path (tests/unit/test_atomic_full_disk.py).
@pytest.mark.parametrize("fault, seed, strerror", [("full", 13, "No space left on device")])
def test_outputs_disk_full_or_read_only_is_one_error_and_the_next_run_continues(sweep, small_disk, fault, seed,
                                                                                 strerror):
    sweep_dir = small_disk / "sweep"
    grid = ["-m", "engine=tflite", "precision=fp32", "batch_size=1,2,4", f"data.seed={seed}",
            f"hydra.sweep.dir={sweep_dir}"]
    proc = sweep.popen(*grid)
    try:
        _wait_for_first_record(proc, sweep_dir / "trials")
        if fault == "full":
            _fill(small_disk)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("trtsweep: error:")]
    assert len(errors) == 1, out[-3000:]
    assert errors[0].startswith("trtsweep: error: cannot write ") and strerror in errors[0], errors
    assert "run the same command again" in errors[0]

    # nothing half-written: every record is whole JSON, no temporary file is left, results.csv (if any) is whole
    records = [json.loads(p.read_text()) for p in (sweep_dir / "trials").glob("*.json")]
    assert 1 <= len(records) < 3
    assert not [p for p in sweep_dir.rglob("*") if ".tmp" in p.name]
    assert not list((sweep.cache / "results").glob("*.tmp"))
    if (sweep_dir / "results.csv").exists():
        assert len(pd.read_csv(sweep_dir / "results.csv")) == len(records)
    done = {r["trial_key"] for r in records}

    if fault == "full":
        (small_disk / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    res = sweep(*grid)
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_csv(sweep_dir / "results.csv")
    assert sorted(df.batch_size) == [1, 2, 4] and set(df.status) == {"ok"}
    assert set(df[df.cached].trial_key) >= done  # finished before the fault: not measured again
    parents, children = sweep.runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [c.data.tags["trtsweep.trial_key"] for c in children]
    assert len(keys) == 3 and set(keys) == set(df.trial_key)


# ---------------------------------------------------------------------------
# two sweeps at once on one cache
def test_two_grid_sweeps_at_once_on_one_cache_convert_each_artifact_once(tmp_path, seeded_cache, sweep):
    """Two grid sweeps started together on one fresh ``cache_dir``: each conversion happens once (the other
    sweep waits on its file lock and reuses it), and the cache holds only whole entries."""
    from trtsweep import cache

    grid = ["-m", "engine=tflite", "precision=fp32,fp16", "batch_size=1,2", "tracking=none"]
    runs = [type(sweep)(tmp_path / f"sweep{i}", seeded_cache) for i in range(2)]  # conftest's SweepRun
    procs = []
    for run in runs:
        run.cwd.mkdir()
        procs.append(subprocess.Popen(run.args(*grid), cwd=run.cwd, env=run.env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]

    conversions = [line for out in outs for line in out.splitlines() if "[worker] converting digits_cnn" in line]
    assert sorted(line.split("-> ")[1].strip() for line in conversions) == ["tflite fp16", "tflite fp32"], conversions
    entries = cache.entries(seeded_cache)
    assert not [e for e in entries if e.kind == "leftover" or e.stale], [(e.kind, e.path, e.stale) for e in entries]
    assert len([e for e in entries if e.kind == "artifact"]) == 2
    results = [json.loads(p.read_text()) for p in (seeded_cache / "results").glob("*.json")]
    assert len({r["trial_key"] for r in results}) == 4 and {r["status"] for r in results} == {"ok"}
    for run in runs:
        df = pd.read_csv(run.results_csv())
        assert len(df) == 4 and set(df.status) == {"ok"} and df.trial_key.is_unique
