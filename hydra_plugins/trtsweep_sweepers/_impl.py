"""The Optuna sweeper's implementation (the front class in ``optuna.py`` delegates here).

Each asked trial is launched as a Hydra job through the same task function as the grid (plan →
runner → record); the study lives in an RDB storage shared by every worker with the same storage and
study name; the study is one MLflow parent run and every trial its child run.
"""

import logging
import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from trtsweep import steps
from trtsweep.app import job_config, plan_sweep
from trtsweep.config import plan_trial
from trtsweep.constraints import verdict
from trtsweep.errors import ConfigError, one_line
from trtsweep.redact import mask_config
from trtsweep.results import JobResult, TrialStatus
from trtsweep.session import ENV_OFFSET, SweepContext, fail, sweep_key, sweep_session
from trtsweep.tracking import absolute_sqlite_uri

from ._outcome import OBJECTIVES, Outcome, objective_names, tell, trial_outcome
from ._prune import ConfidenceBoundPruner
from ._report import best_and_front, best_feasible, confirmed_lines, summary_lines, write_report
from ._retry import StorageUnavailable
from ._search import Search, SearchSettings, Steps
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
)
from ._study import (
    check_sampler_space,
    fail_stale_trials,
    heartbeat,
    make_sampler,
    masked,
    open_storage,
    open_study,
    sampler_label,
)
from ._warm import OtherStudies, cached_results, cached_trials, default_value, first_configs, same_conversion

log = logging.getLogger(__name__)
BROUGHT_IN = 100000  # job numbers of the best trials run again for the confirmation (after the trials' own)


class OptunaSweeperImpl:
    def __init__(self, conf: Any):
        """``conf``: the sweeper's settings, an ``OptunaSweeperConf`` (``optuna.py``)."""
        self.conf = conf
        self.params: Dict[str, Any] = dict(conf.params or {})
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None
        self._summary: List[str] = []
        self._ran = 0  # trials this worker measured in this sweep
        self._space: List[SearchParam] = []
        self._batch_sizes: List[int] = []
        self._fixed_engine: Optional[str] = None  # the engine when it is not searched
        self._run_keys: set = set()  # result identities of the jobs run in this sweep

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
        if c.pruner not in ("confidence", "none"):
            raise SearchSpaceError(f"hydra.sweeper.pruner={c.pruner} is unknown; fix: confidence or none")
        if c.prune_margin < 0:
            raise SearchSpaceError(f"hydra.sweeper.prune_margin={c.prune_margin} must be ≥ 0; fix: e.g. 0.2")
        for key in ("stagnation_trials", "stagnation_s"):
            value = getattr(c, key)
            if value is not None and value <= 0:
                raise SearchSpaceError(f"hydra.sweeper.{key}={value} must be > 0 (or null); fix: e.g. "
                                       f"hydra.sweeper.{key}={'5' if key.endswith('trials') else '600'}")
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
        self._fixed_engine = fixed_engine
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
            check_sampler_space(c.sampler, space)  # before the plan builds models
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
                               plan.batch_sizes, tags=tags, multirun_config=self.config,
                               varying=[p.name for p in space]) as session:
                log.info("optuna: study %s in %s, sampler %s, %s %s%s, %d trial(s) here", c.study_name,
                         masked(identity), sampler, " & ".join(directions), c.objective,
                         " & accuracy_drop" if c.multi_objective else "", c.n_trials)
                self._space = space
                search = self._search(study, storage, space, fixed, plan, session)
                try:
                    self._warm_start(search, space, fixed, plan)
                    reason = search.run()
                    log.info("optuna: search stopped: %s", reason)
                    self._bring_in_best(study, fixed, plan)
                finally:  # interrupted too: the study's report, before the sweep's own results table
                    self._finish(study, session, search)
        except StorageUnavailable as e:  # the database stayed down: one line; the same command resumes
            fail(str(e))
        finally:
            if session is not None:  # after the results table: the confirmed winner (only for a finished study)
                print("\n".join(self._summary + confirmed_lines(session.table)), flush=True)
        return None

    def _search(self, study: optuna.Study, storage: Any, space: List[SearchParam], fixed: List[str],
                plan: Any, ctx: SweepContext) -> Search:
        c = self.conf
        settings = SearchSettings(n_trials=c.n_trials, timeout=c.timeout, stagnation_trials=c.stagnation_trials,
                                  stagnation_s=c.stagnation_s, seed=c.seed)
        pruner = None
        if c.pruner == "confidence":
            if c.objective == "throughput_ips" and not c.multi_objective:
                pruner = ConfidenceBoundPruner(margin=c.prune_margin)
            else:
                log.info("optuna: pruning is off (it bounds throughput_ips of a single-objective study)")
        self._batch_sizes = list(plan.batch_sizes)
        index = OtherStudies(storage, c.study_name)
        return Search(study, space, settings,
                      lambda trial, values, steps_: self._evaluate(study, storage, trial, values, fixed, steps_),
                      known=(lambda values: index.lookup(self._trial_key(space, fixed, values))) if index else None,
                      pruner=pruner, cheap=self._same_conversion,
                      before_ask=lambda: fail_stale_trials(study, storage, c.grace_period),
                      on_told=lambda trial, values, outcome, free: self._told(ctx, trial, outcome, free))

    def _same_conversion(self, a: Dict[str, Any], b: Dict[str, Any]) -> bool:
        engine = {"engine": self._fixed_engine} if self._fixed_engine else {}
        return same_conversion({**engine, **a}, {**engine, **b})

    def _trial_key(self, space: List[SearchParam], fixed: List[str], values: Dict[str, Any]) -> Optional[str]:
        """The result identity these values would have (None if they do not plan)."""
        try:
            cfg = self._compose(overrides_for(space, values, fixed), params_text(values))
            return plan_trial(job_config(cfg), self._batch_sizes).trial_key()
        except (SearchSpaceError, ConfigError):
            return None

    def _warm_start(self, search: Search, space: List[SearchParam], fixed: List[str], plan: Any) -> None:
        c = self.conf
        if not c.warm_start:
            return
        engines, fixed_engine = self._engine_defaults(space, fixed)
        first = first_configs(space, engines, fixed_engine)
        cfg = plan.configs[0]
        max_drop = float((cfg.get("fidelity") or {}).get("max_accuracy_drop", 0.01))
        models = {spec.model.name for spec in plan.specs}
        results = (r for r in cached_results(Path(plan.specs[0].cache_dir) / "results")
                   if (r.spec.get("model") or {}).get("name") in models)  # cheap first cut; the key decides
        bounds = cfg.get("constraints")

        def judged(r: Any) -> Outcome:  # a cached result, judged under this search's bounds (as the runner does)
            r.status, r.reason = verdict(r.metrics, bounds, max_drop)
            return trial_outcome(JobResult.of(r, None), None, c.objective, c.multi_objective, max_drop, bounds)

        known = cached_trials(space, results, lambda values: self._trial_key(space, fixed, values), judged)
        added = search.warm_start(first, known)
        log.info("optuna: warm start: %d configuration(s) queued first (TF FP32 baseline, engine defaults), "
                 "%d added from the result cache", len(first), added)

    def _engine_defaults(self, space: List[SearchParam], fixed: List[str]) -> Tuple[Dict[str, Dict[str, Any]],
                                                                                       Optional[str]]:
        """engine → {search parameter → its value in that engine's default config}; and the fixed engine."""
        engine = next((p for p in space if p.name == "engine"), None)
        names = [p.name for p in space]
        out: Dict[str, Dict[str, Any]] = {}
        choices = list(getattr(engine.distribution, "choices", ())) if engine is not None else [None]
        fixed_engine = None
        for e in choices:
            cfg = self._compose(fixed + ([f"engine={encode_value(e)}"] if e is not None else []), "")
            name = str(cfg.engine.name)
            fixed_engine = name if e is None else None
            out[name] = {n: v for n in names if (v := default_value(cfg, n)) is not None}
        return out, fixed_engine

    def _bring_in_best(self, study: optuna.Study, fixed: List[str], plan: Any) -> None:
        """The final answer goes through the confirmation step: the best feasible trials that were not run
        in this sweep (known from the result cache, another study, an earlier run of this study) are run as
        jobs now — served from the result cache where it has them — so the confirmation sees them too."""
        top_k = int((plan.configs[0].get("confirm") or {}).get("top_k", 3))
        best = best_feasible(study, top_k)
        todo = [t for t in best if t.user_attrs.get("trial_key") not in self._run_keys and t.params]
        for i, t in enumerate(todo):
            overrides = overrides_for(self._space, t.params, fixed)
            log.info("optuna: bringing trial #%d (%s) into this sweep for the confirmation", t.number,
                     params_text(t.params))
            os.environ[ENV_OFFSET] = str(self._ran + i - (BROUGHT_IN + i))
            self.launcher.launch([overrides], initial_job_idx=BROUGHT_IN + i)

    def _evaluate(self, study: optuna.Study, storage: Any, trial: optuna.Trial, values: Dict[str, Any],
                  fixed: List[str], steps_: Steps) -> Outcome:
        """Run the trial as a Hydra job (its heartbeat beating, its measurement steps reported)."""
        with heartbeat(storage, trial._trial_id, self.conf.heartbeat_interval):
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # alive: fail_orphaned_trials
            with steps.observing(steps_):
                return self._launch(study, trial, values, fixed)

    def _told(self, ctx: SweepContext, trial: optuna.Trial, outcome: Outcome, free: bool) -> None:
        self._tag_child(ctx, trial.number, outcome)
        names = objective_names(self.conf.objective, self.conf.multi_objective)  # one per value
        value = (" " + ", ".join(f"{n}={v:.6g}" for n, v in zip(names, outcome.values, strict=True))
                 if outcome.values else "")
        why = f" — {outcome.attrs['reason']}" if outcome.state != "COMPLETE" and "reason" in outcome.attrs else ""
        where = (f" (known from {outcome.attrs['known_from']}: not measured again)" if "known_from" in outcome.attrs
                 else " (from the result cache: not counted)" if outcome.attrs.get("cached") else "")
        log.info("optuna: trial #%d %s%s%s%s", trial.number, outcome.label, value, where, why)
        if not free:
            self._ran += 1
        if outcome.attrs.get("trial_key") and "known_from" not in outcome.attrs:
            self._run_keys.add(outcome.attrs["trial_key"])

    def _launch(self, study: optuna.Study, trial: optuna.Trial, values: Dict[str, Any], fixed: List[str]) -> Outcome:
        """Run the trial's values as a Hydra job through the task function."""
        c = self.conf
        overrides = overrides_for(self._space, values, fixed)
        trial.set_user_attr("overrides", mask_config(overrides))  # stored in the study: no credentials
        os.environ[ENV_OFFSET] = str(self._ran - trial.number)  # progress shows [measured here/n_trials]
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
    def _finish(self, study: optuna.Study, ctx: SweepContext, search: Search) -> None:
        """The study's summary lines, files and MLflow entries; never raises (the trials are safe in the
        study, and the sweep must still be closed)."""
        try:
            self._report(study, ctx)
            self._summary.insert(1, f"optuna stopped: {search.stop_reason or 'interrupted'} — {search.fresh} "
                                    f"measured here, {search.free} answered from earlier results, "
                                    f"{search.pruned} pruned after a measurement step")
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

