"""Glue between Hydra and the runner: plan a sweep, run one trial per job, record, summarise.

Sweepers (grid: ``hydra_plugins/trtsweep_sweepers``; Optuna) call :func:`plan_sweep` before any
work and :func:`start_sweep` / :func:`finish_sweep` around the jobs; every job calls
:func:`run_job` (from ``sweep.py``).  So grid and search share every line below the sweeper.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from trtsweep.atomic import atomic_write_json, atomic_write_text
from trtsweep.config import TrialSpec, plan_trial, tracking_config
from trtsweep.errors import ConfigError, one_line
from trtsweep.identity import digest
from trtsweep.results import MEASURED, JobResult, TrialStatus

log = logging.getLogger("trtsweep")

ENV_PARENT = "TRTSWEEP_PARENT_RUN_ID"
ENV_TOTAL = "TRTSWEEP_TOTAL"
ENV_BATCH_SIZES = "TRTSWEEP_BATCH_SIZES"
ENV_SWEEP_DIR = "TRTSWEEP_SWEEP_DIR"
ENV_OFFSET = "TRTSWEEP_INDEX_OFFSET"


def job_config(cfg: Any) -> dict:
    """The job's config without Hydra's own node, interpolations resolved."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], (DictConfig,)) else cfg[k]
                for k in cfg if k != "hydra"}
    return {k: v for k, v in dict(cfg).items() if k != "hydra"}


def fail(message: str, code: int = 2) -> None:
    """One clear line for the user, then exit (the traceback, if any, is in the log)."""
    print(f"trtsweep: error: {message}", file=sys.stderr, flush=True)
    log.debug("error detail", exc_info=True)
    sys.exit(code)


# ---------------------------------------------------------------------------
@dataclass
class Plan:
    specs: list[TrialSpec]
    configs: list[dict]
    batch_sizes: list[int]

    @property
    def skipped(self) -> list[TrialSpec]:
        return [s for s in self.specs if s.skip_reason]


def plan_sweep(configs: Sequence[Any], resolve_models: bool = True) -> Plan:
    """Validate every job before the first trial. Invalid → ConfigError; unsupported → skip_reason."""
    plain = [job_config(c) for c in configs]
    batch_sizes = sorted({c.get("batch_size") for c in plain if isinstance(c.get("batch_size"), int)})
    specs = []
    for i, c in enumerate(plain):
        try:
            specs.append(plan_trial(c, batch_sizes))
        except ConfigError as e:
            raise ConfigError(f"{e}" + (f" (job #{i})" if len(plain) > 1 else "")) from None
    if resolve_models:
        resolve_specs_models(specs)
    return Plan(specs, plain, batch_sizes)


def resolve_specs_models(specs: list[TrialSpec]) -> None:
    """Build/read each distinct model once, so a bad signature or dimension fails before any trial."""
    from trtsweep import runner

    seen = set()
    for spec in specs:
        key = json.dumps(spec.model_key(), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        log.info("resolving model %s", spec.model.name)
        try:
            runner.resolve_model(spec)
        except runner.TrialFailure as f:
            raise ConfigError(f.reason) from None


# ---------------------------------------------------------------------------
@dataclass
class SweepContext:
    sweep_dir: Path
    parent_run_id: str | None
    tracker: Any
    started: float = field(default_factory=time.time)
    cfg: dict = field(default_factory=dict)  # the sweep's base config (confirm.*, tracking.*)


def sweep_key(name: str, arguments: Sequence[str], extra: str = "") -> str:
    return digest([name, sorted(arguments), extra])


def _tracker(cfg: dict):
    tcfg = tracking_config(cfg)
    if not tcfg.enabled:
        return None
    from trtsweep.tracking import Tracker

    return Tracker(tcfg)


def tracker_in_background(cfg: dict):
    """Open MLflow (import + schema check/creation take seconds) while the worker imports TensorFlow."""
    from concurrent.futures import ThreadPoolExecutor

    ex = ThreadPoolExecutor(1, thread_name_prefix="trtsweep-mlflow")
    fut = ex.submit(_tracker, cfg)
    ex.shutdown(wait=False)
    return fut


def start_sweep(cfg: dict, sweep_dir: Path, key: str, run_name: str, total: int, batch_sizes: list[int],
                tags: dict | None = None, tracker_future: Any = None) -> SweepContext:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tracker = None
    parent = None
    try:
        tracker = tracker_future.result() if tracker_future is not None else _tracker(cfg)
        if tracker is not None:
            parent = tracker.parent_run(key, run_name, {"sweep_dir": str(sweep_dir.resolve()), **(tags or {})})
    except Exception as e:  # noqa: BLE001 - results still go to the cache and results.csv
        log.error("MLflow unavailable, continuing without it: %s", one_line(e))
        log.debug("MLflow error", exc_info=True)
        tracker = None
    os.environ[ENV_SWEEP_DIR] = str(sweep_dir.resolve())
    os.environ[ENV_TOTAL] = str(total)
    os.environ[ENV_BATCH_SIZES] = ",".join(map(str, batch_sizes))
    if parent:
        os.environ[ENV_PARENT] = parent
    else:
        os.environ.pop(ENV_PARENT, None)
    log.info("sweep: %d trial(s), results in %s%s", total, sweep_dir,
             f", MLflow parent run {parent} at {tracker.uri}" if parent else "")
    return SweepContext(sweep_dir, parent, tracker, cfg=dict(cfg))


def confirm_winners(ctx: SweepContext, records: list[dict]) -> list:
    """Re-measure each group's close candidates interleaved; write confirmation.json and best.yaml."""
    from trtsweep import confirm
    from trtsweep.config import confirm_config

    conf = confirm_config(ctx.cfg)
    if not conf.enabled:
        return []
    try:
        verdicts = confirm.run(records, conf.top_k, conf.rounds)
    except Exception as e:  # noqa: BLE001 - the sweep's own results stand; the detail goes to the log
        log.error("confirmation failed, keeping the sweep's own ranking: %s", one_line(e))
        log.debug("confirmation error", exc_info=True)
        return []
    if verdicts:
        by_key = {r["trial_key"]: r for r in records}
        atomic_write_json(ctx.sweep_dir / "confirmation.json", [v.__dict__ for v in verdicts])
        write_best_yaml(ctx.sweep_dir / "best.yaml", verdicts, by_key)
    return verdicts


def write_best_yaml(path: Path, verdicts: list, by_key: dict[str, dict]) -> Path:
    """The exact overrides that reproduce each confirmed winner (``python sweep.py <overrides>``)."""
    import yaml

    entries = []
    for v in verdicts:
        rec = by_key[v.winner]
        spec = rec["spec"]
        overrides = [o for o in rec.get("overrides", []) if not o.startswith(("threads=", "hydra."))]
        overrides.append(f"threads={spec['threads']}")  # the resolved core budget, never "all cores"
        st = v.stats[v.winner]
        entries.append({
            "model": spec["model"]["name"], "batch_size": spec["batch_size"], "engine": spec["engine"],
            "precision": spec["precision"], "engine_params": spec["engine_params"], "threads": spec["threads"],
            "trial_key": v.winner, "overrides": overrides, "command": "python sweep.py " + " ".join(overrides),
            "confirm_throughput_ips": round(st["confirm_throughput_ips"], 3),
            "confirm_ci": [round(st["confirm_ci_low"], 3), round(st["confirm_ci_high"], 3)],
            "tie": v.is_tie, "tied_with": [k for k in v.tied if k != v.winner], "verdict": v.text,
        })
    return atomic_write_text(path, yaml.safe_dump({"best": entries}, sort_keys=False, allow_unicode=True))


def finish_sweep(ctx: SweepContext, print_summary: bool = True, status: str = "FINISHED") -> "Any":
    from trtsweep import report, runner

    records = report.load_trial_records(ctx.sweep_dir)
    verdicts = confirm_winners(ctx, records) if status == "FINISHED" else []
    df = report.apply_confirmation(report.table(records), verdicts)
    paths = report.write(df, ctx.sweep_dir) if not df.empty else []
    if print_summary and not df.empty:
        print("\n" + report.short_table(df) + "\n\n" + report.summary_text(df) + f"\n\nresults: {ctx.sweep_dir / 'results.csv'}",
              flush=True)
    if ctx.tracker is not None and ctx.parent_run_id:
        try:
            counts = df.status.value_counts().to_dict() if not df.empty else {}
            summary = {f"trials_{k}": v for k, v in counts.items()}
            best = report.best_per_model(df)
            if not best.empty:
                b = best.sort_values("throughput_ips").iloc[-1]
                summary.update({"best_throughput_ips": float(b.throughput_ips), "best_trial_key": b.trial_key})
            if verdicts:
                try:
                    ctx.tracker.log_confirmation(ctx.parent_run_id, verdicts, _child_runs(records, ctx.parent_run_id),
                                                 ctx.sweep_dir / "best.yaml")
                except Exception as e:  # noqa: BLE001 - best.yaml and results.csv hold it; still finish the parent
                    log.error("could not log the confirmation to MLflow: %s", one_line(e))
            ctx.tracker.finish_parent(ctx.parent_run_id, summary, paths[:1], status=status)
        except Exception as e:  # noqa: BLE001
            log.error("could not finish the MLflow parent run: %s", one_line(e))
    runner.pool().stop()
    for var in (ENV_PARENT, ENV_TOTAL, ENV_BATCH_SIZES, ENV_SWEEP_DIR, ENV_OFFSET):
        os.environ.pop(var, None)
    return df


def _child_runs(records: list[dict], parent: str) -> dict[str, str]:
    return {r["trial_key"]: r.get("mlflow_run_ids", {}).get(parent) for r in records
            if r.get("mlflow_run_ids", {}).get(parent)}


# ---------------------------------------------------------------------------
def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total) if total else width
    return "█" * filled + "░" * (width - filled)


def _progress_line(index: int, total: int, spec: TrialSpec, result) -> str:
    m = result.metrics
    if result.status in MEASURED and "latency_p50_ms" in m:
        acc = m.get("accuracy")
        outcome = (f"p50 {m['latency_p50_ms']:.3f} ms, {m['throughput_ips']:.1f} items/s "
                   f"(95% CI {m.get('throughput_ci_low', float('nan')):.1f}–{m.get('throughput_ci_high', float('nan')):.1f}), "
                   f"agreement {m.get('top1_agreement', float('nan')):.3f}"
                   + (f", accuracy {acc:.3f}" if acc is not None else "")
                   + (f", UNSTABLE (spread {m.get('latency_cv', 0):.0%})" if result.unstable else "")
                   + (f" (cached, measured {_date(result.started_at)})" if result.cached else ""))
        if result.status == TrialStatus.ACCURACY_VIOLATION:
            outcome += f" — ACCURACY VIOLATION: {result.reason}"
    else:
        outcome = f"{result.status.upper()}: {result.reason}"
    return f"[{index}/{total}] {_bar(index, total)} {spec.label()} → {outcome}"


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "?"


def run_job(cfg: Any) -> JobResult:
    """The Hydra task function body: one trial; its sweeper reads the returned :class:`JobResult`."""
    from hydra.core.hydra_config import HydraConfig

    from trtsweep import runner

    plain = job_config(cfg)
    hc = HydraConfig.get()
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    batch_sizes = [int(b) for b in os.environ.get(ENV_BATCH_SIZES, "").split(",") if b]
    try:
        spec = plan_trial(plain, batch_sizes or None)
    except ConfigError as e:
        fail(str(e))
    own_sweep = ENV_SWEEP_DIR not in os.environ
    if own_sweep:  # a single run, or a sweeper that is not ours: this job is its own sweep
        sweep_dir = Path(hc.runtime.output_dir)
        try:
            if not multirun:
                resolve_specs_models([spec])
        except ConfigError as e:
            runner.pool().stop()
            fail(str(e))
        key = sweep_key(plain.get("name", "adhoc"), list(hc.overrides.task), str(sweep_dir) if multirun else "")
        ctx = start_sweep(plain, sweep_dir, key, f"{plain.get('name', 'adhoc')}: {' '.join(hc.overrides.task)}"[:250],
                          1, [spec.batch_size])
    else:
        ctx = SweepContext(Path(os.environ[ENV_SWEEP_DIR]), os.environ.get(ENV_PARENT), None)
        if ctx.parent_run_id:
            try:
                ctx.tracker = _tracker(plain)
            except Exception as e:  # noqa: BLE001
                log.error("MLflow unavailable: %s", one_line(e))
    if multirun:
        index = hc.job.num + 1 + int(os.environ.get(ENV_OFFSET, "0"))
        total = int(os.environ.get(ENV_TOTAL, "1"))
    else:
        index = total = 1

    result = runner.execute(spec)
    if result.status == TrialStatus.FAILED and result.traceback:
        tb_path = Path(hc.runtime.output_dir) / "traceback.txt"
        tb_path.parent.mkdir(parents=True, exist_ok=True)
        tb_path.write_text(result.traceback)
        result.reason = f"{result.reason} (traceback: {tb_path})"
    if ctx.tracker is not None and ctx.parent_run_id:
        try:
            if ctx.parent_run_id not in result.mlflow_run_ids or not result.cached:
                run_id = ctx.tracker.log_trial(ctx.parent_run_id, result, spec, plain)
                result.mlflow_run_ids[ctx.parent_run_id] = run_id
                if result.status != TrialStatus.SKIPPED:
                    runner.save_result(result, spec.cache_dir)
        except Exception as e:  # noqa: BLE001 - the result is safe in the cache and results.csv
            log.error("MLflow logging failed for %s: %s", spec.label(), one_line(e))
            log.debug("MLflow error", exc_info=True)
    atomic_write_json(ctx.sweep_dir / "trials" / f"{index:05d}-{result.trial_key}.json",
                             {**result.to_dict(), "overrides": list(hc.overrides.task)})
    log.info(_progress_line(index, total, spec, result))
    if own_sweep:
        finish_sweep(ctx, print_summary=True)
    return JobResult.of(result, ctx.parent_run_id)


__all__ = ["plan_sweep", "resolve_specs_models", "start_sweep", "finish_sweep", "run_job", "sweep_key", "fail"]
