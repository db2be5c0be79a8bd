"""One sweep lifecycle for the grid, the Optuna search and single runs (trtsweep.session)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from trtsweep import session


class FakeTracker:
    uri = "fake://"

    def __init__(self) -> None:
        self.finished: list[str] = []

    def parent_run(self, key: str, name: str, tags: dict) -> str:
        return "parent-1"

    def finish_parent(self, run_id: str, summary: dict, files: list, status: str) -> None:
        self.finished.append(status)


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
