"""The Optuna sweeper (``hydra/sweeper=optuna``): search for the fastest configuration that passes
the accuracy check, instead of measuring the whole grid (docs/optuna.md).

Hydra imports this module at every start, so it holds only the settings (:class:`OptunaSweeperConf`,
registered as ``hydra/sweeper=optuna``) and a front class that imports the implementation when the
sweeper is built.  The implementation lives in modules Hydra's plugin scan skips (``_``-prefixed):
``_space`` (search space), ``_outcome`` (trial outcome), ``_study`` (sampler, storage, heartbeat),
``_report`` (best trial, table, plots) and ``_impl`` (the sweep).
No ``from __future__ import annotations`` (Hydra's dataclass scan).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class OptunaSweeperConf:
    """The sweeper's settings (``hydra.sweeper.*``); their defaults live here only."""

    _target_: str = "hydra_plugins.trtsweep_sweepers.optuna.OptunaSweeper"
    _recursive_: bool = False  # the sampler node is built at sweep time, with the search space and seed
    n_trials: int = 20  # trials this worker runs (several workers: the study gets the sum)
    timeout: Optional[float] = None  # seconds; no new trial is asked after it
    study_name: str = "trtsweep-${name}"
    storage: str = "sqlite:///outputs/optuna.db"  # any SQLAlchemy URL, e.g. postgresql://user:pw@host/db
    # tpe | random | grid | cmaes | nsgaii, or a node built by hydra.utils.instantiate, e.g.
    # {_target_: optuna.samplers.QMCSampler, scramble: true}
    sampler: Any = "tpe"
    seed: Optional[int] = None  # several workers: give each its own seed (or none)
    n_startup_trials: Optional[int] = 5  # tpe/cmaes: random trials before modelling (null: Optuna's 10)
    objective: str = "throughput_ips"  # or latency_p50_ms, latency_p90_ms, latency_p99_ms, latency_mean_ms
    multi_objective: bool = False  # true: (objective, accuracy_drop ↓), a Pareto front
    heartbeat_interval: int = 10  # s between heartbeats of a running trial
    grace_period: int = 30  # s without heartbeat after which a RUNNING trial is failed (and retried)
    max_retry: int = 1  # retries of a trial whose process died
    # the search space, like the basic sweeper's; from the command line: +hydra.sweeper.params.batch_size='choice(1,8)'
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="trtsweep")


class OptunaSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        """``conf``: the fields of :class:`OptunaSweeperConf` (any left out take its defaults)."""
        from ._impl import OptunaSweeperImpl  # the heavy imports, only when a sweep runs

        self.sweeper = OptunaSweeperImpl(OptunaSweeperConf(**conf))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.sweeper.sweep(arguments)
