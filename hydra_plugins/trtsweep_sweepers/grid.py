"""The grid sweeper (``hydra/sweeper=trtsweep``, the default): Hydra's basic sweeper, plus

* ``engine.<param>`` overrides apply only to the jobs whose engine has that parameter (as in the
  Optuna sweeper), so ``engine=tf,tflite engine.num_threads=1,2`` is one grid; jobs that become
  identical are run once, and a parameter no swept engine has is an error naming those that do;
* every job of the multirun is composed and validated before the first trial (an invalid value
  stops the sweep with one line; an unsupported combination is planned as ``skipped``);
* one MLflow parent run per sweep (reused when the same sweep is started again), and
  ``results.csv``/``results.parquet`` plus a summary at the end.
"""


import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser

log = logging.getLogger(__name__)


@dataclass
class TrtsweepGridSweeperConf:
    _target_: str = "hydra_plugins.trtsweep_sweepers.grid.TrtsweepGridSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="trtsweep", node=TrtsweepGridSweeperConf,
                             provider="trtsweep")


class TrtsweepGridSweeper(BasicSweeper):
    _planned = False

    def validate_batch_is_legal(self, batch) -> None:  # type: ignore[no-untyped-def]
        if not self._planned:  # every job was already composed and validated by plan_sweep
            super().validate_batch_is_legal(batch)

    def sweep(self, arguments: List[str]) -> Any:
        from trtsweep import runner
        from trtsweep.app import plan_is_valid, plan_sweep, resolve_specs_models
        from trtsweep.errors import ConfigError, one_line
        from trtsweep.session import fail, sweep_key, sweep_session

        assert self.config is not None and self.hydra_context is not None
        runner.pool().prewarm()  # TensorFlow imports in the worker while configs are composed (if not yet)
        params_conf = self._parse_config() + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        try:
            batches = self.split_arguments(parser.parse_overrides(params_conf), self.max_batch_size)
        except Exception as e:  # noqa: BLE001 - bad sweep syntax
            fail(one_line(e, with_type=False))
        jobs = [list(job) for batch in batches for job in batch]
        try:
            jobs, notes = engine_param_jobs(jobs, str(self.config.engine.name))
        except ConfigError as e:
            fail(str(e))
        for note in notes:
            log.info("plan: %s", note)
        loader = self.hydra_context.config_loader
        try:
            configs = [loader.load_sweep_config(self.config, job) for job in jobs]
        except Exception as e:  # noqa: BLE001 - composition errors (unknown option, key...)
            fail(" ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()))
        try:
            plan = plan_sweep(configs, resolve_models=False)  # cheap checks first: a typo fails at once
            resolve_specs_models(plan.specs)  # from the caches, or in the worker
        except ConfigError as e:
            fail(str(e))
        plan_is_valid(plan.specs, plan.configs[0] if plan.configs else {})
        for spec, job in zip(plan.specs, jobs, strict=True):
            if spec.skip_reason:
                log.info("plan: skip %s — %s", " ".join(job), spec.skip_reason)
        base = plan.configs[0] if plan.configs else {}
        name = str(base.get("name", "adhoc"))
        with sweep_session(base, Path(self.config.hydra.sweep.dir), sweep_key(name, params_conf),
                           f"{name}: {' '.join(params_conf)}"[:250], len(jobs), plan.batch_sizes,
                           tags={"sweeper": "grid"}, multirun_config=self.config, varying=sweep_varying(plan)):
            self._planned = True
            with planned_configs(self.launcher, self.config, jobs, configs):
                return self._launch(jobs)

    def _launch(self, jobs: List[List[str]]) -> List[Any]:
        """Hydra's basic sweeper's loop, over the planned (filtered, de-duplicated) jobs."""
        assert self.launcher is not None
        size = self.max_batch_size or len(jobs) or 1
        returns, index = [], 0
        for start in range(0, len(jobs), size):
            batch = jobs[start:start + size]
            results = self.launcher.launch(batch, initial_job_idx=index)
            for r in results:
                _ = r.return_value  # raises if the job itself failed (not a failed trial: those return)
            index += len(batch)
            returns.append(results)
        return returns


def sweep_varying(plan: Any) -> List[str]:
    """The MLflow params that vary among the planned trials (trtsweep.mlflow_view.varying_keys)."""
    from trtsweep.config import mlflow_params
    from trtsweep.mlflow_view import varying_keys

    return varying_keys([mlflow_params(spec, cfg) for spec, cfg in zip(plan.specs, plan.configs, strict=True)])


class _PlannedLoader:
    """The config loader a launcher composes each job with, handing out the configs the sweeper composed
    for its plan: ``load_sweep_config`` with the same master config and overrides composes the same
    config, and composing takes a good part of a second.  Each is handed out once (the launcher sets the
    job number on it); anything else is composed as usual."""

    def __init__(self, loader: Any, master: Any, planned: Dict[Tuple[str, ...], Any]):
        self._loader, self._master, self._planned = loader, master, planned

    def load_sweep_config(self, master_config: Any, sweep_overrides: List[str]) -> Any:
        if master_config is self._master:
            cfg = self._planned.pop(tuple(sweep_overrides), None)
            if cfg is not None:
                return cfg
        return self._loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


@contextmanager
def planned_configs(launcher: Any, master: Any, jobs: List[List[str]], configs: List[Any]) -> Iterator[None]:
    """While the block runs, ``launcher`` (one that composes its jobs through its Hydra context's config
    loader, as Hydra's basic launcher does) gets the planned configs instead of composing them again."""
    context = getattr(launcher, "hydra_context", None)
    if context is None or not hasattr(context, "config_loader"):
        yield
        return
    planned = {tuple(job): cfg for job, cfg in zip(jobs, configs, strict=True)}
    launcher.hydra_context = replace(context, config_loader=_PlannedLoader(context.config_loader, master, planned))
    try:
        yield
    finally:
        launcher.hydra_context = context


def _split(override: str) -> Tuple[str, str]:
    """'+engine.num_threads=2' -> ('engine.num_threads', '2')."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def engine_param_jobs(jobs: List[List[str]], default_engine: str) -> Tuple[List[List[str]], List[str]]:
    """Keep each ``engine.<param>`` override only in the jobs whose engine has that parameter; drop
    the jobs that become duplicates.  Returns the jobs and one plan note per parameter that applies to
    only some of the swept engines.  A parameter that none of them has is a ConfigError naming the
    engines that have it."""
    from trtsweep.engines.base import engine_names, engine_param_names
    from trtsweep.errors import ConfigError

    applies: Dict[str, set] = {}
    engines_seen: List[str] = []
    out: List[List[str]] = []
    seen = set()
    for job in jobs:
        engine = next((_split(o)[1] for o in job if _split(o)[0] == "engine"), default_engine)
        if engine not in engines_seen:
            engines_seen.append(engine)
        known = engine_param_names(engine) if engine in engine_names() else None
        kept = []
        for o in job:
            key = _split(o)[0]
            if key.startswith("engine.") and known is not None:
                param = key[len("engine."):].split(".")[0]
                applies.setdefault(param, set())
                if param not in known:
                    continue
                applies[param].add(engine)
            kept.append(o)
        ident = tuple(kept)
        if ident not in seen:
            seen.add(ident)
            out.append(kept)
    notes = []
    for param, engines in applies.items():
        if not engines:
            having = [e for e in engine_names() if param in engine_param_names(e)]
            raise ConfigError(
                f"engine.{param} is not a parameter of any engine in this sweep ({', '.join(engines_seen)}); "
                + (f"engines that have it: {', '.join(having)}" if having else "no engine has it")
                + "; fix: " + "; ".join(f"{e}: {', '.join(sorted(engine_param_names(e)))}"
                                        for e in engines_seen if e in engine_names()))
        if set(engines_seen) - engines:
            only = sorted(engines)
            notes.append(f"engine.{param} applies to {', '.join(only)} only"
                         f" (not {', '.join(e for e in engines_seen if e not in engines)})")
    return out, notes
