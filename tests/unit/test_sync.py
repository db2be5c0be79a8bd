"""trtsweep.sync: what a sweep keeps when MLflow is down, and `trtsweep sync` logging it once, on a SQLite
store (the real server outage: tests/integration/test_mlflow_outage.py)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir

from trtsweep import cli, sync
from trtsweep.app import job_config
from trtsweep.atomic import atomic_write_json
from trtsweep.config import TrackingConfig, plan_trial
from trtsweep.entry import CONF_DIR
from trtsweep.results import TrialResult, TrialStatus
from trtsweep.tracking import ROLE_TAG, TRIAL_TAG, Tracker


@pytest.fixture(autouse=True)
def _fresh_state():
    sync._down.clear()
    sync._missed.clear()
    yield
    sync._down.clear()
    sync._missed.clear()


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


def trials(uri: str, tmp_path: Path) -> list[tuple[dict, object, TrialResult]]:
    """Three planned trials (config, spec, a measured result) logged to ``uri``."""
    out = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for bs in (1, 2, 4):
            plain = job_config(compose("config", overrides=[
                "engine=tflite", "precision=fp32", f"batch_size={bs}", f"tracking.uri={uri}",
                "tracking.log_models=false", "tracking.experiment=sync-test", f"cache_dir={tmp_path / 'cache'}"]))
            spec = plan_trial(plain)
            now = time.time()
            result = TrialResult(spec.trial_key(), TrialStatus.OK, spec.to_dict(), started_at=now, ended_at=now,
                                 metrics={"throughput_ips": 100.0 * bs, "latency_p50_ms": 1.0, "accuracy": 0.99,
                                          "accuracy_drop": 0.0, "top1_agreement": 1.0})
            out.append((plain, spec, result))
    return out


def write_record(sweep_dir: Path, i: int, result: TrialResult, extra: dict | None = None) -> Path:
    return atomic_write_json(sweep_dir / "trials" / f"{i:05d}-{result.trial_key}.json",
                             {**result.to_dict(), "overrides": [], **(extra or {})})


def children(tracker: Tracker, parent: str) -> dict[str, tuple[str, str]]:
    return tracker.child_runs(parent)


def test_sync_logs_what_mlflow_missed_once_and_again_changes_nothing(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "sweep"
    (plain, spec0, r0), (plain1, spec1, r1), (plain2, spec2, r2) = trials(uri, tmp_path)
    sync.remember_sweep(sweep_dir, plain, "key-1", "sweep one", {"sweeper": "grid"}, ["batch_size"])
    tracker = Tracker(TrackingConfig(uri=uri, experiment="sync-test", log_models=False))
    parent = tracker.parent_run("key-1", "sweep one")
    logged = tracker.log_trial(parent, r0, spec0, plain, varying=["batch_size"])  # logged during the sweep
    r0.mlflow_run_ids[parent] = logged
    write_record(sweep_dir, 1, r0)
    write_record(sweep_dir, 2, r1, sync._pending(SimpleNamespace(sweep_dir=sweep_dir), "down", plain1))
    # the server died while this trial was being logged: its child exists, created but never finished
    cut = tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent, ROLE_TAG: "trial",
                                                                 TRIAL_TAG: r2.trial_key}).info.run_id
    write_record(sweep_dir, 3, r2, sync._pending(SimpleNamespace(sweep_dir=sweep_dir), "down", plain2))
    sync.after_sweep(sweep_dir, "FINISHED")

    lines = sync.sync_sweep(sweep_dir)
    assert lines[0].startswith(f"{sweep_dir}: logged 2 trial(s) under parent {parent}"), lines
    kids = children(tracker, parent)
    assert set(kids) == {r0.trial_key, r1.trial_key, r2.trial_key} and len(kids) == 3
    assert kids[r0.trial_key][0] == logged and kids[r2.trial_key][0] == cut  # completed, not duplicated
    assert {status for _, status in kids.values()} == {"FINISHED"}
    run = tracker.client.get_run(kids[r1.trial_key][0])
    assert run.data.params["batch_size"] == "2" and run.data.metrics["throughput_ips"] == 200.0
    assert run.data.tags["status"] == "ok" and run.info.run_name == "tflite-fp32-bs2-t" + run.data.params["threads"]
    assert tracker.find_parent("key-1") == (parent, "FINISHED")  # closed as the sweep would have
    top = tracker.client.get_run(parent).data
    assert top.metrics["trials_ok"] == 3 and top.params == {"batch_size": "1,2,4"}
    for p in (sweep_dir / "trials").glob("*.json"):
        rec = json.loads(p.read_text())
        assert sync.PENDING not in rec and rec["mlflow_run_ids"][parent] == kids[rec["trial_key"]][0]

    again = sync.sync_sweep(sweep_dir)
    assert "nothing to sync" in again[0], again
    assert children(tracker, parent) == kids and tracker.find_parent("key-1") == (parent, "FINISHED")


def test_a_trial_mlflow_cannot_take_is_kept_and_later_trials_do_not_wait(tmp_path: Path, monkeypatch):
    uri = closed_port_uri()
    (plain, spec, r0), (_, _, r1), (_, _, r2) = trials(uri, tmp_path)
    calls = []

    class DownTracker:  # the tracking server went away after the sweep started
        def __init__(self):
            self.uri = uri

        def log_trial(self, parent, result, spec, resolved_cfg=None, varying=None):
            calls.append(result.trial_key)
            if self.uri == uri:
                raise ConnectionError("Max retries exceeded")
            return f"run-{result.trial_key}"

    ctx = SimpleNamespace(tracker=DownTracker(), parent_run_id="parent", sweep_dir=tmp_path / "sweep", varying=None)
    missed = sync.log_trial(ctx, r0, spec, plain)
    assert missed[sync.PENDING].startswith("ConnectionError") and missed[sync.CONFIG] == plain
    write_record(ctx.sweep_dir, 1, r0, missed)
    t0 = time.time()
    missed = sync.log_trial(ctx, r1, spec, plain)  # down: one quick probe, no call to MLflow
    assert sync.PENDING in missed and calls == [r0.trial_key] and time.time() - t0 < sync.PROBE_TIMEOUT_S + 5
    write_record(ctx.sweep_dir, 2, r1, missed)

    monkeypatch.setattr(sync, "answering", lambda u: True)  # back: this trial, then the ones it missed
    ctx.tracker.uri = "http://back"
    sync._down["http://back"] = time.time()
    assert sync.log_trial(ctx, r2, spec, plain) == {}
    assert calls == [r0.trial_key, r2.trial_key, r0.trial_key, r1.trial_key]
    assert sync.pending_records(ctx.sweep_dir) == []
    rec = json.loads(next((ctx.sweep_dir / "trials").glob("00002-*.json")).read_text())
    assert rec["mlflow_run_ids"] == {"parent": f"run-{r1.trial_key}"}


def test_down_when_the_sweep_started_and_back_at_its_end_creates_the_parent(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (plain, spec, r0), (plain1, spec1, r1), _ = trials(uri, tmp_path)
    sweep_dir = tmp_path / "sweep"
    sync.remember_sweep(sweep_dir, plain, "key-2", "sweep two", None, None)
    ctx = SimpleNamespace(tracker=None, parent_run_id=None, sweep_dir=sweep_dir, varying=None, cfg=plain)
    for i, (p, s, r) in enumerate([(plain, spec, r0), (plain1, spec1, r1)], 1):
        missed = sync.log_trial(ctx, r, s, p)
        assert "unreachable when the sweep started" in missed[sync.PENDING]
        write_record(sweep_dir, i, r, missed)
    assert sync.catch_up(ctx) == 0
    assert ctx.parent_run_id and ctx.tracker is not None  # finish_sweep closes this parent as usual
    assert set(children(ctx.tracker, ctx.parent_run_id)) == {r0.trial_key, r1.trial_key}


def test_sync_says_in_one_line_when_the_server_is_still_down(tmp_path: Path, capsys):
    uri = closed_port_uri()
    (plain, _, r0), _, _ = trials(uri, tmp_path)
    sweep_dir = tmp_path / "sweep"
    sync.remember_sweep(sweep_dir, plain, "key-3", "sweep three", None, None)
    write_record(sweep_dir, 1, r0, sync._pending(SimpleNamespace(sweep_dir=sweep_dir), "down", plain))
    assert cli.main(["sync", str(sweep_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"MLflow at {uri} does not answer; 1 trial(s) of {sweep_dir} still to log" in err[0]
    assert cli.main(["sync", str(tmp_path)]) == 2  # not a sweep directory
    assert "has no mlflow_sweep.json" in capsys.readouterr().err


def test_a_sweep_run_without_tracking_is_logged_to_the_store_given(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (plain, _, r0), (_, _, r1), _ = trials(uri, tmp_path)
    plain = {**plain, "tracking": {**plain["tracking"], "enabled": False}}
    sweep_dir = tmp_path / "sweep"
    ctx = SimpleNamespace(tracker=None, parent_run_id=None, sweep_dir=sweep_dir, varying=None, cfg=plain)
    assert sync.log_trial(ctx, r0, None, plain) == {}  # tracking=none: nothing is pending
    sync.remember_sweep(sweep_dir, plain, "key-4", "sweep four", None, None)
    write_record(sweep_dir, 1, r0)
    write_record(sweep_dir, 2, r1)
    assert sync.after_sweep(sweep_dir, "FINISHED") == 0
    with pytest.raises(ValueError, match="tracking=none"):
        sync.sync_sweep(sweep_dir)
    lines = sync.sync_sweep(sweep_dir, uri)
    assert "logged 2 trial(s)" in lines[0]
    tracker = Tracker(TrackingConfig(uri=uri, experiment="sync-test", log_models=False))
    parent, status = tracker.find_parent("key-4")
    assert status == "FINISHED" and set(tracker.child_runs(parent)) == {r0.trial_key, r1.trial_key}
