"""The Optuna sweeper's implementation (the front class in ``optuna.py`` delegates here).

Each asked trial is launched as a Hydra job through the same task function as the grid (plan →
runner → record); the study lives in an RDB storage shared by every worker with the same storage and
study name; the study is one MLflow parent run and every trial its child run.
"""

import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from trtsweep.app import plan_sweep
from trtsweep.errors import ConfigError, one_line
from trtsweep.results import JobResult, TrialStatus
from trtsweep.session import ENV_OFFSET, SweepContext, fail, sweep_key, sweep_session
from trtsweep.tracking import absolute_sqlite_uri

from ._outcome import OBJECTIVES, Outcome, objective_names, tell, trial_outcome
from ._report import best_and_front, summary_lines, write_report
from ._space import (
    SearchParam,
    SearchSpaceError,
    attach_engine_conditions,
    encode_value,
    overrides_for,
    params_text,
    parse_overrides,
    representative_assignments,
    split_space,
    suggest,
)
from ._study import Heartbeat, fail_stale_trials, make_sampler, masked, open_storage, open_study, sampler_label

log = logging.getLogger(__name__)


class OptunaSweeperImpl:
    def __init__(self, conf: Any):
        """``conf``: the sweeper's settings, an ``OptunaSweeperConf`` (``optuna.py``)."""
        self.conf = conf
        self.params: Dict[str, Any] = dict(conf.params or {})
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None
        self._summary: List[str] = []
        self._ran = 0  # trials this worker ran in this sweep

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # ---- settings and space ----
    def _directions(self) -> List[str]:
        objective = self.conf.objective
        if objective not in OBJECTIVES:
            raise SearchSpaceError(f"hydra.sweeper.objective={objective} is unknown; "
                                   f"fix: use one of {', '.join(OBJECTIVES)}")
        return [OBJECTIVES[objective]] + (["minimize"] if self.conf.multi_objective else [])

    def _check_settings(self) -> None:
        c = self.conf
        if not isinstance(c.n_trials, int) or c.n_trials < 1:
            raise SearchSpaceError(f"hydra.sweeper.n_trials={c.n_trials} must be an integer ≥ 1; "
                                   "fix: hydra.sweeper.n_trials=20")
        if c.timeout is not None and c.timeout <= 0:
            raise SearchSpaceError(f"hydra.sweeper.timeout={c.timeout} must be > 0 seconds (or null)")
        if c.heartbeat_interval < 1 or c.grace_period <= c.heartbeat_interval:
            raise SearchSpaceError(f"hydra.sweeper.grace_period={c.grace_period} must exceed heartbeat_interval="
                                   f"{c.heartbeat_interval} (≥ 1); fix: e.g. heartbeat_interval=10 grace_period=30")
        sampler_label(c.sampler)  # a name from the table or a node with _target_ (raises naming the fix)
        if not c.study_name or "${" in str(c.study_name):
            raise SearchSpaceError(f"hydra.sweeper.study_name={c.study_name!r} is invalid; "
                                   "fix: hydra.sweeper.study_name=my-study")

    def _compose(self, overrides: List[str], label: str) -> DictConfig:
        """The job config for ``overrides``; ``label`` names the trial in an error (the search values)."""
        assert self.hydra_context is not None and self.config is not None
        try:
            return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        except Exception as e:  # noqa: BLE001 - unknown key / option: Hydra's message, shortened
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            text = "; ".join(lines[:2]) if lines else type(e).__name__
            raise SearchSpaceError(f"the config does not compose with {label or 'the fixed overrides'}: {text}; "
                                   "fix: check the key or option name (conf/), or add a new key with +key=value"
                                   ) from None

    def _engine_keys(self, space: List[SearchParam], fixed: List[str]) -> Tuple[Dict[str, set], Optional[str]]:
        engine = next((p for p in space if p.name == "engine"), None)
        if engine is None:
            cfg = self._compose(fixed, "")
            return {str(cfg.engine.name): set(cfg.engine.keys()) - {"name"}}, str(cfg.engine.name)
        choices = getattr(engine.distribution, "choices", None)
        if choices is None:
            raise SearchSpaceError(f"{engine.expr}: the engine is a config group; fix: engine=choice(tf,tflite,...)")
        keys = {}
        for e in choices:
            cfg = self._compose(fixed + [f"engine={encode_value(e)}"], f"engine={encode_value(e)}")
            keys[str(e)] = set(cfg.engine.keys()) - {"name"}
        return keys, None

    def _validate(self, space: List[SearchParam], fixed: List[str]) -> Any:
        """Compose and plan a representative set of trials; returns the Plan (raises on an invalid space)."""
        if not space:
            raise SearchSpaceError("the search space is empty; fix: give parameters as choice(...), range(...) or "
                                   "interval(...) on the command line or in hydra.sweeper.params")
        keys, fixed_engine = self._engine_keys(space, fixed)
        attach_engine_conditions(space, keys, fixed_engine)
        assignments = representative_assignments(space)
        configs = [self._compose(overrides_for(space, a, fixed), params_text(a)) for a in assignments]
        for values, cfg in zip(assignments, configs, strict=True):
            try:
                plan_sweep([cfg], resolve_models=False)
            except ConfigError as e:
                raise SearchSpaceError(f"{e} (trial with {params_text(values)})") from None
        try:
            plan = plan_sweep(configs, resolve_models=True)
        except ConfigError as e:
            raise SearchSpaceError(str(e)) from None
        skipped: Dict[str, List[Dict[str, Any]]] = {}
        for spec, values in zip(plan.specs, assignments, strict=True):
            if spec.skip_reason:
                skipped.setdefault(spec.skip_reason, []).append(values)
        for reason, examples in skipped.items():
            log.info("plan: %d of %d validation trials would be skipped (pruned, no measurement), e.g. %s — %s",
                     len(examples), len(assignments), params_text(examples[0]), reason)
        return plan

    def _open_study(self, space: List[SearchParam], directions: List[str]) -> Tuple[optuna.Study, Any]:
        c = self.conf
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = make_sampler(c.sampler, c.seed, c.n_startup_trials, len(directions), space)
        storage = open_storage(c.storage, c.heartbeat_interval, c.grace_period, c.max_retry)
        study = open_study(storage, c.study_name, sampler, directions, objective_names(c.objective, c.multi_objective))
        return study, storage

    # ---- the sweep ----
    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        c = self.conf
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        try:
            self._check_settings()
            directions = self._directions()
            space, fixed = split_space(parse_overrides(lines, self.hydra_context.config_loader))
            plan = self._validate(space, fixed)
            study, storage = self._open_study(space, directions)
        except SearchSpaceError as e:
            fail(str(e))
        identity = absolute_sqlite_uri(c.storage)
        sampler = sampler_label(c.sampler)
        tags = {"sweeper": "optuna", "optuna.study": c.study_name, "optuna.storage": masked(identity),
                "optuna.sampler": sampler, "optuna.objective": c.objective,
                "optuna.space": " ".join(p.expr for p in space)[:4000]}
        self._ran = 0
        session: Optional[SweepContext] = None
        try:
            with sweep_session(plan.configs[0], Path(self.config.hydra.sweep.dir),
                               sweep_key(c.study_name, [], identity), f"optuna: {c.study_name}"[:250], c.n_trials,
                               plan.batch_sizes, tags=tags, multirun_config=self.config) as session:
                log.info("optuna: study %s in %s, sampler %s, %s %s%s, %d trial(s) here", c.study_name,
                         masked(identity), sampler, " & ".join(directions), c.objective,
                         " & accuracy_drop" if c.multi_objective else "", c.n_trials)
                try:
                    self._run_trials(study, storage, space, fixed, session)
                finally:  # interrupted too: the study's report, before the sweep's own results table
                    self._finish(study, session)
        finally:
            if session is not None:  # after the results table: the confirmed winner (only for a finished study)
                print("\n".join(self._summary + confirmed_lines(session.table)), flush=True)
        return None

    def _run_trials(self, study: optuna.Study, storage: Any, space: List[SearchParam], fixed: List[str],
                    ctx: SweepContext) -> None:
        c = self.conf
        started = time.monotonic()
        for local in range(c.n_trials):
            if c.timeout is not None and time.monotonic() - started > c.timeout:
                log.info("optuna: timeout of %s s reached after %d trial(s)", c.timeout, self._ran)
                break
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                log.info("optuna: the grid is exhausted after %d trial(s)", self._ran)
                break
            self._run_trial(study, storage, space, fixed, ctx, local)
            self._ran += 1

    def _run_trial(self, study: optuna.Study, storage: Any, space: List[SearchParam], fixed: List[str],
                   ctx: SweepContext, local: int) -> None:
        fail_stale_trials(study, storage, self.conf.grace_period)
        with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize": see Heartbeat
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        with Heartbeat(storage, trial._trial_id, self.conf.heartbeat_interval):
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # alive: fail_orphaned_trials
            outcome = self._launch(study, trial, space, fixed, local)
        tell(study, trial, outcome)
        self._tag_child(ctx, trial.number, outcome)
        names = objective_names(self.conf.objective, self.conf.multi_objective)  # one per value
        value = (" " + ", ".join(f"{n}={v:.6g}" for n, v in zip(names, outcome.values, strict=True))
                 if outcome.values else "")
        why = f" — {outcome.attrs['reason']}" if outcome.state != "COMPLETE" and "reason" in outcome.attrs else ""
        log.info("optuna: trial #%d %s%s%s%s", trial.number, outcome.label, value,
                 " (from the result cache)" if outcome.attrs.get("cached") else "", why)

    def _launch(self, study: optuna.Study, trial: optuna.Trial, space: List[SearchParam], fixed: List[str],
                local: int) -> Outcome:
        """Suggest the trial's values and run it as a Hydra job through the task function."""
        c = self.conf
        try:
            values = suggest(trial, space)
        except ValueError as e:  # e.g. a retried trial from an older, different space
            return trial_outcome(None, f"cannot reuse this trial's parameters: {one_line(e)}", c.objective,
                                 c.multi_objective, 0.0)
        overrides = overrides_for(space, values, fixed)
        trial.set_user_attr("overrides", overrides)
        os.environ[ENV_OFFSET] = str(local - trial.number)  # progress shows [local/n_trials]
        try:
            ret = self.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        except BaseException as e:  # SystemExit (invalid config), KeyboardInterrupt: stop the study
            tell(study, trial, Outcome("FAIL", None, False, {"status": str(TrialStatus.FAILED),
                                                              "reason": f"interrupted: {one_line(e)}"}))
            raise
        max_drop = OmegaConf.select(ret.cfg, "fidelity.max_accuracy_drop") if ret.cfg is not None else None
        max_drop = 0.01 if max_drop is None else float(max_drop)
        bounds = OmegaConf.select(ret.cfg, "constraints") if ret.cfg is not None else None  # constraints.*
        bounds = OmegaConf.to_container(bounds, resolve=True) if bounds is not None else None
        if ret.status == JobStatus.COMPLETED and isinstance(ret._return_value, JobResult):
            return trial_outcome(ret._return_value, None, c.objective, c.multi_objective, max_drop, bounds)
        err = ret._return_value if isinstance(ret._return_value, BaseException) else None
        return trial_outcome(None, one_line(err) if err else "the job returned no result", c.objective,
                             c.multi_objective, max_drop)

    def _tag_child(self, ctx: SweepContext, number: int, outcome: Outcome) -> None:
        run_id = outcome.attrs.get("mlflow_run_id")
        if ctx.tracker is None or not run_id:
            return
        try:
            ctx.tracker.tag_study_trial(run_id, self.conf.study_name, number, outcome.label)
        except Exception as e:  # noqa: BLE001 - the study is safe in its storage
            log.error("could not tag MLflow run %s: %s", run_id, one_line(e))

    # ---- end of sweep ----
    def _finish(self, study: optuna.Study, ctx: SweepContext) -> None:
        """The study's summary lines, files and MLflow entries; never raises (the trials are safe in the
        study, and the sweep must still be closed)."""
        try:
            self._report(study, ctx)
        except Exception as e:
            log.error("could not report the study: %s", one_line(e))
            log.debug("study report error", exc_info=True)

    def _report(self, study: optuna.Study, ctx: SweepContext) -> None:
        c = self.conf
        trials = study.get_trials(deepcopy=False)
        best, front = best_and_front(study)
        self._summary = summary_lines(trials, best, front, c.study_name, c.objective, self._ran)
        files, imps = write_report(study, ctx.sweep_dir)
        if imps:
            self._summary.append("optuna importance: " + ", ".join(f"{k}={v:.2f}" for k, v in imps.items()))
        self._summary.append(f"optuna trials: {files[0]}; watch the study with: "
                             f"optuna-dashboard {masked(absolute_sqlite_uri(c.storage))}")
        if ctx.tracker is None or not ctx.parent_run_id:
            return
        best_info = None if best is None else {
            "number": best.number, "value": best.values[0], "params": params_text(best.params),
            "run_id": best.user_attrs.get("mlflow_run_id")}
        try:
            ctx.tracker.log_study(ctx.parent_run_id, len(trials), best=best_info,
                                  pareto_run_ids=[t.user_attrs["mlflow_run_id"] for t in front
                                                  if t.user_attrs.get("mlflow_run_id")],
                                  importances=imps, files=files)
        except Exception as e:  # noqa: BLE001 - the study is safe in its storage
            log.error("could not log the study to MLflow: %s", one_line(e))


def confirmed_lines(df: Any) -> List[str]:
    """The study's final answer: the winner of the interleaved re-measurement of the close candidates
    this process ran (trtsweep.confirm), which may differ from Optuna's best single measurement."""
    if df is None or getattr(df, "empty", True) or "best" not in df:
        return []
    lines = []
    for _, r in df[df["best"].fillna(False).astype(bool)].iterrows():
        tie = " (a statistical tie: the cheapest of the tied)" if r.get("tie") else ""
        lines.append(f"optuna final answer (confirmed by interleaved re-measurement){tie}: {r.model} bs={r.batch_size} "
                     f"engine={r.engine} precision={r.precision} threads={r.threads} — "
                     f"{r.confirm_throughput_ips:.1f} items/s (95% CI {r.confirm_ci_low:.1f}–{r.confirm_ci_high:.1f})")
    return lines
