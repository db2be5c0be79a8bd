"""The Optuna sweeper's study: sampler, storage, heartbeat, stale and orphaned trials.

The sampler is a config node with ``_target_`` built by ``hydra.utils.instantiate``: either one of the
short names in :data:`SAMPLERS` (``hydra.sweeper.sampler=random``) or the user's own node
(``hydra.sweeper.sampler={_target_: optuna.samplers.QMCSampler, scramble: true}``).  The sweeper's
settings (``seed``, ``n_startup_trials``, the grid for ``GridSampler``, Optuna 4's ``constraints_func``)
go to any sampler whose constructor takes them, unless the node sets them itself.
"""

import contextlib
import datetime
import inspect
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import optuna
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from trtsweep.errors import one_line
from trtsweep.redact import mask_url
from trtsweep.tracking import absolute_sqlite_uri

from ._outcome import native_constraints, trial_constraints
from ._retry import RetryingRDBStorage, StorageUnavailable
from ._space import SearchParam, SearchSpaceError, grid_search_space

log = logging.getLogger(__name__)

# hydra.sweeper.sampler=<name> → the node built for it
SAMPLERS: Dict[str, Dict[str, Any]] = {
    # constant_liar: a running trial counts as a bad one, so workers sharing the study don't all propose it
    "tpe": {"_target_": "optuna.samplers.TPESampler", "multivariate": True, "group": True, "constant_liar": True},
    "random": {"_target_": "optuna.samplers.RandomSampler"},
    "grid": {"_target_": "optuna.samplers.GridSampler"},  # search_space: the sweep's (finite) space
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "warn_independent_sampling": False},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler"},
}
# Optuna 5 renamed the heartbeat's stale-trial callback (the old names are deprecated there, the only ones in 4)
_OPTUNA5_HEARTBEAT = hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
RETRY_CALLBACK = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback" if _OPTUNA5_HEARTBEAT
                         else "RetryFailedTrialCallback")
_CALLBACK_ARG = "heartbeat_stale_trial_callback" if _OPTUNA5_HEARTBEAT else "failed_trial_callback"
SINGLE_OBJECTIVE = {"optuna.samplers.CmaEsSampler": "cmaes"}  # samplers that cannot take a second objective
# samplers that cannot model a categorical parameter (they would sample it at random, silently)
NUMERIC_ONLY = {"optuna.samplers.CmaEsSampler": "cmaes", "optuna.samplers.QMCSampler": "QMCSampler"}
CATEGORICAL_OK = "tpe, random, grid, nsgaii (or optuna.samplers.GPSampler, BruteForceSampler)"


def sampler_node(sampler: Any) -> Dict[str, Any]:
    """The ``_target_`` node for ``hydra.sweeper.sampler``: a short name from :data:`SAMPLERS`, or a node."""
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise SearchSpaceError(f"hydra.sweeper.sampler={sampler} is unknown; fix: use one of "
                                   f"{', '.join(SAMPLERS)}, or a node with _target_ (docs/optuna.md)")
        return dict(SAMPLERS[sampler])
    node = OmegaConf.to_container(sampler, resolve=True) if OmegaConf.is_config(sampler) else sampler
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise SearchSpaceError(f"hydra.sweeper.sampler={sampler!r} is neither a name nor a node with _target_; "
                               f"fix: one of {', '.join(SAMPLERS)}, or e.g. "
                               "{_target_: optuna.samplers.TPESampler, seed: 1}")
    return dict(node)


def sampler_label(sampler: Any) -> str:
    """A short name for logs and tags: ``tpe``, or the class of a user's node (``QMCSampler``)."""
    return sampler if isinstance(sampler, str) else str(sampler_node(sampler)["_target_"]).rsplit(".", 1)[-1]


def check_sampler_space(sampler: Any, space: Sequence[SearchParam]) -> None:
    """A sampler that cannot model the space is an error (before any work), naming the samplers that can."""
    target = str(sampler_node(sampler)["_target_"])
    categorical = [p.name for p in space if isinstance(p.distribution, CategoricalDistribution)]
    if target in NUMERIC_ONLY and categorical:
        raise SearchSpaceError(f"sampler={NUMERIC_ONLY[target]} cannot model categorical parameters "
                               f"({', '.join(categorical)}): it would sample them at random; fix: "
                               f"hydra.sweeper.sampler= one of {CATEGORICAL_OK}")


def make_sampler(sampler: Any, seed: Optional[int], n_startup_trials: Optional[int], n_objectives: int,
                 space: Sequence[SearchParam]) -> optuna.samplers.BaseSampler:
    """Build the sampler with ``hydra.utils.instantiate``, filling in the sweeper's settings it takes."""
    node = sampler_node(sampler)
    target = str(node["_target_"])
    try:
        accepts = inspect.signature(get_class(target)).parameters
    except Exception as e:  # noqa: BLE001 - not importable, not a class
        raise SearchSpaceError(f"hydra.sweeper.sampler: _target_ {target} cannot be loaded ({one_line(e)}); "
                               "fix: a sampler class such as optuna.samplers.TPESampler") from None
    if n_objectives > 1 and target in SINGLE_OBJECTIVE:
        raise SearchSpaceError(f"sampler={SINGLE_OBJECTIVE[target]} is single-objective; fix: "
                               "hydra.sweeper.sampler=tpe or nsgaii with multi_objective=true")
    check_sampler_space(sampler, space)
    fills: Dict[str, Callable[[], Any]] = {  # the sweeper's settings, for the samplers that take them
        "search_space": lambda: grid_search_space(space),
        "seed": lambda: seed,
        "n_startup_trials": lambda: n_startup_trials,
        "constraints_func": lambda: None if native_constraints() else trial_constraints,  # Optuna 4
    }
    for key, fill in fills.items():
        if key in accepts and key not in node and fill() is not None:
            node[key] = fill()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return instantiate(node, _convert_="all")
    except Exception as e:  # noqa: BLE001 - Hydra's InstantiationException: its first line names the cause
        cause = e.__cause__ or e
        raise SearchSpaceError(f"hydra.sweeper.sampler: {target} cannot be built ({one_line(cause)}); "
                               "fix: check the node's arguments against the sampler's documentation") from None


def masked(url: str) -> str:
    """The storage URL without its password (``user:***@``, ``?password=***``): :func:`trtsweep.redact.mask_url`."""
    return mask_url(url)


JOURNAL = "journal:"


def open_storage(url: str, heartbeat_interval: int, grace_period: int, max_retry: int,
                 attempts: int = 3) -> Any:
    """RDBStorage with heartbeats and retry of dead trials; retried when workers race on creating tables;
    its calls ride out a database outage of up to ``_retry.RETRY_S`` seconds (:mod:`._retry`).
    ``journal:<file>``: Optuna's JournalStorage on a file (several processes on one machine, no server;
    no heartbeat, so a trial whose process died stays RUNNING instead of being retried)."""
    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL):].removeprefix("//")).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    url = absolute_sqlite_uri(url)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        callback = RETRY_CALLBACK(max_retry=max_retry)
        for attempt in range(attempts):
            try:
                return RetryingRDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                          label=masked(url), **{_CALLBACK_ARG: callback})
            except Exception as e:  # noqa: BLE001 - first-use race, or a real connection error
                if attempt == attempts - 1:
                    raise SearchSpaceError(f"hydra.sweeper.storage={masked(url)} cannot be opened: "
                                           f"{one_line(e)}; fix: check the URL, the server and the driver "
                                           "(postgresql:// needs psycopg 3 with SQLAlchemy ≥ 2.1: pip install "
                                           "'psycopg[binary]', or write postgresql+psycopg2://)") from None
                time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def open_study(storage: RDBStorage, study_name: str, sampler: optuna.samplers.BaseSampler, directions: List[str],
               metric_names: List[str]) -> optuna.Study:
    """Create or load the study; one that optimises something else stops with the fix."""
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, directions=directions,
                                load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    named = study.metric_names
    if have != directions or (named is not None and named != metric_names):
        where = masked(getattr(storage, "url", "the journal file"))
        raise SearchSpaceError(f"study {study_name} in {where} optimises {named or have}, not {metric_names} "
                               f"({directions}); fix: a new hydra.sweeper.study_name, or the study's objective")
    if named is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(metric_names)  # trials_dataframe's and the dashboard's column names
    return study


def heartbeat(storage: Any, trial_id: int, interval: float) -> Any:
    """A :class:`Heartbeat` for the trial, or a do-nothing context where the storage has no heartbeats."""
    return Heartbeat(storage, trial_id, interval) if isinstance(storage, RDBStorage) else contextlib.nullcontext()


class Heartbeat:
    """Records a RUNNING trial's heartbeat every ``interval`` s (Optuna does so only inside optimize())."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except StorageUnavailable:  # the database stayed down: the trial's tell says so, once
                return
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the trial
                log.warning("optuna heartbeat failed: %s", one_line(e))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "Heartbeat":
        self.storage.record_heartbeat(self.trial_id)  # stale detection needs a first beat
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def fail_stale_trials(study: optuna.Study, storage: RDBStorage, grace_period: float) -> None:
    """Fail (and re-queue) RUNNING trials whose process died: Optuna's heartbeat check, plus orphans."""
    if not isinstance(storage, RDBStorage):  # a journal file: no heartbeats to judge by
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_orphaned_trials(study, storage, grace_period)


def fail_orphaned_trials(study: optuna.Study, storage: RDBStorage, grace_period: float,
                         now: Optional[datetime.datetime] = None) -> List[int]:
    """RUNNING trials killed between ``ask()`` and their first heartbeat, older than ``grace_period``.

    Optuna's stale check only sees trials with a heartbeat, so such a trial would stay RUNNING forever.
    A live worker records the heartbeat and then the ``worker`` user attribute within milliseconds of
    ``ask()``; a trial without that attribute after ``grace_period`` seconds is failed and re-queued
    by the storage's stale-trial callback, like a stale one.  Returns the failed trial numbers.
    """
    now = now or datetime.datetime.now()
    callback = (storage.get_heartbeat_stale_trial_callback() if _OPTUNA5_HEARTBEAT
                else storage.get_failed_trial_callback())
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" in t.user_attrs or t.datetime_start is None:
            continue
        if (now - t.datetime_start).total_seconds() <= grace_period:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "reason", "its worker died before the trial started")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another worker got there first
            continue
        failed.append(t.number)
        log.warning("optuna: trial #%d was left RUNNING by a worker that died; failed and re-queued", t.number)
        if callback is not None:
            callback(study, storage.get_trial(t._trial_id))
    return failed

