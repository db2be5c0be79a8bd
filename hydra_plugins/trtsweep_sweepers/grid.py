"""The grid sweeper (``hydra/sweeper=trtsweep``, the default): Hydra's basic sweeper, plus

* every job of the multirun is composed and validated before the first trial (an invalid value
  stops the sweep with one line; an unsupported combination is planned as ``skipped``);
* one MLflow parent run per sweep (reused when the same sweep is started again), and
  ``results.csv``/``results.parquet`` plus a summary at the end.
"""


import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

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
        from trtsweep.app import (fail, finish_sweep, job_config, plan_sweep, resolve_specs_models, start_sweep, sweep_key,
                                  tracker_in_background)
        from trtsweep.errors import ConfigError

        assert self.config is not None and self.hydra_context is not None
        from trtsweep import runner

        runner.pool().prewarm()  # TensorFlow imports in the worker while configs are composed
        params_conf = self._parse_config() + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        try:
            batches = self.split_arguments(parser.parse_overrides(params_conf), self.max_batch_size)
        except Exception as e:  # noqa: BLE001 - bad sweep syntax
            fail(f"{e}".splitlines()[0])
        jobs = [list(job) for batch in batches for job in batch]
        loader = self.hydra_context.config_loader
        try:
            configs = [loader.load_sweep_config(self.config, job) for job in jobs]
        except Exception as e:  # noqa: BLE001 - composition errors (unknown option, key...)
            fail(" ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()))
        try:
            plan = plan_sweep(configs, resolve_models=False)  # cheap checks first: a typo fails at once
            tracker_future = tracker_in_background(job_config(configs[0])) if configs else None
            resolve_specs_models(plan.specs)  # TensorFlow work in the worker while MLflow opens
        except ConfigError as e:
            runner.pool().stop()
            fail(str(e))
        for spec, job in zip(plan.specs, jobs):
            if spec.skip_reason:
                log.info("plan: skip %s — %s", " ".join(job), spec.skip_reason)
        base = plan.configs[0] if plan.configs else {}
        name = str(base.get("name", "adhoc"))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        ctx = start_sweep(base, sweep_dir, sweep_key(name, params_conf), f"{name}: {' '.join(params_conf)}"[:250],
                          len(jobs), plan.batch_sizes, {"sweeper": "grid"}, tracker_future)
        self._planned = True
        try:
            returns = super().sweep(arguments)
        except BaseException:  # Ctrl-C or a crash of the sweep itself: keep what was measured, mark it
            finish_sweep(ctx, status="KILLED")
            raise
        finish_sweep(ctx)
        return returns
