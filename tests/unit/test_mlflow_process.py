"""MLflow in its own process (trtsweep.mlflow_process.RemoteTracker): the same answers and failures as
an in-process Tracker, every call recorded, and the sweep's process never imports MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from trtsweep.app import job_config
from trtsweep.config import TrackingConfig, plan_trial
from trtsweep.entry import CONF_DIR
from trtsweep.mlflow_process import RemoteTracker, TrackingError
from trtsweep.results import TrialResult, TrialStatus

ROOT = Path(__file__).resolve().parents[2]


def _result(i: int):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        spec = plan_trial(job_config(compose("config", overrides=["engine=tflite", f"batch_size={i}"])))
    now = time.time()
    return TrialResult(spec.trial_key(), TrialStatus.OK, spec.to_dict(), metrics={"throughput_ips": 10.0 * i},
                       started_at=now, ended_at=now), spec


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    tracker = RemoteTracker(TrackingConfig(uri=f"sqlite:///{db}", experiment="remote", log_models=False))
    yield tracker, db
    tracker.close()


def test_every_call_is_answered_in_order_and_recorded(remote):
    from mlflow.tracking import MlflowClient

    tracker, db = remote
    parent = tracker.parent_run("sweep-key", "a sweep", {"sweeper": "grid"})
    assert tracker.parent_run("sweep-key", "a sweep") == parent  # get-or-create, as in-process
    children = {}
    for i in (1, 2, 3):
        result, spec = _result(i)
        children[i] = tracker.log_trial(parent, result, spec, {"batch_size": i})
    tracker.tag(children[2], {"best": "true"})
    tracker.finish_parent(parent, {"best_throughput_ips": 20.0})
    client = MlflowClient(f"sqlite:///{db}")
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("remote").experiment_id])}
    assert set(runs) == {parent, *children.values()}
    for i, run_id in children.items():
        run = runs[run_id]
        assert run.data.tags["mlflow.parentRunId"] == parent and run.data.metrics["throughput_ips"] == 10.0 * i
        assert run.data.params["batch_size"] == str(i) and run.info.status == "FINISHED"
    assert runs[children[2]].data.tags["best"] == "true"
    assert runs[parent].info.status == "FINISHED" and runs[parent].data.metrics["best_throughput_ips"] == 20.0


def test_an_mlflow_failure_is_raised_in_the_caller_and_the_next_call_works(remote):
    tracker, _ = remote
    with pytest.raises(TrackingError, match="no-such-run"):
        tracker.tag("no-such-run", {"a": 1})
    assert tracker.parent_run("another-key", "another sweep")


def test_submitted_calls_run_in_order_while_the_caller_goes_on_each_with_its_own_outcome(remote):
    from mlflow.tracking import MlflowClient

    tracker, db = remote
    parent = tracker.parent_run("submit-key", "submitted")
    first = tracker.submit("tag", parent, {"step": "1"})
    bad = tracker.submit("tag", "no-such-run", {"a": 1})
    last = tracker.submit("tag", parent, {"step": "2"})
    assert tracker.run_tags(parent)["step"] == "2"  # a call waits for those sent before it: they ran, in order
    assert first.result() is None and last.result() is None
    with pytest.raises(TrackingError, match="no-such-run"):
        bad.result()  # only the failed call raises, when its outcome is asked for
    client = MlflowClient(f"sqlite:///{db}")
    assert tracker.experiment_id == client.get_experiment_by_name("remote").experiment_id


def test_work_that_needs_the_client_runs_in_mlflows_process(remote):
    tracker, _ = remote
    parent = tracker.parent_run("apply-key", "applied")
    # Tracker.apply: module:function(tracker, ...) where the tracker is (this module is on the process's path)
    pid = tracker.apply(f"{__name__}:_process_of", parent)
    assert pid == tracker.proc.pid != os.getpid()


def _process_of(tracker, parent: str) -> int:
    """Runs in MLflow's process (Tracker.apply): its pid, once it read the parent run through the client."""
    assert tracker.client.get_run(parent).info.run_id == parent
    return os.getpid()


def test_mlflow_that_cannot_open_is_reported_at_every_call(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    tracker = RemoteTracker(TrackingConfig(uri=f"sqlite:///{blocker}/mlflow.db", experiment="x"))
    try:
        for _ in range(2):
            with pytest.raises(TrackingError):
                tracker.parent_run("k", "n")
    finally:
        tracker.close()


def test_a_process_that_died_is_an_error_not_a_hang(tmp_path):
    tracker = RemoteTracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="x"))
    try:
        tracker.open()
        tracker.proc.kill()
        tracker.proc.wait(10)
        with pytest.raises(TrackingError, match="the MLflow process exited"):
            tracker.parent_run("k", "n")
    finally:
        tracker.close()


def test_the_process_exits_when_let_go_and_the_caller_never_imports_mlflow(tmp_path):
    code = (
        "import sys\n"
        "from trtsweep.config import TrackingConfig\n"
        "from trtsweep.mlflow_process import RemoteTracker\n"
        f"t = RemoteTracker(TrackingConfig(uri='sqlite:///{tmp_path / 'mlflow.db'}', experiment='x'))\n"
        "assert t.parent_run('k', 'n')\n"
        "assert not [m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')]\n"
        "t.close()\n"
        "print(t.proc.wait(60))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "0"


def test_a_prestarted_process_opens_nothing_until_a_sweep_sends_its_settings(tmp_path, monkeypatch):
    from trtsweep import mlflow_process

    monkeypatch.chdir(tmp_path)
    mlflow_process.prestart()
    mlflow_process.prestart()  # one at a time
    assert len(mlflow_process._PRESTARTED) == 1
    started = mlflow_process._PRESTARTED[0].proc
    time.sleep(3)  # importing MLflow meanwhile
    assert list(tmp_path.iterdir()) == []  # no database before the settings: a sweep that stops leaves nothing
    tracker = RemoteTracker(TrackingConfig(uri="sqlite:///mlflow.db", experiment="x"))
    try:
        assert tracker.proc is started and not mlflow_process._PRESTARTED
        assert tracker.parent_run("k", "n") and (tmp_path / "mlflow.db").exists()
    finally:
        tracker.close()
    assert started.wait(60) == 0
    mlflow_process.prestart()
    unused = mlflow_process._PRESTARTED[0].proc
    mlflow_process._close_all()  # at exit: a process no sweep used just goes
    assert unused.wait(60) == 0 and not mlflow_process._PRESTARTED
