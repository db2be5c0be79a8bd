"""One sweep lifecycle for the grid, the Optuna search and single runs (trtsweep.session)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from trtsweep import session


class FakeTracker:
    uri = "fake://"
    experiment_id = "0"

    from trtsweep.config import TrackingConfig

    cfg = TrackingConfig(experiment="trtsweep/fake", log_models=False, register_best=False)

    def __init__(self) -> None:
        self.finished: list[str] = []

    def parent_run(self, key: str, name: str, tags: dict) -> str:
        return "parent-1"

    def finish_parent(self, run_id: str, summary: dict, files: list, status: str) -> None:
        self.finished.append(status)
        self.files = [p.name for p in files]


def test_a_sweep_is_finished_with_its_confirmation_or_killed_without_it(tmp_path, monkeypatch):
    tracker = FakeTracker()
    future = SimpleNamespace(result=lambda: tracker)
    confirmed = []
    monkeypatch.setattr(session, "confirm_winners", lambda ctx, records: confirmed.append(ctx.sweep_dir) or [])
    with session.sweep_session({}, tmp_path / "done", "key", "name", 1, [1], tracker_future=future,
                               multirun_config={"a": 1}) as ctx:
        assert os.environ[session.ENV_SWEEP_DIR] == str((tmp_path / "done").resolve())
        assert os.environ[session.ENV_PARENT] == "parent-1" and ctx.parent_run_id == "parent-1"
    assert (tmp_path / "done" / "multirun.yaml").exists() and ctx.table is not None
    with pytest.raises(KeyboardInterrupt), session.sweep_session({}, tmp_path / "stopped", "key", "name", 1, [1],
                                                                 tracker_future=future):
        raise KeyboardInterrupt  # Ctrl-C: what was measured is kept, the parent is KILLED
    assert tracker.finished == [session.FINISHED, session.KILLED]
    assert confirmed == [tmp_path / "done"]  # the confirmation runs only for a finished sweep
    assert not any(v in os.environ for v in (session.ENV_SWEEP_DIR, session.ENV_PARENT, session.ENV_TOTAL))


def test_fail_stops_the_worker_and_exits_with_one_line(monkeypatch, capsys):
    stopped = []
    monkeypatch.setattr(session.runner, "stop_pool", lambda: stopped.append(True))
    with pytest.raises(SystemExit) as e:
        session.fail("batch_size=0 is invalid; fix: batch_size=1")
    assert e.value.code == 2 and stopped == [True]
    assert capsys.readouterr().err == "trtsweep: error: batch_size=0 is invalid; fix: batch_size=1\n"


def _trial(sweep_dir, key: str, engine: str, throughput: float) -> None:
    import json

    spec = {"model": {"name": "m"}, "engine": engine, "precision": "fp32", "batch_size": 1, "threads": 1,
            "data": {"name": "random"}, "engine_params": {}}
    (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
    metrics = {"throughput_ips": throughput, "latency_p50_ms": 1000 / throughput, "accuracy_drop": 0.0}
    (sweep_dir / "trials" / f"{key}.json").write_text(json.dumps(
        {"trial_key": key, "status": "ok", "spec": spec, "metrics": metrics}))


def test_a_finished_sweep_writes_its_report_and_logs_it_an_interrupted_one_does_not(tmp_path, monkeypatch):
    tracker = FakeTracker()
    future = SimpleNamespace(result=lambda: tracker)
    monkeypatch.setattr(session, "confirm_winners", lambda ctx, records: [])
    for name, status in (("done", session.FINISHED), ("stopped", session.KILLED)):
        _trial(tmp_path / name, "k1", "tf", 100.0)
        _trial(tmp_path / name, "k2", "tflite", 300.0)
        ctx = session.start_sweep({}, tmp_path / name, "key", "name", 2, [1], tracker_future=future)
        session.finish_sweep(ctx, status=status)
    assert tracker.finished == [session.FINISHED, session.KILLED]
    assert tracker.files == ["results.csv"]  # the interrupted one: results only
    assert not (tmp_path / "stopped" / "report.html").exists()
    assert "3.00×" in (tmp_path / "done" / "report.html").read_text()  # tflite vs tf fp32
    assert (tmp_path / "done" / "report.md").exists()


def test_jobs_of_a_sweep_log_through_its_open_mlflow_client(tmp_path, monkeypatch):
    """MLflow is opened once per sweep: a job in the sweep's process gets the sweep's client; a job with
    other tracking settings (or after the sweep) opens its own."""
    opened = []
    monkeypatch.setattr(session, "_tracker", lambda cfg, experiment=None: opened.append(cfg) or FakeTracker())
    monkeypatch.setattr(session, "confirm_winners", lambda ctx, records: [])
    cfg = {"tracking": {"uri": "sqlite:///a.db", "experiment": "e"}}
    with session.sweep_session(cfg, tmp_path / "s", "key", "name", 2, [1]) as ctx:
        assert len(opened) == 1 and ctx.tracker is not None
        assert session.joined_sweep(dict(cfg, batch_size=8)).tracker is ctx.tracker  # one job, then another
        assert session.joined_sweep(cfg).tracker is ctx.tracker and len(opened) == 1
        other = {"tracking": {"uri": "sqlite:///b.db", "experiment": "e"}}
        assert session.joined_sweep(other).tracker is not ctx.tracker and len(opened) == 2
        assert session.joined_sweep(cfg).tracker is ctx.tracker  # still the sweep's
    os.environ[session.ENV_SWEEP_DIR], os.environ[session.ENV_PARENT] = str(tmp_path), "parent-1"
    try:
        assert session.joined_sweep(cfg).tracker is not ctx.tracker  # the sweep is closed: its client too
    finally:
        os.environ.pop(session.ENV_SWEEP_DIR), os.environ.pop(session.ENV_PARENT)


def test_mlflow_opened_early_is_the_sweeps_when_its_settings_are_the_same(tmp_path, monkeypatch):
    class Closable(FakeTracker):
        closed = False

        def close(self) -> None:
            self.closed = True

    opened = []
    monkeypatch.setattr(session, "_tracker", lambda cfg, experiment=None: opened.append(Closable()) or opened[-1])
    monkeypatch.setattr(session, "confirm_winners", lambda ctx, records: [])
    cfg = {"tracking": {"uri": "sqlite:///a.db", "experiment": "e"}}
    session.open_tracker_early(cfg)  # a sweeper, before composing and planning
    with session.sweep_session(cfg, tmp_path / "same", "key", "name", 1, [1]) as ctx:
        assert ctx.tracker is opened[0] and len(opened) == 1
    assert opened[0].closed  # at the end of the sweep
    session.open_tracker_early(cfg)
    with session.sweep_session({"tracking": {"uri": "sqlite:///b.db", "experiment": "e"}}, tmp_path / "other",
                               "key", "name", 1, [1]) as ctx:
        assert ctx.tracker is opened[2] and opened[1].closed  # the early one was for other settings
    session.open_tracker_early({"tracking": {"enabled": False}})
    session.open_tracker_early({"tracking": {"uri": 3.5, "no_such_key": 1}})  # reported when the sweep starts
    assert len(opened) == 3


def test_mlflow_logs_the_end_of_a_sweep_while_the_report_is_written_and_a_failure_there_is_one_line(
        tmp_path, monkeypatch, caplog):
    class Submitting(FakeTracker):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[str] = []

        def submit(self, method: str, *args):
            self.sent.append(method)

            def result():
                raise RuntimeError("MLflow said no")

            return SimpleNamespace(result=result)

    tracker = Submitting()
    sent_before_report = []
    monkeypatch.setattr(session, "confirm_winners", lambda ctx, records: [])
    monkeypatch.setattr(session, "write_html_report", lambda d: sent_before_report.extend(tracker.sent) or [])
    _trial(tmp_path / "s", "k1", "tf", 100.0)
    ctx = session.start_sweep({}, tmp_path / "s", "key", "name", 1, [1],
                              tracker_future=SimpleNamespace(result=lambda: tracker))
    session.finish_sweep(ctx)
    assert sent_before_report == ["apply"]  # the sweep's MLflow view was on its way before the report began
    assert "could not describe the sweep in MLflow: RuntimeError: MLflow said no" in caplog.text
    assert tracker.finished == [session.FINISHED]  # the parent is still finished
