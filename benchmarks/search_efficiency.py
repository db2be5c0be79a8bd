"""How quickly does the Optuna sweeper find the grid's best feasible configuration?

Two modes:

``python benchmarks/search_efficiency.py --record``
    Measures a full grid of REAL trials on digits_cnn once (``python sweep.py -m ...``: LiteRT
    precision × num_threads × batch_size × use_xnnpack, plus ONNX Runtime precision ×
    intra_op_num_threads × batch_size) and writes its results.csv rows to
    ``benchmarks/data/grid_digits_cnn.csv``.  Takes ~10 minutes on 2 cores.

``python benchmarks/search_efficiency.py`` (default)
    Replays Optuna samplers against that CSV without measuring anything: each asked trial is
    answered with the recorded row (objective: ``throughput_ips``; infeasible when
    ``accuracy_drop`` > 0.01; skipped → pruned; failed → failed).  The search space, the
    conditional engine parameters, the sampler construction and the trial → Optuna outcome
    mapping are the sweeper's own functions, so what is measured is what ships.  For each seed
    it reports the fraction of the grid's best feasible throughput reached after 10 %, 20 % and
    30 % of the grid's trial count, averaged over seeds, and the verdict against the target
    (≥ 97 % of grid-best within 30 % of the trials).
"""

import argparse
import math
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "grid_digits_cnn.csv"
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # hydra_plugins/ and trtsweep importable from a checkout as is

PRECISIONS = "fp32,fp16,int8,int8_dynamic"
GRIDS: Dict[str, List[str]] = {}
SPACE: List[str] = []
SPACE_KEYS: set = set()
# measurement settings while recording heavier models (a ms-scale model needs fewer iterations)
RECORD_MEASURE = {"digits_cnn": [], "mobilenet_v2": ["measure.min_iters=10", "data.eval_samples=64",
                                                     "data.calibration_samples=64"]}


def configure(batch_sizes: str = "1,8,32") -> None:
    """The grid (one multirun per engine: each has its own parameters) and the same space in the Optuna
    sweeper's grammar (engine.<p> is suggested only for engines that have it)."""
    GRIDS.clear()
    GRIDS.update({
        "tflite": ["engine=tflite", f"precision={PRECISIONS}", "engine.num_threads=1,2", f"batch_size={batch_sizes}",
                   "engine.use_xnnpack=true,false"],
        "onnx": ["engine=onnx", f"precision={PRECISIONS}", "engine.intra_op_num_threads=1,2",
                 f"batch_size={batch_sizes}"],
    })
    SPACE[:] = ["engine=choice(tflite,onnx)", f"precision=choice({PRECISIONS})", f"batch_size=choice({batch_sizes})",
                "engine.num_threads=choice(1,2)", "engine.use_xnnpack=choice(true,false)",
                "engine.intra_op_num_threads=choice(1,2)"]
    SPACE_KEYS.clear()
    SPACE_KEYS.update(line.split("=", 1)[0] for line in SPACE)


configure()
KEEP = ["model", "engine", "precision", "batch_size", "engine.num_threads", "engine.use_xnnpack",
        "engine.intra_op_num_threads", "status", "reason", "throughput_ips", "latency_p50_ms", "latency_p99_ms",
        "latency_cv", "accuracy", "accuracy_drop", "top1_agreement", "host.cpu_model", "host.cores", "trial_key"]
MAX_ACCURACY_DROP = 0.01
FRACTIONS = (0.1, 0.2, 0.3)
TARGET = 0.97


# ---------------------------------------------------------------------------
# --record
def record(out: Path, model: str = "digits_cnn") -> Path:
    """Measure every grid point for real and write the rows to ``out``."""
    import pandas as pd

    frames = []
    with tempfile.TemporaryDirectory(prefix="trtsweep-grid-") as tmp:
        for engine, overrides in GRIDS.items():
            sweep_dir = Path(tmp) / f"sweep-{engine}"
            cmd = [sys.executable, str(ROOT / "sweep.py"), "-m", f"model={model}", *overrides,
                   *RECORD_MEASURE.get(model, []), "tracking=none",
                   f"cache_dir={tmp}/cache", f"hydra.sweep.dir={sweep_dir}", "name=search_efficiency"]
            print("recording:", " ".join(cmd[2:]), flush=True)
            t0 = time.time()
            subprocess.run(cmd, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
            df = pd.read_csv(sweep_dir / "results.csv")
            print(f"  {len(df)} trials in {time.time() - t0:.0f} s", flush=True)
            frames.append(df)
    grid = pd.concat(frames, ignore_index=True)
    grid = grid[[c for c in KEEP if c in grid.columns]]
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.to_csv(out, index=False)
    print(f"wrote {len(grid)} rows to {out}")
    return out


# ---------------------------------------------------------------------------
# replay
def engine_keys(engines: Sequence[str]) -> Dict[str, set]:
    """Each engine's parameters, from conf/engine/<engine>.yaml (what the sweeper composes)."""
    import yaml

    return {e: set(yaml.safe_load((ROOT / "conf" / "engine" / f"{e}.yaml").read_text())) - {"name"} for e in engines}


def _norm(value: Any) -> str:
    """One spelling for a cell or a sampled value: 1 == 1.0 == '1', True == 'true'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return text.lower() if text in ("True", "False") else text


@dataclass
class Grid:
    rows: Dict[Tuple[Tuple[str, str], ...], Dict[str, Any]]
    best: float  # the best feasible throughput of the whole grid
    near_best: int  # configurations within TARGET of it
    runner_up: float  # second-best / best
    infeasible: int

    def lookup(self, values: Dict[str, Any]) -> Dict[str, Any]:
        key = tuple(sorted((k, _norm(v)) for k, v in values.items()))
        if key not in self.rows:
            raise KeyError(f"no grid row for {dict(key)}; the replay space and the CSV disagree")
        return self.rows[key]


def load_grid(path: Path) -> Grid:
    import pandas as pd

    df = pd.read_csv(path)
    keys = engine_keys(sorted(df.engine.unique()))
    rows: Dict[Tuple[Tuple[str, str], ...], Dict[str, Any]] = {}
    for rec in df.to_dict("records"):
        engine = rec["engine"]
        ident = {"engine": engine, "precision": rec["precision"], "batch_size": rec["batch_size"]}
        ident.update({f"engine.{p}": rec[f"engine.{p}"] for p in keys[engine] if f"engine.{p}" in SPACE_KEYS})
        rows[tuple(sorted((k, _norm(v)) for k, v in ident.items()))] = rec
    feasible = df[(df.status == "ok") & (df.accuracy_drop.fillna(0) <= MAX_ACCURACY_DROP)]
    if feasible.empty:
        raise SystemExit(f"{path}: no feasible trial in the grid; record it again with --record")
    values = sorted(feasible.throughput_ips, reverse=True)
    return Grid(rows, float(values[0]), sum(v >= TARGET * values[0] for v in values),
                float(values[1] / values[0]) if len(values) > 1 else 1.0, len(df) - len(feasible))


def _as_job_result(rec: Dict[str, Any]) -> Any:
    """A recorded row as ``trtsweep.app.run_job`` returns it (a ``trtsweep.results.JobResult``)."""
    from trtsweep.results import JobResult, TrialStatus

    metrics = {k: rec[k] for k in ("throughput_ips", "latency_p50_ms", "latency_p99_ms", "accuracy", "accuracy_drop",
                                   "top1_agreement") if k in rec and rec[k] == rec[k]}
    return JobResult(TrialStatus(rec["status"]), rec.get("trial_key", ""), rec.get("reason") or None, metrics)


def replay(grid: Grid, sampler_name: str, seed: int, n_trials: int, n_distinct: Optional[int] = None,
           ) -> List[Tuple[float, int]]:
    """Run one study against the grid; per trial: (best feasible throughput so far, distinct configs so far).

    With ``n_distinct``, run until that many distinct configurations were measured (repeats cost nothing:
    the sweeper serves them from the result cache), at most ``n_trials`` trials.
    """
    import optuna

    from hydra_plugins.trtsweep_sweepers import _outcome, _space, _study
    from hydra_plugins.trtsweep_sweepers.optuna import OptunaSweeperConf

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space, _fixed = _space.split_space(_space.parse_overrides(SPACE))
    _space.attach_engine_conditions(space, engine_keys(["tflite", "onnx"]), fixed_engine=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = _study.make_sampler(sampler_name, seed=seed, n_startup_trials=OptunaSweeperConf.n_startup_trials,
                                      n_objectives=1, space=space)
        study = optuna.create_study(direction="maximize", sampler=sampler)
    best, seen, history = 0.0, set(), []
    for _ in range(n_trials):
        if n_distinct is not None and len(seen) >= n_distinct:
            break
        trial = study.ask()
        values = _space.suggest(trial, space)
        rec = grid.lookup(values)
        outcome = _outcome.trial_outcome(_as_job_result(rec), None, "throughput_ips", False, MAX_ACCURACY_DROP)
        _outcome.tell(study, trial, outcome)
        seen.add(tuple(sorted(values.items())))
        if outcome.state == "COMPLETE" and outcome.feasible:
            best = max(best, outcome.values[0])
        history.append((best, len(seen)))
    return history


def evaluate(grid: Grid, samplers: Sequence[str], seeds: int) -> List[Dict[str, Any]]:
    n = len(grid.rows)
    budgets = {f: max(1, math.ceil(f * n)) for f in FRACTIONS}
    table = []
    for name in samplers:
        per_seed = [replay(grid, name, seed, max(budgets.values())) for seed in range(seeds)]
        row: Dict[str, Any] = {"sampler": name}
        for f, k in budgets.items():
            reached = [h[k - 1][0] / grid.best for h in per_seed]
            row[f"{int(f * 100)}%"] = sum(reached) / len(reached)
            row[f"min {int(f * 100)}%"] = min(reached)
            row[f"hit {int(f * 100)}%"] = sum(r >= TARGET for r in reached) / len(reached)
            row[f"distinct {int(f * 100)}%"] = sum(h[k - 1][1] for h in per_seed) / len(per_seed)
        by_cost = [replay(grid, name, seed, 20 * n, max(budgets.values())) for seed in range(seeds)]
        for f, k in budgets.items():
            reached = [next((b for b, d in h if d >= k), h[-1][0]) / grid.best for h in by_cost]
            row[f"measured {int(f * 100)}%"] = sum(reached) / len(reached)
        table.append(row)
    return table


def print_table(grid: Grid, table: List[Dict[str, Any]], seeds: int) -> bool:
    n = len(grid.rows)
    budgets = ", ".join(f"{int(f * 100)}% = {max(1, math.ceil(f * n))}" for f in FRACTIONS)
    print(f"grid: {n} configurations ({grid.infeasible} infeasible or not ok), best feasible throughput "
          f"{grid.best:.1f} items/s; {grid.near_best} configuration(s) within {TARGET:.0%} of it, runner-up at "
          f"{grid.runner_up:.1%}; budgets (trials): {budgets}; {seeds} seeds")
    print("fraction of the grid's best feasible throughput reached (mean over seeds; min; share of seeds ≥ 97 %; "
          "distinct configurations measured):")
    print(f"{'sampler':8} " + " ".join(f"{'after ' + str(int(f * 100)) + '%':>32}" for f in FRACTIONS))
    for row in table:
        cells = [f"{row[f'{p}%']:6.1%} (min {row[f'min {p}%']:6.1%}, ≥97% {row[f'hit {p}%']:4.0%}, "
                 f"{row[f'distinct {p}%']:4.1f})" for p in (int(f * 100) for f in FRACTIONS)]
        print(f"{row['sampler']:8} " + " ".join(f"{c:>32}" for c in cells))
    print("the same, counting distinct configurations measured instead of trials (a repeat comes from the cache):")
    for row in table:
        print(f"{row['sampler']:8} " + " ".join(f"{'after ' + str(int(f * 100)) + '%: ':>14}"
                                              f"{row[f'measured {int(f * 100)}%']:6.1%}"
                                              for f in FRACTIONS))
    tpe = next(r for r in table if r["sampler"] == "tpe")
    ok = tpe["30%"] >= TARGET
    print(f"verdict: TPE reaches {tpe['30%']:.1%} of the grid-best within 30% of the trials (mean over seeds) — "
          + ("PASS" if ok else "FAIL") + f" (target ≥ {TARGET:.0%})")
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true", help="measure the grid for real and write the CSV")
    ap.add_argument("--model", default="digits_cnn", help="model of the grid (CSV: benchmarks/data/grid_<model>.csv)")
    ap.add_argument("--batch-sizes", default=None, help="grid batch sizes (default 1,8,32; mobilenet_v2: 1,4)")
    ap.add_argument("--csv", type=Path, default=None, help=f"grid CSV (default {DATA.relative_to(ROOT)})")
    ap.add_argument("--seeds", type=int, default=20, help="seeds per sampler (≥ 10)")
    ap.add_argument("--samplers", default="tpe,random", help="comma-separated sweeper sampler names")
    args = ap.parse_args(argv)
    configure(args.batch_sizes or ("1,8,32" if args.model == "digits_cnn" else "1,4"))
    args.csv = args.csv or DATA.with_name(f"grid_{args.model}.csv")
    if args.record:
        record(args.csv, args.model)
        return 0
    if not args.csv.exists():
        print(f"{args.csv} does not exist; fix: run with --record first", file=sys.stderr)
        return 2
    grid = load_grid(args.csv)
    table = evaluate(grid, [s.strip() for s in args.samplers.split(",") if s.strip()], args.seeds)
    return 0 if print_table(grid, table, args.seeds) else 1


if __name__ == "__main__":
    sys.exit(main())
