"""The Optuna storage's retry on a database outage (hydra_plugins/trtsweep_sweepers/_retry.py) and the
test-only fault rules (trtsweep.faults), in-process."""

from __future__ import annotations

import pickle

import pytest

optuna = pytest.importorskip("optuna")

from optuna.exceptions import StorageInternalError  # noqa: E402 - after importorskip
from sqlalchemy import exc as sa_exc  # noqa: E402

from hydra_plugins.trtsweep_sweepers import _retry  # noqa: E402
from trtsweep import faults  # noqa: E402
from trtsweep.errors import ConfigError  # noqa: E402


def outage() -> StorageInternalError:
    cause = sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused: is the server running?"))
    err = StorageInternalError("An exception is raised during the commit.")
    err.__cause__ = cause
    return err


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def flaky(failures: int, error=outage):
    calls = []

    def call(x):
        calls.append(x)
        if len(calls) <= failures:
            raise error()
        return x * 2

    return call, calls


def test_an_outage_shorter_than_the_budget_is_ridden_out():
    clock = Clock()
    call, calls = flaky(4)
    wrapped = _retry.retrying(call, "get_trial", "db", _retry.Budget(30), sleep=clock.sleep, clock=clock)
    assert wrapped(21) == 42
    assert len(calls) == 5 and 0 < clock.now < 30


def test_a_longer_outage_stops_with_one_line_saying_to_run_again():
    clock = Clock()
    call, calls = flaky(10**6)
    budget = _retry.Budget(20)
    wrapped = _retry.retrying(call, "get_trial", "postgresql://u:***@h/db", budget, sleep=clock.sleep, clock=clock)
    with pytest.raises(_retry.StorageUnavailable) as e:
        wrapped(1)
    msg = str(e.value)
    assert "\n" not in msg and "unreachable for 20 s" in msg and "run the same command again" in msg
    assert "postgresql://u:***@h/db" in msg and "connection refused" in msg
    assert 20 <= clock.now < 40
    # the budget is spent: the next call (the closing report) fails at its first outage, without waiting
    before, n = clock.now, len(calls)
    with pytest.raises(_retry.StorageUnavailable):
        wrapped(1)
    assert clock.now == before and len(calls) == n + 1


def test_the_budget_is_whole_again_once_the_database_answers():
    clock = Clock()
    budget = _retry.Budget(10)
    down = [True]

    def call():
        if down[0]:
            raise outage()
        return "ok"

    wrapped = _retry.retrying(call, "get_trial", "db", budget, sleep=clock.sleep, clock=clock)
    with pytest.raises(_retry.StorageUnavailable):
        wrapped()
    down[0] = False
    assert wrapped() == "ok" and not budget.spent
    down[0] = True
    started = clock.now
    with pytest.raises(_retry.StorageUnavailable):
        wrapped()
    assert clock.now - started >= 10  # waited the whole budget again


def test_errors_other_than_an_outage_are_raised_at_once():
    clock = Clock()
    call, calls = flaky(1, error=lambda: sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    wrapped = _retry.retrying(call, "create_new_trial", "db", _retry.Budget(30), sleep=clock.sleep, clock=clock)
    with pytest.raises(sa_exc.IntegrityError):
        wrapped(1)
    assert len(calls) == 1 and clock.now == 0


def test_the_retrying_storage_works_and_survives_pickling(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    storage = _retry.RetryingRDBStorage(url, retry_s=5)
    assert "pool_pre_ping" not in storage.engine_kwargs  # a file: nothing to ping
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = pickle.loads(pickle.dumps(storage))
    assert hasattr(again.get_trial, "__wrapped__")  # rewrapped after unpickling
    assert len(optuna.load_study(study_name="s", storage=again).trials) == 2
    server = _retry.RetryingRDBStorage.__new__(_retry.RetryingRDBStorage)
    with pytest.raises(Exception):  # noqa: B017 - no server: only the engine settings matter here
        _retry.RetryingRDBStorage.__init__(server, "postgresql+psycopg2://u@127.0.0.1:1/none", retry_s=1)
    assert server.engine_kwargs.get("pool_pre_ping") is True


@pytest.mark.parametrize("value, seed, expected", [
    ("segv", 0, "segv"),
    ("segv@data.seed=1,hang@data.seed=2,oom@data.seed=3", 2, "hang"),
    ("segv@data.seed=1,hang@data.seed=2,oom@data.seed=3", 3, "oom"),
    ("segv@data.seed=1,hang@data.seed=2", 0, None),
    ("hang@data.seed=2,crash", 2, "hang"),  # the first matching rule wins
    ("hang@data.seed=2,crash", 5, "crash"),
])
def test_fault_rules(monkeypatch, value, seed, expected):
    monkeypatch.setenv(faults.ENV, value)
    assert faults.fault_for({"data": {"seed": seed}}) == expected


def test_unknown_fault_rule_is_an_error(monkeypatch):
    monkeypatch.setenv(faults.ENV, "hang@data.seed=1,explode")
    with pytest.raises(ConfigError, match="unknown fault 'explode'"):
        faults.fault_for({"data": {"seed": 0}})
