"""The harness's own time: a 6-trial sweep's wall time ÷ the work it did, for the grid and the search.

    python benchmarks/sweep_overhead.py [--model mobilenet_v2] [--modes grid,search] [--keep]

Both modes sweep the same six configurations (LiteRT × fp32, fp16, int8 × batch 1, 8), one after the
other in this run: ``grid`` with the default grid sweeper, ``search`` with ``hydra/sweeper=optuna``
(GridSampler, ``n_trials=6``: each point once; its study in a fresh SQLite storage).

Work is what the user asked to be computed: per trial ``convert_time_s`` + ``calibrate_time_s`` (only
where the trial converted; the other batch size reuses the conversion), ``measure_time_s``,
``fidelity_time_s`` (the trial's outputs on the evaluation set vs TF FP32) and ``reference_time_s``
(TF FP32's own outputs on that set: computed once, by the first trial; it is the other half of the
fidelity comparison, so it counts as work — the ratio without it is printed too), plus the
end-of-sweep confirmation (``confirmation.json``: interleaved re-measurement of the close candidates,
measurement the user asked for).  Everything else is the harness: process and Hydra start-up,
planning, TensorFlow's import in the worker, model resolve, data preparation, engine loads, MLflow,
the Optuna study, tables and plots, stopping the worker.

Each mode starts with a warm model cache (the model is built beforehand, as on any second run) and
nothing else: conversions, reference outputs, results, MLflow database and study are new.
Target: ratio ≤ 1.1 for both.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import host_line, run_sweep

TARGET = 1.1
SPACE = "tflite × fp32,fp16,int8 × bs 1,8"


def overrides(mode: str, model: str, cache: Path, work: Path) -> list[str]:
    common = [f"model={model}", "engine=tflite", f"cache_dir={cache}"]
    if mode == "grid":
        return ["-m", *common, "precision=fp32,fp16,int8", "batch_size=1,8"]
    return ["-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=6",
            f"hydra.sweeper.storage=sqlite:///{work / 'optuna.db'}", *common,
            "precision=choice(fp32,fp16,int8)", "batch_size=choice(1,8)"]


def trial_records(workdir: Path) -> tuple[list[dict], float]:
    """The sweep's trial records (by start time) and the seconds its confirmation took."""
    sweep_dir = sorted((workdir / "outputs").rglob("results.csv"), key=lambda p: p.stat().st_mtime)[-1].parent
    recs = [json.loads(p.read_text()) for p in sorted((sweep_dir / "trials").glob("*.json"))]
    confirmation = sweep_dir / "confirmation.json"
    verdicts = json.loads(confirmation.read_text()) if confirmation.exists() else []
    confirm_s = sum(v.get("time_s", 0.0) for v in verdicts)
    return sorted(recs, key=lambda r: r["started_at"]), confirm_s


def breakdown(recs: list[dict], confirm_s: float, launched: float, exited: float) -> dict[str, float]:
    """Work parts and where the rest of the wall time went (from the trial records' start/end times)."""
    parts = dict.fromkeys(("convert", "calibrate", "measure", "fidelity", "reference"), 0.0)
    in_trials = between = 0.0
    for i, r in enumerate(recs):
        m = r["metrics"]
        converted = not m.get("conversion_reused", 0)
        trial_work = {"convert": m["convert_time_s"] * converted, "calibrate": m["calibrate_time_s"] * converted,
                      "measure": m["measure_time_s"], "fidelity": m.get("fidelity_time_s", 0.0),
                      "reference": m.get("reference_time_s", 0.0)}
        for k, v in trial_work.items():
            parts[k] += v
        in_trials += (r["ended_at"] - r["started_at"]) - sum(trial_work.values())
        if i:
            between += r["started_at"] - recs[i - 1]["ended_at"]
    parts["confirmation"] = confirm_s
    return {**parts, "work": sum(parts.values()), "wall": exited - launched,
            "start-up": recs[0]["started_at"] - launched, "in trials": in_trials, "between trials": between,
            "end": exited - recs[-1]["ended_at"] - confirm_s}


def run_mode(mode: str, model: str, warm_cache: Path, root: Path) -> dict[str, float]:
    work = root / mode
    cache = work / "cache"
    shutil.copytree(warm_cache / "models", cache / "models")
    launched = time.time()
    _, df, out = run_sweep(overrides(mode, model, cache, work), work / "run")
    exited = time.time()
    (work / "sweep-output.txt").write_text(out)
    measured = df.status.isin(["ok", "accuracy_violation", "infeasible"])  # all three were fully measured
    if len(df) != 6 or not measured.all() or df.cached.any():
        raise SystemExit(f"{mode}: expected 6 measured, uncached trials:\n"
                         f"{df[['precision', 'batch_size', 'status', 'cached', 'reason']]}")
    recs, confirm_s = trial_records(work / "run")
    return breakdown(recs, confirm_s, launched, exited)


def report(mode: str, b: dict[str, float]) -> str:
    ratio = b["wall"] / b["work"]
    no_ref = b["wall"] / (b["work"] - b["reference"])
    work = " + ".join(f"{k} {b[k]:.1f}" for k in ("convert", "calibrate", "measure", "fidelity", "reference",
                                                   "confirmation"))
    rest = ", ".join(f"{k} {b[k]:.1f} s" for k in ("start-up", "in trials", "between trials", "end"))
    return (f"{mode:>6}: {work} = {b['work']:.1f} s of work; sweep wall time {b['wall']:.1f} s\n"
            f"        the rest ({b['wall'] - b['work']:.1f} s): {rest}\n"
            f"        sweep_overhead ratio = {ratio:.3f}  (target ≤ {TARGET}: "
            f"{'met' if ratio <= TARGET else 'NOT met'};"
            f" {no_ref:.3f} if the reference pass were not counted as work)")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--modes", default="grid,search", help="comma-separated: grid, search")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (sweep outputs, logs)")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trtsweep-overhead-"))
    try:
        warm = root / "warm-cache"  # build the model once (a first run builds it), nothing else is kept
        run_sweep([f"model={a.model}", "engine=tf", f"cache_dir={warm}", "tracking=none", "measure.min_time_s=0",
                   "measure.min_iters=1", "measure.repeats=1"], root / "warm")
        results = {mode: run_mode(mode, a.model, warm, root) for mode in a.modes.split(",")}
        print(host_line())
        print(f"model={a.model}: 6 trials per mode ({SPACE}), seconds")
        for mode, b in results.items():
            print(report(mode, b))
    finally:
        if a.keep:
            print(f"outputs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
