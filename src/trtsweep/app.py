"""Glue between Hydra and the runner: plan a sweep, run one trial per job, record.

Sweepers (grid: ``hydra_plugins/trtsweep_sweepers``; Optuna) call :func:`plan_sweep` before any
work and run their jobs inside :func:`trtsweep.session.sweep_session`; every job calls
:func:`run_job` (from ``sweep.py``), which is a sweep of its own when no sweeper of ours started
one (a single run).  So grid, search and single runs share every line below the sweeper.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtsweep import outcome
from trtsweep.atomic import atomic_write_json
from trtsweep.config import TrialSpec, plan_trial, tracking_config
from trtsweep.constraints import plan_notes
from trtsweep.errors import ConfigError
from trtsweep.plan_checks import MODEL_TIMEOUT_S, check_data_fits, check_job, check_sweeper
from trtsweep.redact import mask_config
from trtsweep.results import MEASURED, JobResult, TrialResult, TrialStatus
from trtsweep.session import (
    ENV_BATCH_SIZES,
    ENV_OFFSET,
    ENV_SWEEP_DIR,
    ENV_TOTAL,
    SweepContext,
    fail,
    joined_sweep,
    sweep_key,
    sweep_session,
)

log = logging.getLogger("trtsweep")


def job_config(cfg: Any) -> dict:
    """The job's config without Hydra's own node, interpolations resolved."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], (DictConfig,)) else cfg[k]
                for k in cfg if k != "hydra"}
    return {k: v for k, v in dict(cfg).items() if k != "hydra"}


# ---------------------------------------------------------------------------
@dataclass
class Plan:
    specs: list[TrialSpec]
    configs: list[dict]
    batch_sizes: list[int]


def plan_sweep(configs: Sequence[Any], resolve_models: bool = True) -> Plan:
    """Validate every job before the first trial. Invalid → ConfigError; unsupported → skip_reason."""
    plain = [job_config(c) for c in configs]
    batch_sizes = sorted({c.get("batch_size") for c in plain if isinstance(c.get("batch_size"), int)})
    specs = []
    if configs:
        check_sweeper(configs[0])
    for i, c in enumerate(plain):
        try:
            specs.append(plan_trial(c, batch_sizes))
            check_job(c, specs[-1])
        except ConfigError as e:
            raise ConfigError(f"{e}" + (f" (job #{i})" if len(plain) > 1 else "")) from None
    say_plan_notes(specs)
    if resolve_models:
        resolve_specs_models(specs)
        plan_is_valid(specs, plain[0] if plain else {})
    return Plan(specs, plain, batch_sizes)


_SAID: set[str] = set()


def say_plan_notes(specs: Sequence[TrialSpec]) -> None:
    """Plan notes about the bounds (:func:`trtsweep.constraints.plan_notes`), each once per process: a
    sweeper plans its jobs more than once (the Optuna sweeper: a representative set, then all of it)."""
    for note in plan_notes(specs):
        if note not in _SAID:
            _SAID.add(note)
            log.info("plan: %s", note)


def plan_is_valid(specs: list[TrialSpec], cfg: dict) -> None:
    """Every trial of the sweep passed its checks: MLflow now opens (its process imported it already,
    and creates a new database's schema only now, so an invalid sweep leaves none behind) and the worker
    loads the first trial's data, while the sweeper does the rest of its start-up."""
    from trtsweep import runner
    from trtsweep.session import open_tracker_early

    open_tracker_early(cfg)
    try:
        tcfg = tracking_config(cfg)
        packages = tcfg.enabled and tcfg.log_models
    except Exception:  # noqa: BLE001 - reported when the sweep starts
        packages = False
    runner.prepare(specs, mlflow_model=packages)


def resolve_specs_models(specs: list[TrialSpec]) -> None:
    """Build/read each distinct model once, so a bad signature or dimension fails before any trial, and
    check a data file against it (under the plan's own time limit, not ``trial.timeout_s``)."""
    from dataclasses import asdict

    from trtsweep import runner

    models: dict[str, dict] = {}
    checked = set()
    for spec in specs:
        key = json.dumps(spec.model_key(), sort_keys=True)
        if key not in models:
            log.info("resolving model %s", spec.model.name)
            try:
                models[key] = runner.pool().call(
                    "resolve", {"model": asdict(spec.model), "cache_dir": spec.cache_dir}, runner.worker_env(spec),
                    max(MODEL_TIMEOUT_S, spec.trial.timeout_s), spec.trial.max_memory_mb)
            except runner.TrialFailure as f:
                raise ConfigError(f.reason) from None
        data_key = (key, json.dumps(asdict(spec.data), sort_keys=True))
        if data_key not in checked:
            checked.add(data_key)
            check_data_fits(spec, models[key])


# ---------------------------------------------------------------------------
def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total) if total else width
    return "█" * filled + "░" * (width - filled)


def _progress_line(index: int, total: int, spec: TrialSpec, result: TrialResult) -> str:
    m = result.metrics
    if result.status in MEASURED and "latency_p50_ms" in m:
        acc = m.get("accuracy")
        outcome = (f"p50 {m['latency_p50_ms']:.3f} ms, {m['throughput_ips']:.1f} items/s "
                   f"(95% CI {m.get('throughput_ci_low', float('nan')):.1f}–"
                   f"{m.get('throughput_ci_high', float('nan')):.1f}), "
                   f"agreement {m.get('top1_agreement', float('nan')):.3f}"
                   + (f", accuracy {acc:.3f}" if acc is not None else "")
                   + (f", UNSTABLE (spread {m.get('latency_cv', 0):.0%})" if result.unstable else "")
                   + (f" (cached, measured {_date(result.started_at)})" if result.cached else ""))
        if result.status in (TrialStatus.ACCURACY_VIOLATION, TrialStatus.INFEASIBLE):
            outcome += f" — {result.status.upper().replace('_', ' ')}: {result.reason}"
    else:
        outcome = f"{result.status.upper()}: {result.reason}"
    return f"[{index}/{total}] {_bar(index, total)} {spec.label()} → {outcome}"


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "?"


def run_job(cfg: Any) -> JobResult:
    """The Hydra task function body: one trial; its sweeper reads the returned :class:`JobResult`."""
    from hydra.core.hydra_config import HydraConfig

    plain = job_config(cfg)
    hc = HydraConfig.get()
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    batch_sizes = [int(b) for b in os.environ.get(ENV_BATCH_SIZES, "").split(",") if b]
    try:
        spec = plan_trial(plain, batch_sizes or None)
        if ENV_SWEEP_DIR not in os.environ:  # else its sweeper checked it, with every other job
            check_job(plain, spec)
    except ConfigError as e:
        fail(str(e))
    if ENV_SWEEP_DIR in os.environ:  # a job of a sweep that one of our sweepers runs (it said the plan notes)
        return _run_trial(spec, plain, hc, joined_sweep(plain))
    say_plan_notes([spec])
    # a single run, or a sweeper that is not ours: this job is its own sweep
    sweep_dir = Path(hc.runtime.output_dir)
    if not multirun:
        try:
            resolve_specs_models([spec])
        except ConfigError as e:
            fail(str(e))
    name, overrides = plain.get("name", "adhoc"), list(hc.overrides.task)
    with sweep_session(plain, sweep_dir, sweep_key(name, overrides, str(sweep_dir) if multirun else ""),
                       f"{name}: {' '.join(overrides)}"[:250], 1, [spec.batch_size]) as ctx:
        return _run_trial(spec, plain, hc, ctx)


def _run_trial(spec: TrialSpec, plain: dict, hc: Any, ctx: SweepContext) -> JobResult:
    """Run (or fetch from the cache) one trial, log it to MLflow, write its record to the sweep."""
    from trtsweep import runner, sync

    if str(hc.mode) == "RunMode.MULTIRUN":
        index = hc.job.num + 1 + int(os.environ.get(ENV_OFFSET, "0"))
        total = int(os.environ.get(ENV_TOTAL, "1"))
    else:
        index = total = 1
    tracker = ctx.tracker if ctx.parent_run_id else None
    result = runner.execute(spec, mlflow_model=tracker is not None and tracker.cfg.log_models)
    outcome.note(result.status)
    if result.status == TrialStatus.FAILED and result.traceback:
        tb_path = Path(hc.runtime.output_dir) / "traceback.txt"
        tb_path.parent.mkdir(parents=True, exist_ok=True)
        tb_path.write_text(result.traceback)
        result.reason = f"{result.reason} (traceback: {tb_path})"
    missed = sync.log_trial(ctx, result, spec, plain)  # MLflow down: the record says so (trtsweep sync)
    atomic_write_json(ctx.sweep_dir / "trials" / f"{index:05d}-{result.trial_key}.json",
                      {**result.to_dict(), "overrides": mask_config(list(hc.overrides.task)), **mask_config(missed)})
    log.info(_progress_line(index, total, spec, result))
    return JobResult.of(result, ctx.parent_run_id)


__all__ = ["job_config", "plan_is_valid", "plan_sweep", "resolve_specs_models", "run_job"]
