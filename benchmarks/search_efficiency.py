"""How quickly, in wall-clock time, does the Optuna search find the grid's best feasible configuration?

``python benchmarks/search_efficiency.py --record --model M``
    Measures a full grid of REAL trials once (one ``python sweep.py -m ...`` multirun, ``tracking=none``,
    a fresh cache in a temporary folder, the end-of-sweep confirmation off) and writes
    ``benchmarks/data/grid_<M>.csv``: per grid point its results.csv metrics plus what it cost, read from
    the trial's cached result (``<cache>/results/<trial_key>.json``): ``convert_time_s``,
    ``calibrate_time_s`` (the conversion's, also on rows that reused it), ``load_time_s``,
    ``measure_time_s``, ``fidelity_time_s``, ``conversion_reused``, ``conversion_id``
    (``TrialSpec.conversion_key()``), ``fidelity_id`` (what the worker's fidelity cache is keyed on),
    ``trial_wall_s`` (the runner's start → end of the trial), ``overhead_s`` (the rest of it: worker
    round trip, data and reference outputs, results), ``timed_repeats``, ``repeat_means_ms`` and
    ``repeat_trimmed_ms`` (JSON lists), ``step_end_s`` (a JSON list: seconds from the start of the warm-up
    to the end of each timed repeat), ``warmup_iters``, ``sweep_overhead_s`` (the multirun's wall time
    outside every trial: start-up, planning, model build, results table; the same on every row), the
    1-minute load average before and after the recording, and ``order`` (the multirun's natural order).
    The grid: engine=tf,tflite,onnx × precision × batch size × the engines' thread (and XNNPACK)
    settings; ``engine=tf`` runs only fp32 (the TF FP32 baseline, one per batch size; its other
    precisions are planned as skipped and cost nothing).

``python benchmarks/search_efficiency.py [--model M|all] [--seeds 20]`` (default: all recorded grids)
    Replays searches against the recorded grids on a fake clock, measuring nothing.  The search is the
    sweeper's own loop, ``hydra_plugins/trtsweep_sweepers/_search.Search``, with the sweeper's defaults
    (``OptunaSweeperConf``: sampler, start-up trials, warm start, pruner), its study opened by
    ``_study.open_study`` (in memory) and its clock the fake one; only the time budget (30 % of the grid's
    wall time) replaces ``n_trials``.  Each trial is charged its recorded cost:

    * the conversion (``convert_time_s + calibrate_time_s``) once per ``conversion_id`` — a later trial
      that reuses it pays load + measurement only, as the artifact cache makes it;
    * ``overhead_s + load_time_s`` per trial run — except that a row's overhead above the grid's median
      is moved to where it belongs: on the sweep's first measured trial (data set, TF reference outputs)
      to the start-up, on a trial that converted (the conversion's untimed part) to its conversion;
    * the measurement step by step, as recorded: step k (the k-th timed repeat, reporting batch ÷ that
      repeat's trimmed mean latency, as the worker does) ends ``step_end_s[k]`` after the warm-up began,
      so the warm-up is paid with step 1; a pruned trial stops being charged at the step where it was
      pruned (and pays no fidelity).  For a grid recorded without ``step_end_s`` the step ends are
      approximated: the warm-up share (``warmup_iters`` × the mean repeat latency) first, then
      ``(measure_time_s − warm-up share) / timed_repeats`` per repeat — every repeat charged the same,
      although a repeat lasts max(``min_iters`` iterations, ``min_time_s``) of its own latencies;
    * the fidelity check (``fidelity_time_s``, the largest of its group) once per ``fidelity_id``, when a
      trial finishes: the worker caches it per converted artifact and output-relevant settings;
    * a failed trial its ``trial_wall_s``; a skipped one nothing; a configuration already measured in
      the same replay nothing (the result cache serves it);
    * and every strategy the start-up (``sweep_overhead_s`` + the first trial's extra) at time zero.

    The grid's total wall time is the start-up + the natural order replayed under the same rules
    (printed beside the recording's own wall time).  Reported, for the Optuna search as shipped, random
    sampling (a random order of the grid, no repeats) and the grid in its natural order: the share of
    the grid's best feasible throughput (status ok, ``accuracy_drop`` ≤ 0.01) reached after 10 %, 20 %
    and 30 % of the grid's total wall time, median and worst over the seeds, and whether the median
    reached the grid-best's confidence interval (found ≥ its ``throughput_ci_low``); also the same shares
    with the start-up off the clock, and an ablation (the shipped loop with Optuna's RandomSampler).
    Target: the search's median does so by 30 %, on every grid; exit code 0 when met on all, 1 otherwise.

Recording all three grids took ~51 min of machine time on a 2-core host (digits_cnn ~11, mobilenet_v2
~18, resnet50 ~23 min); resnet50 runs with batch 1,2 and fewer iterations (``MODELS``).
"""

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # hydra_plugins/ and trtsweep importable from a checkout as is

PRECISIONS = "fp32,fp16,int8,int8_dynamic"
ENGINES = "tf,tflite,onnx"


@dataclass(frozen=True)
class Profile:
    batch_sizes: str
    settings: Tuple[str, ...] = ()  # measurement and data settings while recording (fewer iterations when slow)


# Three profiles: a ms-scale model (inference cheap, conversion a few seconds), a mobile CNN, and a heavy one
# (conversions and calibration of minutes, ~0.1-1 s per inference: few iterations, small eval set).
MODELS: Dict[str, Profile] = {
    "digits_cnn": Profile("1,8,32"),
    "mobilenet_v2": Profile("1,4", ("measure.min_iters=10", "data.eval_samples=64", "data.calibration_samples=64")),
    "resnet50": Profile("1,2", ("measure.warmup_iters=2", "measure.min_iters=3", "measure.min_time_s=0.5",
                                "measure.max_repeats=5", "data.eval_samples=32", "data.calibration_samples=32")),
}
IDENT = ["engine", "precision", "batch_size", "engine.num_threads", "engine.use_xnnpack",
         "engine.intra_op_num_threads"]
KEEP = ["order", "model", *IDENT, "threads", "status", "reason", "throughput_ips", "throughput_ci_low",
        "throughput_ci_high", "latency_p50_ms", "latency_p99_ms", "latency_cv", "unstable", "accuracy",
        "accuracy_drop", "top1_agreement", "convert_time_s", "calibrate_time_s", "load_time_s", "measure_time_s",
        "fidelity_time_s", "conversion_reused", "conversion_id", "fidelity_id", "trial_wall_s", "overhead_s",
        "timed_repeats", "repeat_means_ms", "repeat_trimmed_ms", "step_end_s", "warmup_iters", "sweep_overhead_s",
        "recording_wall_s", "load_avg_before", "load_avg_after", "host.cpu_model", "host.cores", "trial_key"]
MAX_ACCURACY_DROP = 0.01
FRACTIONS = (0.1, 0.2, 0.3)


def grid_overrides(profile: Profile) -> List[str]:
    """One multirun over every engine; engine.<p> applies only to the engines that have it."""
    return [f"engine={ENGINES}", f"precision={PRECISIONS}", f"batch_size={profile.batch_sizes}",
            "engine.num_threads=1,2", "engine.use_xnnpack=true,false", "engine.intra_op_num_threads=1,2"]


def search_space(profile: Profile) -> List[str]:
    """The same space in the Optuna sweeper's grammar."""
    return [f"engine=choice({ENGINES})", f"precision=choice({PRECISIONS})", f"batch_size=choice({profile.batch_sizes})",
            "engine.num_threads=choice(1,2)", "engine.use_xnnpack=choice(true,false)",
            "engine.intra_op_num_threads=choice(1,2)"]


# ---------------------------------------------------------------------------
# --record
def _costs(rec: Dict[str, Any]) -> Dict[str, Any]:
    """The cost columns of one trial, from its cached result JSON."""
    from trtsweep.config import TrialSpec
    from trtsweep.identity import digest

    spec = TrialSpec.from_dict(rec["spec"])
    m = rec.get("metrics") or {}
    conversion_id = spec.conversion_key()
    settings = {k: v for k, v in spec.engine_params.items() if "thread" not in k}  # as worker._fidelity keys it
    out: Dict[str, Any] = {
        "conversion_id": conversion_id, "fidelity_id": digest([conversion_id, settings])[:16],
        "trial_wall_s": float(rec.get("ended_at", 0.0)) - float(rec.get("started_at", 0.0)),
        "repeat_means_ms": json.dumps((rec.get("report") or {}).get("repeat_means_ms") or []),
        "repeat_trimmed_ms": json.dumps((rec.get("report") or {}).get("repeat_trimmed_ms") or []),
        "step_end_s": json.dumps((rec.get("report") or {}).get("step_end_s") or []),
        "warmup_iters": spec.measure.warmup_iters,
    }
    for k in ("convert_time_s", "calibrate_time_s", "load_time_s", "measure_time_s", "fidelity_time_s",
              "conversion_reused", "throughput_ci_low", "throughput_ci_high", "timed_repeats"):
        if k in m:
            out[k] = m[k]
    if m:
        parts = (0.0 if m.get("conversion_reused") else m.get("convert_time_s", 0.0) + m.get("calibrate_time_s", 0.0))
        parts += sum(m.get(k, 0.0) for k in ("load_time_s", "measure_time_s", "fidelity_time_s"))
        out["overhead_s"] = max(0.0, out["trial_wall_s"] - parts)
    return out


def record(out: Path, model: str, keep: Optional[Path] = None) -> Path:
    """Measure every grid point of ``model`` for real and write the rows with their costs to ``out``."""
    import pandas as pd

    profile = MODELS[model]
    tmp = Path(tempfile.mkdtemp(prefix=f"trtsweep-grid-{model}-"))
    try:
        sweep_dir = tmp / "sweep"
        cmd = [sys.executable, str(ROOT / "sweep.py"), "-m", f"model={model}", *grid_overrides(profile),
               *profile.settings, "tracking=none", "confirm.enabled=false", f"cache_dir={tmp}/cache",
               f"hydra.sweep.dir={sweep_dir}", "name=search_efficiency"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("TRTSWEEP_CACHE_DIR", None)
        print("recording:", " ".join(cmd[2:]), flush=True)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
        df = pd.read_csv(sweep_dir / "results.csv")
        df.insert(0, "order", range(len(df)))
        costs = []
        for key in df.trial_key:
            path = tmp / "cache" / "results" / f"{key}.json"
            costs.append(_costs(json.loads(path.read_text())) if path.exists() else {})
        cost = pd.DataFrame(costs, index=df.index)
        df = df.drop(columns=[c for c in cost.columns if c in df.columns]).join(cost)
        df["sweep_overhead_s"] = wall - df.trial_wall_s.fillna(0).sum()
        df["recording_wall_s"] = wall
        df["load_avg_before"], df["load_avg_after"] = load_before, load_after
        print(f"  {len(df)} grid points in {wall:.0f} s (1-min load average {load_before:.1f} before, "
              f"{load_after:.1f} after)", flush=True)
        if keep is not None:
            shutil.copytree(tmp / "cache" / "results", keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    grid = df[[c for c in KEEP if c in df.columns]]
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.to_csv(out, index=False)
    print(f"wrote {len(grid)} rows to {out}")
    return out


# ---------------------------------------------------------------------------
# replay
def _norm(value: Any) -> str:
    """One spelling for a cell or a sampled value: 1 == 1.0 == '1', True == 'true', NaN == ''."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return text.lower() if text in ("True", "False") else text


def engine_keys(engines: Sequence[str]) -> Dict[str, set]:
    """Each engine's parameters, from conf/engine/<engine>.yaml (what the sweeper composes)."""
    import yaml

    return {e: set(yaml.safe_load((ROOT / "conf" / "engine" / f"{e}.yaml").read_text())) - {"name"} for e in engines}


def _num(rec: Dict[str, Any], key: str) -> float:
    v = rec.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else 0.0


def feasible(rec: Dict[str, Any]) -> bool:
    return rec["status"] == "ok" and _num(rec, "accuracy_drop") <= MAX_ACCURACY_DROP


@dataclass
class Grid:
    model: str
    profile: Profile
    rows: List[Dict[str, Any]]  # natural order
    by_key: Dict[Tuple[Tuple[str, str], ...], Dict[str, Any]]
    best: Dict[str, Any]  # the best feasible row
    fidelity_cost: Dict[str, float]  # fidelity_id -> seconds (the largest of its rows: the one that computed it)
    conversion_extra: Dict[str, float] = field(default_factory=dict)  # conversion_id -> its untimed share (s)
    startup_extra_s: float = 0.0  # the first trial's untimed excess (data set, TF reference outputs)
    total_s: float = 0.0  # the grid's total wall time (set by load_grid: natural order replayed + sweep overhead)

    @property
    def best_tput(self) -> float:
        return float(self.best["throughput_ips"])

    @property
    def best_ci_low(self) -> float:
        return float(self.best["throughput_ci_low"])

    @property
    def sweep_overhead_s(self) -> float:
        return _num(self.rows[0], "sweep_overhead_s")

    @property
    def start_s(self) -> float:
        """What every strategy pays before its first trial."""
        return self.sweep_overhead_s + self.startup_extra_s

    def lookup(self, values: Dict[str, Any]) -> Dict[str, Any]:
        key = tuple(sorted((k, _norm(v)) for k, v in values.items()))
        if key not in self.by_key:
            raise KeyError(f"no grid row for {dict(key)}; the replay space and the CSV disagree")
        return self.by_key[key]


def _space_keys(profile: Profile) -> set:
    return {line.split("=", 1)[0] for line in search_space(profile)}


def row_values(rec: Dict[str, Any], keys: Dict[str, set], space_keys: set) -> Dict[str, Any]:
    """The search's parameter values of a grid row (engine.<p> only for the engine that has it)."""
    engine = rec["engine"]
    ident = {"engine": engine, "precision": rec["precision"], "batch_size": int(rec["batch_size"])}
    for p in sorted(keys[engine]):
        name = f"engine.{p}"
        if name in space_keys and name in rec:
            v = rec[name]
            ident[name] = (str(v).lower() == "true") if p == "use_xnnpack" else int(v)
    return ident


def load_grid(path: Path, model: str) -> Grid:
    import pandas as pd

    profile = MODELS[model]
    df = pd.read_csv(path).sort_values("order")
    recs = df.to_dict("records")
    keys = engine_keys(sorted(df.engine.unique()))
    space_keys = _space_keys(profile)
    by_key = {}
    for rec in recs:
        rec["values"] = row_values(rec, keys, space_keys)
        rec["key"] = tuple(sorted((k, _norm(v)) for k, v in rec["values"].items()))
        for col, name in (("repeat_means_ms", "repeats"), ("repeat_trimmed_ms", "trimmed"),
                          ("step_end_s", "step_end_s")):
            rec[name] = json.loads(rec[col]) if isinstance(rec.get(col), str) else []
        rec["step_ms"] = rec["trimmed"] or rec["repeats"]  # what a step reports: batch ÷ the repeat's trimmed mean
        by_key[rec["key"]] = rec
    ok = [r for r in recs if feasible(r)]
    if not ok:
        raise SystemExit(f"{path}: no feasible trial in the grid; record it again with --record")
    fidelity_cost: Dict[str, float] = {}
    for r in recs:
        if isinstance(r.get("fidelity_id"), str):
            fidelity_cost[r["fidelity_id"]] = max(fidelity_cost.get(r["fidelity_id"], 0.0), _num(r, "fidelity_time_s"))
    grid = Grid(model, profile, recs, by_key, max(ok, key=lambda r: r["throughput_ips"]), fidelity_cost)
    split_overhead(grid)
    natural = replay_order(grid, recs)
    grid.total_s = natural.now
    return grid


def split_overhead(grid: Grid) -> None:
    """Move the untimed work that belongs to the first trial of a sweep or of a conversion out of that row:
    a row's ``overhead_s`` above the grid's median is the data set and TF reference outputs on the first
    measured trial (→ start-up, paid once by every strategy) and, on the trial that converted, the
    conversion's untimed part (artifact report, calibration data; → paid with the conversion)."""
    measured = [r for r in grid.rows if r["status"] in ("ok", "accuracy_violation")]
    if not measured:
        return
    base = statistics.median(_num(r, "overhead_s") for r in measured)
    for i, r in enumerate(measured):
        r["charged_overhead_s"] = min(_num(r, "overhead_s"), base)
        extra = max(0.0, _num(r, "overhead_s") - base)
        if i == 0:
            grid.startup_extra_s = extra
        elif not _num(r, "conversion_reused"):
            grid.conversion_extra[r["conversion_id"]] = extra
        else:
            r["charged_overhead_s"] = _num(r, "overhead_s")


def step_ends(rec: Dict[str, Any]) -> List[float]:
    """Seconds from the start of the measurement (warm-up included) to the end of each timed repeat: as
    recorded (``step_end_s``), or, for a grid recorded without it, the approximation: the warm-up share
    (``warmup_iters`` × the mean repeat latency) first, then ``(measure_time_s − warm-up) / repeats`` each."""
    if rec["step_end_s"]:
        return list(rec["step_end_s"])
    means, measure_s = rec["repeats"], _num(rec, "measure_time_s")
    if not means:
        return []
    warm = min(measure_s, _num(rec, "warmup_iters") * statistics.fmean(means) / 1000.0)
    step = (measure_s - warm) / len(means)
    return [warm + step * k for k in range(1, len(means) + 1)]


NEVER_PRUNE: Callable[[int, float], bool] = lambda step, value: False  # noqa: E731 - a constant


@dataclass
class Ledger:
    """One replay: the fake clock and what it has paid for (the artifact, fidelity and result caches)."""

    grid: Grid
    now: float = 0.0
    converted: set = field(default_factory=set)
    checked: set = field(default_factory=set)  # fidelity ids
    measured: Dict[Tuple, Dict[str, Any]] = field(default_factory=dict)
    best: float = 0.0  # best feasible throughput finished so far
    history: List[Tuple[float, float]] = field(default_factory=list)  # (time, best) after each finished trial
    trials: int = 0
    pruned: int = 0
    stop_reason: str = ""
    done: List[float] = field(default_factory=list)  # when each fresh measurement finished

    def __post_init__(self) -> None:
        self.now = self.grid.start_s  # start-up, planning, model build, reference: every strategy pays it
        self.history.append((self.now, 0.0))

    def clock(self) -> float:
        return self.now

    def play(self, rec: Dict[str, Any], report: Callable[[int, float], bool] = NEVER_PRUNE) -> Tuple[str, int]:
        """Charge ``rec`` as a fresh run; ``report(step, throughput)`` after each timed repeat (True: prune).
        Returns (``skipped`` | ``failed`` | ``pruned`` | ``done``, steps run)."""
        self.trials += 1
        status = rec["status"]
        if status == "skipped":
            return "skipped", 0
        if status not in ("ok", "accuracy_violation"):
            self.now += _num(rec, "trial_wall_s")
            return "failed", 0
        self.now += rec.get("charged_overhead_s", _num(rec, "overhead_s")) + _num(rec, "load_time_s")
        if rec["conversion_id"] not in self.converted:
            self.now += _num(rec, "convert_time_s") + _num(rec, "calibrate_time_s")
            self.now += self.grid.conversion_extra.get(rec["conversion_id"], 0.0)
            self.converted.add(rec["conversion_id"])
        ends = step_ends(rec)
        batch = float(rec["batch_size"])
        for k, (end, mean_ms) in enumerate(zip(ends, rec["step_ms"], strict=True), start=1):
            self.now += end - (ends[k - 2] if k > 1 else 0.0)
            if report(k, batch / (mean_ms / 1000.0)):
                self.pruned += 1
                self.history.append((self.now, self.best))
                return "pruned", k
        self.now += max(0.0, _num(rec, "measure_time_s") - (ends[-1] if ends else 0.0))
        if rec["fidelity_id"] not in self.checked:
            self.now += self.grid.fidelity_cost.get(rec["fidelity_id"], 0.0)
            self.checked.add(rec["fidelity_id"])
        self.measured[rec["key"]] = rec
        self.done.append(self.now)
        self.finish(rec)
        return "done", len(ends)

    def finish(self, rec: Dict[str, Any]) -> None:
        if feasible(rec):
            self.best = max(self.best, float(rec["throughput_ips"]))
        self.history.append((self.now, self.best))

    def best_at(self, t: float) -> float:
        return max((b for when, b in self.history if when <= t), default=0.0)


def replay_order(grid: Grid, order: Sequence[Dict[str, Any]]) -> Ledger:
    """Measure the rows in this order (a grid sweep): no pruning, no repeats."""
    ledger = Ledger(grid)
    for rec in order:
        ledger.play(rec)
    return ledger


def replay_random(grid: Grid, seed: int) -> Ledger:
    order = list(grid.rows)
    random.Random(seed).shuffle(order)
    return replay_order(grid, order)


def _as_job_result(rec: Dict[str, Any], status: Optional[str] = None, reason: Optional[str] = None) -> Any:
    """A recorded row as ``trtsweep.app.run_job`` returns it (a ``trtsweep.results.JobResult``)."""
    from hydra_plugins.trtsweep_sweepers._outcome import METRIC_ATTRS
    from trtsweep.results import JobResult, TrialStatus

    metrics = {} if status else {k: rec[k] for k in METRIC_ATTRS if k in rec and rec[k] == rec[k]}
    why = reason or (rec.get("reason") if isinstance(rec.get("reason"), str) else None)
    return JobResult(TrialStatus(status or rec["status"]), rec.get("trial_key", "") or "", why, metrics)


def outcome_of(rec: Dict[str, Any], status: Optional[str] = None, reason: Optional[str] = None) -> Any:
    from hydra_plugins.trtsweep_sweepers import _outcome

    return _outcome.trial_outcome(_as_job_result(rec, status, reason), None, "throughput_ips", False,
                                  MAX_ACCURACY_DROP)


def build_space(grid: Grid) -> List[Any]:
    from hydra_plugins.trtsweep_sweepers import _space

    space, _fixed = _space.split_space(_space.parse_overrides(search_space(grid.profile)))
    _space.attach_engine_conditions(space, engine_keys(ENGINES.split(",")), fixed_engine=None)
    return space


_DEFAULTS: Dict[str, Dict[str, Any]] = {}


def engine_defaults(space: Sequence[Any]) -> Dict[str, Dict[str, Any]]:
    """engine → {search parameter → its value in that engine's composed default config}, as the sweeper's
    warm start reads them (``_impl._engine_defaults``), composed with Hydra's compose API from conf/."""
    if not _DEFAULTS:
        from hydra import compose, initialize_config_dir

        from hydra_plugins.trtsweep_sweepers._warm import default_value

        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            for e in ENGINES.split(","):
                cfg = compose("config", overrides=[f"engine={e}"])
                _DEFAULTS[e] = {p.name: v for p in space if (v := default_value(cfg, p.name)) is not None}
    return _DEFAULTS


def replay_search(grid: Grid, seed: int, budget_s: float, sampler: str = "") -> Ledger:
    """The shipped search (``_search.Search`` with the sweeper's default settings: sampler, n_startup_trials,
    warm start, confidence-bound pruner, same-conversion neighbours) against the grid on the fake clock, until
    ``budget_s``.  The study is opened as the sweeper opens it (``_study.open_study``, here in memory).
    ``sampler``: another sampler name than the sweeper's default (an ablation)."""
    import optuna

    from hydra_plugins.trtsweep_sweepers import _prune, _search, _study, _warm
    from hydra_plugins.trtsweep_sweepers.optuna import OptunaSweeperConf

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    conf = OptunaSweeperConf()
    space = build_space(grid)
    ledger = Ledger(grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler_obj = _study.make_sampler(sampler or conf.sampler, seed, conf.n_startup_trials, 1, space)
        study = _study.open_study(optuna.storages.InMemoryStorage(), f"replay-{grid.model}-{seed}", sampler_obj,
                                  ["maximize"], ["throughput_ips"])
    pruner = _prune.ConfidenceBoundPruner(margin=conf.prune_margin) if conf.pruner == "confidence" else None

    def evaluate(trial: Any, values: Dict[str, Any], steps: Any) -> Any:
        rec = grid.lookup(values)
        why: List[str] = []

        def report(step: int, value: float) -> bool:
            reason = steps.report(step, value)
            if reason:
                why.append(reason)
            return bool(reason)

        state, _ = ledger.play(rec, report)
        return outcome_of(rec, "pruned", why[0]) if state == "pruned" else outcome_of(rec)

    settings = _search.SearchSettings(n_trials=10 * len(grid.rows), timeout=max(0.0, budget_s - ledger.now),
                                      stagnation_trials=conf.stagnation_trials, stagnation_s=conf.stagnation_s,
                                      seed=seed)
    search = _search.Search(study, space, settings, evaluate, pruner=pruner, cheap=_warm.same_conversion,
                            clock=ledger.clock)
    if conf.warm_start:
        search.warm_start(_warm.first_configs(space, engine_defaults(space), None), [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ledger.stop_reason = search.run()
    return ledger


# ---------------------------------------------------------------------------
# report
@dataclass
class Summary:
    name: str
    shares: Dict[float, List[float]]  # fraction of the grid's wall time -> share of the grid-best, per seed
    trial_shares: Dict[float, List[float]]  # the same on trial time only (start-up off the clock and the total)
    measured: List[int]  # configurations fully measured by the largest budget, per seed
    pruned: List[int]  # trials pruned after a measurement step by then


def summarize(name: str, grid: Grid, ledgers: Sequence[Ledger]) -> Summary:
    start, total = grid.start_s, grid.total_s
    shares = {f: [lg.best_at(f * total) / grid.best_tput for lg in ledgers] for f in FRACTIONS}
    trial = {f: [lg.best_at(start + f * (total - start)) / grid.best_tput for lg in ledgers] for f in FRACTIONS}
    last = max(FRACTIONS) * total
    return Summary(name, shares, trial, [sum(t <= last for t in lg.done) for lg in ledgers],
                   [lg.pruned for lg in ledgers])


def evaluate(grid: Grid, seeds: int) -> List[Summary]:
    budget = max(FRACTIONS) * grid.total_s
    return [
        summarize("optuna search (as shipped)", grid, [replay_search(grid, s, budget) for s in range(seeds)]),
        summarize("random order", grid, [replay_random(grid, s) for s in range(seeds)]),
        summarize("grid, natural order", grid, [replay_order(grid, grid.rows)]),
        summarize("search, random sampler (*)", grid, [replay_search(grid, s, budget, "random") for s in range(seeds)]),
    ]


def _label(rec: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in rec["values"].items())


def print_grid(grid: Grid, table: Sequence[Summary], seeds: int) -> bool:
    rows = grid.rows
    n_ok = sum(feasible(r) for r in rows)
    r0 = rows[0]
    ci_share = grid.best_ci_low / grid.best_tput
    within = sum(feasible(r) and r["throughput_ips"] >= grid.best_ci_low for r in rows)
    print(f"\n== {grid.model}: {len(rows)} grid points ({n_ok} feasible, "
          f"{sum(r['status'] == 'skipped' for r in rows)} skipped), {len({r['conversion_id'] for r in rows} - {None})} "
          f"conversions; recorded {_num(r0, 'recording_wall_s'):.0f} s wall (1-min load average "
          f"{_num(r0, 'load_avg_before'):.1f} before, {_num(r0, 'load_avg_after'):.1f} after)")
    print(f"   total wall time {grid.total_s:.0f} s = start-up {grid.start_s:.0f} s (sweep overhead "
          f"{grid.sweep_overhead_s:.0f} s, first trial's data and reference {grid.startup_extra_s:.0f} s) + the "
          f"trials in natural order replayed {grid.total_s - grid.start_s:.0f} s (as recorded: "
          f"{sum(_num(r, 'trial_wall_s') for r in rows):.0f} s)")
    print(f"   grid-best feasible: {_label(grid.best)} — {grid.best_tput:.4g} items/s (95% CI "
          f"{grid.best_ci_low:.4g}–{float(grid.best['throughput_ci_high']):.4g}: reached at ≥ {ci_share:.1%}); "
          f"{within} configuration(s) within it")
    budgets = "  ".join(f"{int(f * 100)}% = {f * grid.total_s:.0f} s" for f in FRACTIONS)
    print(f"   share of the grid-best reached after a share of the grid's wall time ({budgets}); "
          f"median / worst over {seeds} seeds; * = median within the grid-best's CI")
    head = "".join(f"{'after ' + str(int(f * 100)) + '%':>22}" for f in FRACTIONS)
    print(f"   {'strategy':28}{head}{'measured / pruned by 30%':>28}{'seeds in CI by 30%':>20}")
    for s in table:
        cells = ""
        for f in FRACTIONS:
            med, worst = statistics.median(s.shares[f]), min(s.shares[f])
            mark = "*" if med * grid.best_tput >= grid.best_ci_low else " "
            cells += f"{f'{med:6.1%}{mark} / {worst:6.1%}':>22}"
        hits = sum(v * grid.best_tput >= grid.best_ci_low for v in s.shares[max(FRACTIONS)])
        print(f"   {s.name:28}{cells}{f'{statistics.median(s.measured):.0f} / {statistics.median(s.pruned):.0f}':>28}"
              f"{f'{hits}/{len(s.measured)}':>20}")
    print("   (*) an ablation: the shipped loop (warm start, pruning, cheap neighbours) with Optuna's RandomSampler")
    print("   trial time only (the start-up off the clock and the total), median: " + "; ".join(
        f"{t.name.split(' (')[0]} " + "/".join(f"{statistics.median(t.trial_shares[f]):.0%}" for f in FRACTIONS)
        for t in table))
    search = table[0]
    med = statistics.median(search.shares[max(FRACTIONS)])
    ok = med * grid.best_tput >= grid.best_ci_low
    print(f"verdict {grid.model}: the search's median reaches {med:.1%} of the grid-best by "
          f"{max(FRACTIONS):.0%} of the grid's wall time; the grid-best's CI starts at {ci_share:.1%} — "
          + ("MET" if ok else "NOT MET"))
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all", help=f"one of {', '.join(MODELS)}, or all (default)")
    ap.add_argument("--record", action="store_true", help="measure the grid for real and write its CSV")
    ap.add_argument("--seeds", type=int, default=20, help="seeds of the search and of random sampling")
    args = ap.parse_args(argv)
    models = list(MODELS) if args.model == "all" else [args.model]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"--model {unknown[0]} is unknown; fix: one of {', '.join(MODELS)}, or all", file=sys.stderr)
        return 2
    if args.record:
        for m in models:
            record(DATA / f"grid_{m}.csv", m)
        return 0
    from _common import host_line

    print(host_line() + f" | 1-min load average now {os.getloadavg()[0]:.1f} (replay only: nothing is measured)")
    ok = True
    for m in models:
        path = DATA / f"grid_{m}.csv"
        if not path.exists():
            print(f"{path} does not exist; fix: python benchmarks/search_efficiency.py --record --model {m}",
                  file=sys.stderr)
            return 2
        grid = load_grid(path, m)
        ok = print_grid(grid, evaluate(grid, args.seeds), args.seeds) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
