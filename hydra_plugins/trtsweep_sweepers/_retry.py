"""An Optuna RDB storage that rides out a short database outage (a restart, a failover).

Every storage call that fails because the server cannot be reached (SQLAlchemy's ``OperationalError``
or ``InterfaceError``, which Optuna wraps in ``StorageInternalError``) is retried with a growing pause
for up to :data:`RETRY_S` seconds; pooled connections are checked before use (``pool_pre_ping``), so
the first call after the server is back gets a fresh connection.  An outage longer than that stops the
worker with :class:`StorageUnavailable`: one line saying to run the same command again, which resumes
the study (the trial that was running is failed and retried by the storage's stale-trial check).

Errors of another kind (a constraint, a finished trial) are raised at once: retrying them would not help.
A call whose commit reached the server just before the connection broke is retried too; Optuna's writes
are idempotent except ``create_new_trial``, which may then leave one extra RUNNING trial that the
orphaned-trial check (``_study.fail_orphaned_trials``) fails after its grace period.
"""

import functools
import logging
import os
import time
from typing import Any, Callable, Optional

from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from sqlalchemy import exc as sa_exc

from trtsweep.errors import one_line

log = logging.getLogger(__name__)

# how long a worker waits for the database to come back (tests shorten it: TRTSWEEP_TEST_STORAGE_RETRY_S)
RETRY_S = float(os.environ.get("TRTSWEEP_TEST_STORAGE_RETRY_S") or 120.0)
PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)  # between attempts (the last one repeats)

# the storage methods that talk to the database (what Optuna's _CachedStorage and the sweeper call)
METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "get_best_trial",
    "record_heartbeat", "_get_stale_trial_ids", "get_trial_user_attrs", "get_trial_system_attrs",
    # the private ones Optuna's _CachedStorage calls (ask, the trial list, the best trial)
    "_create_new_trial", "_get_trials", "_set_trial_param", "_get_best_trial_id",
)


class StorageUnavailable(RuntimeError):
    """The database stayed unreachable for longer than the retry budget."""


def is_outage(e: BaseException) -> bool:
    """Whether ``e`` says the database cannot be reached (rather than that the request was wrong)."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


class Budget:
    """The retry budget a storage's calls share: once it is spent, later calls fail at their first outage
    (the sweep's closing report must not wait out the budget again for every call)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spent = False


def retrying(call: Callable[..., Any], name: str, what: str, budget: Budget,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Any:
    """``call`` wrapped: retried on an outage for ``budget.seconds``, then :class:`StorageUnavailable`."""
    budget_s = budget.seconds

    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start: Optional[float] = None
        attempt = 0
        while True:
            try:
                result = call(*args, **kwargs)
            except (StorageInternalError, sa_exc.SQLAlchemyError) as e:
                if not is_outage(e):
                    raise
                now = clock()
                if start is None and not budget.spent:
                    start = now
                    log.warning("optuna storage %s is unreachable (%s: %s); retrying for up to %.0f s",
                                what, name, one_line(e.__cause__ or e), budget_s)
                if budget.spent or now - start >= budget_s:
                    budget.spent = True
                    raise StorageUnavailable(
                        f"hydra.sweeper.storage={what} was unreachable for {budget_s:.0f} s "
                        f"({one_line(e.__cause__ or e)}); fix: bring the database back, then run the same "
                        "command again: the study resumes where it stopped") from None
                sleep(PAUSES[min(attempt, len(PAUSES) - 1)])
                attempt += 1
                continue
            budget.spent = False  # the database answers: a later outage gets the whole budget again
            if start is not None:
                log.warning("optuna storage %s is reachable again after %.0f s", what, clock() - start)
            return result

    return wrapper


class RetryingRDBStorage(RDBStorage):
    """:class:`optuna.storages.RDBStorage` whose database calls survive an outage of up to ``retry_s`` s."""

    def __init__(self, url: str, *args: Any, retry_s: float = RETRY_S, label: str = "", **kwargs: Any):
        engine_kwargs = dict(kwargs.pop("engine_kwargs", None) or {})
        if not url.startswith("sqlite"):  # a server: drop pooled connections that died with it
            engine_kwargs.setdefault("pool_pre_ping", True)
        self.budget, self.label = Budget(retry_s), label or url
        super().__init__(url, engine_kwargs, *args, **kwargs)
        self._wrap()

    def _wrap(self) -> None:
        for name in METHODS:
            method = getattr(self, name, None)
            if callable(method):
                setattr(self, name, retrying(method, name, self.label, self.budget))

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for name in METHODS:  # the bound wrappers: rebuilt after unpickling
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._wrap()
