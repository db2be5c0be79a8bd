"""``trtsweep nightly`` end to end: a real quick nightly of digits_cnn (LiteRT and ONNX Runtime FP32) run
twice in one directory, as cron would run it, and its exit codes for configuration and infrastructure
errors.

The second night runs with the test fault ``slow@engine=onnx`` (every ONNX Runtime inference 5 ms
slower): that configuration, and only that one, is flagged against the first night (exit 1), while the
LiteRT one, re-measured as it was, is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["model=digits_cnn", "engine=tflite,onnx", "precision=fp32", "measure.warmup_iters=5", "measure.min_iters=20",
         "measure.min_time_s=0.2", "measure.repeats=3", "data.eval_samples=128", "data.calibration_samples=32"]


def nightly(cwd: Path, cache: Path, *args: str, env: dict | None = None, timeout: float = 900
            ) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {}),
         "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}  # this checkout's trtsweep
    e.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "trtsweep.cli", "nightly", *args, f"cache_dir={cache}"], cwd=cwd,
                          env=e, capture_output=True, text=True, timeout=timeout)


def latest_verdict(cwd: Path) -> dict:
    found = sorted((cwd / "outputs" / "nightly").rglob("nightly.json"), key=lambda p: p.stat().st_mtime)
    assert found, "no nightly.json written"
    return json.loads(found[-1].read_text())


@pytest.mark.slow
def test_a_quick_nightly_twice_on_digits_cnn(tmp_path, cache_dir):
    from mlflow.tracking import MlflowClient

    first = nightly(tmp_path, cache_dir, *QUICK)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "no baseline yet" in first.stdout.lower() and "exit 0" in first.stdout
    v1 = latest_verdict(tmp_path)
    assert sorted(c["kind"] for c in v1["configs"]) == ["new", "new"]

    second = nightly(tmp_path, cache_dir, *QUICK, env={"TRTSWEEP_TEST_FAULT": "slow@engine=onnx"})
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    assert "converting" not in second.stderr  # measured afresh, the conversions reused
    v2 = latest_verdict(tmp_path)
    kinds = {c["label"].split()[1]: c["kind"] for c in v2["configs"]}
    assert kinds == {"tflite": "ok", "onnx": "regressed"}, second.stdout[-3000:]
    onnx = next(c for c in v2["configs"] if c["kind"] == "regressed")
    assert onnx["history_runs"] == 1
    assert "REGRESSED" in second.stdout and "vs the median of 1 nightly run(s)" in second.stdout
    assert "exit 1" in second.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("trtsweep/nightly")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("trtsweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("trtsweep.role") == "trial"]
    assert len(parents) == 2 and len(children) == 4  # one parent per night, every trial logged afresh
    for r in parents + children:
        t = r.data.tags
        assert t["nightly"] == "true" and t["nightly_date"] and t["nightly_run"] and t["nightly_suite"]
        assert t["trtsweep.machine_id"]
    for p in parents:  # host and library facts once per sweep, on its parent (the children link to it)
        assert p.data.tags["version.tensorflow"] and p.data.tags["version.mlflow"]
    assert all(c.data.tags["cached"] == "false" and c.data.tags["trtsweep.config_id"] for c in children)
    assert len({c.data.tags["trtsweep.config_id"] for c in children}) == 2  # the same two configurations
    tonight = next(p for p in parents if p.data.tags["nightly_run"] == v2["run"])
    assert tonight.data.tags["nightly.verdict"] == "regressed" and tonight.data.tags["nightly.regressed"] == "1"
    logged = {f.path for f in client.list_artifacts(tonight.info.run_id)}
    assert {"nightly.txt", "nightly.json", "report.html", "report.md"} <= logged
    page = sorted((tmp_path / "outputs" / "nightly").rglob("report.html"), key=lambda p: p.stat().st_mtime)[-1]
    assert "Throughput over time" in page.read_text()  # the nightly's history with its regression band
    flagged = client.get_run(onnx["run_id"]).data.tags
    assert flagged["nightly.verdict"] == "regressed" and "throughput" in flagged["nightly.regression"]


@pytest.mark.slow
def test_configuration_and_infrastructure_errors_exit_2(tmp_path, cache_dir):
    off = nightly(tmp_path, cache_dir, *QUICK, "tracking=none", timeout=300)
    assert off.returncode == 2
    line = off.stderr.strip().splitlines()[-1]
    assert "tracking=none" in line and "fix: tracking=sqlite" in line
    down = nightly(tmp_path, cache_dir, *QUICK, "tracking=server", "tracking.uri=http://127.0.0.1:9", timeout=300,
                   env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    assert down.returncode == 2, down.stderr[-2000:]
    assert "MLflow at http://127.0.0.1:9 is unavailable" in down.stderr and "fix:" in down.stderr
    assert not list(tmp_path.rglob("trials/*.json"))  # stopped before the first trial, both times
    bad = nightly(tmp_path, cache_dir, "--floor", "2", *QUICK, timeout=60)
    assert bad.returncode == 2 and "--floor 0.05" in bad.stderr
