"""A real MLflow tracking server that goes down in the middle of a sweep: the sweep measures on and keeps
every trial locally, says what MLflow missed, and `trtsweep sync` logs it once the server is back —
each trial exactly once, under one parent run."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1 with a SQLite store in ``root`` (started again on the same store)."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"
        self.db = root / "db.sqlite"

    def start(self, timeout: float = 120) -> None:
        import requests

        log = open(self.root / "server.log", "a")  # noqa: SIM115 - the server's output, for a failure
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.db}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("mlflow server exited:\n" + (self.root / "server.log").read_text()[-3000:])
            try:
                if requests.get(self.uri + "/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        pytest.fail("mlflow server did not answer in time:\n" + (self.root / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # as a crash: no clean shutdown
            self.proc.wait(30)
        self.proc = None

    def finished_children(self) -> int:
        """Trial runs the server has finished, read from its store (no request to the server)."""
        if not self.db.exists():
            return 0
        with sqlite3.connect(self.db, timeout=5) as con:
            return con.execute("select count(*) from runs r join tags t on t.run_uuid = r.run_uuid where "
                               "t.key = 'trtsweep.role' and t.value = 'trial' and r.status != 'RUNNING'"
                               ).fetchone()[0]

    def runs(self, experiment: str = "trtsweep/digits_cnn"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("trtsweep.role") == "parent"]
        children = [r for r in runs if r.data.tags.get("trtsweep.role") == "trial"]
        return parents, children


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "mlflow"
    root.mkdir()
    srv = Server(root, free_port())
    yield srv
    srv.stop()


def sync(run, *args: str) -> subprocess.CompletedProcess:
    """``trtsweep sync`` in the sweep's working directory, with this checkout's code."""
    env = run.env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"})
    return subprocess.run([sys.executable, "-m", "trtsweep.cli", "sync", *args], cwd=run.cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_server_down_mid_sweep_then_sync_logs_each_trial_once(tmp_path, seeded_cache, server, sweep, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the failing call fails at once (a test's time)
    t_start = time.time()
    server.start()
    server_seconds = time.time() - t_start
    run = type(sweep)(tmp_path, seeded_cache)  # a fresh result cache: every trial is measured here
    grid = ["-m", "engine=tflite", "precision=fp32,fp16", "batch_size=1,2", "data.seed=5",
            "measure.min_time_s=0", "measure.min_iters=1", "measure.repeats=1", "measure.warmup_iters=1",
            "confirm.enabled=false", f"tracking.uri={server.uri}"]
    t0 = time.time()
    proc = run.popen(*grid)
    try:
        deadline = time.time() + 300
        # the server goes down once it has the first trial, and the sweep knows (its record is written)
        while server.finished_children() < 1 or not list((tmp_path / "outputs").rglob("trials/*.json")):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("the sweep ended before the server went down:\n" + proc.stdout.read()[-3000:])
            time.sleep(0.1)
        server.stop()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    sweep_seconds = time.time() - t0
    assert proc.returncode == 0, out[-3000:]
    (sweep_dir,) = [p.parent for p in (tmp_path / "outputs").rglob("mlflow_sweep.json")]
    df = pd.read_csv(sweep_dir / "results.csv")
    assert len(df) == 4 and (df.status == "ok").all()  # every trial measured and kept, MLflow or not
    records = [json.loads(p.read_text()) for p in sorted((sweep_dir / "trials").glob("*.json"))]
    pending = [r for r in records if "mlflow_pending" in r]
    assert 1 <= len(pending) <= 3, [r.get("mlflow_pending") for r in records]
    hint = [ln for ln in out.splitlines() if ln.startswith("MLflow unreachable for")]
    assert hint == [f"MLflow unreachable for {len(pending)} trial(s); run `trtsweep sync "
                    f"{sweep_dir.relative_to(tmp_path)}` once it is back"], out[-3000:]

    down = sync(run, str(sweep_dir))  # still down: one line, exit 1, nothing changed
    assert down.returncode == 1, down.stdout + down.stderr
    assert len(down.stderr.strip().splitlines()) == 1 and "does not answer" in down.stderr, down.stderr
    assert f"{len(pending)} trial(s)" in down.stderr and "Traceback" not in down.stderr

    server.start()  # back, on the same store
    t_sync = time.time()
    up = sync(run)  # the latest sweep under outputs/
    sync_seconds = time.time() - t_sync
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"logged {len(pending)} trial(s)" in up.stdout, up.stdout
    parents, children = server.runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = sorted(c.data.tags["trtsweep.trial_key"] for c in children)
    assert keys == sorted(df.trial_key), (keys, sorted(df.trial_key))  # each trial exactly once
    pid = parents[0].info.run_id
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == pid and c.info.status == "FINISHED"
        assert c.data.tags["status"] == "ok" and c.data.metrics["throughput_ips"] > 0
        assert c.data.params["batch_size"] in ("1", "2") and c.data.params["precision"] in ("fp32", "fp16")
    assert parents[0].data.params == {"batch_size": "1,2", "precision": "fp16,fp32"}  # the sweep's axes
    assert parents[0].data.metrics["trials_ok"] == 4
    assert not any("mlflow_pending" in json.loads(p.read_text()) for p in (sweep_dir / "trials").glob("*.json"))

    again = sync(run, str(sweep_dir))  # idempotent: nothing more to log
    assert again.returncode == 0 and "nothing to sync" in again.stdout, again.stdout + again.stderr
    parents2, children2 = server.runs()
    assert sorted(r.info.run_id for r in parents2 + children2) == sorted(r.info.run_id for r in parents + children)
    assert parents2[0].info.status == "FINISHED"
    print(f"server start {server_seconds:.1f} s, sweep with the outage {sweep_seconds:.1f} s ({len(pending)} "
          f"trial(s) pending), trtsweep sync {sync_seconds:.1f} s, test {time.time() - t_start:.1f} s")


def test_server_down_when_sweep_starts_then_rerun_logs_the_cached_trials(tmp_path, seeded_cache, server, sweep):
    """Unreachable from the start: a fault, not a config error — the sweep measures (exit 0) and says so;
    the same command again once the server is up logs the cached results under one parent, none twice."""
    run = type(sweep)(tmp_path, seeded_cache)
    grid = ["-m", "engine=tflite", "precision=fp32,int8_dynamic", "data.seed=6", "measure.min_time_s=0",
            "measure.min_iters=1", "measure.repeats=1", "measure.warmup_iters=1", "confirm.enabled=false",
            f"tracking.uri={server.uri}"]
    first = run(*grid, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "MLflow unreachable for 2 trial(s); run `trtsweep sync" in first.stdout, first.stdout[-2000:]
    assert len(pd.read_csv(run.results_csv())) == 2

    server.start()
    second = run(*grid)  # the same command: the same parent, the cached results logged there
    assert second.returncode == 0, second.stderr[-3000:]
    assert "MLflow unreachable" not in second.stdout and "(cached, measured" in second.stdout + second.stderr
    parents, children = server.runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.params["precision"] for c in children) == ["fp32", "int8_dynamic"]
    assert all(c.data.tags["cached"] == "true" for c in children)
    # the first sweep's own directory: its trials are in MLflow now, so sync only closes the books
    first_dir = min((tmp_path / "outputs").rglob("mlflow_sweep.json"), key=lambda p: p.stat().st_mtime).parent
    done = sync(run, str(first_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    _, children2 = server.runs()
    assert sorted(c.info.run_id for c in children2) == sorted(c.info.run_id for c in children)
