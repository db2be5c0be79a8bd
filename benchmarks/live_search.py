"""A live check of the replay (benchmarks/search_efficiency.py): one real search vs the real grid, in one run.

    python benchmarks/live_search.py [--model mobilenet_v2] [--budget 0.3]

1. The grid over the space below (``python sweep.py -m ...``: every configuration measured, then the
   confirmation step), from an empty cache: its wall time and its confirmed best.
2. The Optuna search over the same space (``hydra/sweeper=optuna``, TPE, warm start, pruning, at most
   ``budget`` × the grid's configurations measured, stagnation stop after 6 measured trials without a
   gain), from another empty cache: its wall time to its own confirmed best.
3. Printed: both wall times, their ratio, both answers, and whether the search's confirmed best is
   the grid's, or within the grid-best's confidence interval (then it is as good an answer).

Both runs start cold (model built once beforehand, shared; conversions not shared), one after the
other on the same machine; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import host_line, run_sweep

MEASURE = ["measure.min_iters=10", "data.eval_samples=64", "data.calibration_samples=64"]
GRID = ["-m", "engine=tflite,onnx", "precision=fp32,fp16,int8", "batch_size=1,4", "threads=1,2"]
SPACE = ["-m", "hydra/sweeper=optuna", "engine=choice(tflite,onnx)", "precision=choice(fp32,fp16,int8)",
         "batch_size=choice(1,4)", "threads=choice(1,2)"]


def answer(df: pd.DataFrame) -> pd.Series | None:
    """The sweep's answer over every batch size: the fastest confirmed winner (``best``, by its confirmed
    throughput); a group with a single passing trial has no confirmation, then its best ok row counts."""
    rows = []
    if "best" in df:
        for _, r in df[df.best.fillna(False).astype(bool)].iterrows():
            rows.append((float(r.confirm_throughput_ips), True, r))
    confirmed_groups = {int(r.batch_size) for _, _, r in rows}
    ok = df[(df.status == "ok") & ~df.batch_size.isin(confirmed_groups)].dropna(subset=["throughput_ips"])
    for _, r in ok.iterrows():
        rows.append((float(r.throughput_ips), False, r))
    if not rows:
        return None
    value, was_confirmed, r = max(rows, key=lambda x: x[0])
    r = r.copy()
    r["answer_ips"], r["confirmed"] = value, was_confirmed
    return r


def label(r: pd.Series) -> str:
    return f"{r.engine} {r.precision} bs={r.batch_size} threads={r.threads}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--budget", type=float, default=0.3, help="search measurements ÷ grid configurations")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trtsweep-live-"))
    models = work / "models-cache"
    run_sweep([f"model={a.model}", "engine=tf", f"cache_dir={models}", "tracking=none", "measure.min_time_s=0",
               "measure.min_iters=1", "measure.repeats=1"], work / "warm")  # build the model once
    caches = {}
    for name in ("grid", "search"):
        caches[name] = work / f"cache-{name}"
        shutil.copytree(models, caches[name])
        for sub in ("artifacts", "results", "reference"):
            shutil.rmtree(caches[name] / sub, ignore_errors=True)
    common = [f"model={a.model}", *MEASURE, "tracking=none"]
    grid_s, grid_df, _ = run_sweep([*GRID, *common, f"cache_dir={caches['grid']}", "name=live-grid"], work / "grid")
    n = len(grid_df)
    budget = max(1, round(a.budget * n))
    search_s, search_df, out = run_sweep(
        [*SPACE, *common, f"cache_dir={caches['search']}", "name=live-search",
         f"hydra.sweeper.storage=sqlite:///{work}/optuna.db", "hydra.sweeper.study_name=live",
         f"hydra.sweeper.n_trials={budget}", "hydra.sweeper.stagnation_trials=6", "hydra.sweeper.seed=0"],
        work / "search")
    g, s = answer(grid_df), answer(search_df)
    print(host_line())
    print(f"model={a.model}: grid of {n} configurations (tflite, onnx × fp32, fp16, int8 × bs 1, 4 × threads 1, 2)")

    def said(r: pd.Series | None) -> str:
        if r is None:
            return "none (no trial passed)"
        how = (f"confirmed, 95% CI {r.confirm_ci_low:.1f}–{r.confirm_ci_high:.1f}" if r.confirmed
               else "the only passing trial of its batch size: nothing to confirm against")
        return f"{label(r)} {r.answer_ips:.1f} items/s ({how})"

    print(f"grid:   {grid_s:7.1f} s wall; answer: {said(g)}")
    stop = next((ln for ln in out.splitlines() if ln.startswith("optuna stopped:")), "optuna stopped: ?")
    print(f"search: {search_s:7.1f} s wall, {len(search_df)} job(s); {stop}")
    print(f"        answer: {said(s)}")
    print(f"search wall ÷ grid wall = {search_s / grid_s:.2f}")
    if g is None or s is None:
        print("verdict: no confirmed best on one side; nothing to compare")
        return 1
    same = label(g) == label(s)
    # the search's answer timed in the grid's own confirmation, if it was a candidate there; else its own figure
    mine = grid_df[(grid_df.engine == s.engine) & (grid_df.precision == s.precision)
                   & (grid_df.batch_size == s.batch_size) & (grid_df.threads == s.threads)]
    value = float(mine.throughput_ips.iloc[0]) if not mine.empty else float(s.answer_ips)
    low = float(g.confirm_ci_low) if g.confirmed else float(g.get("throughput_ci_low", g.answer_ips))
    within = same or value >= low
    print(f"verdict: the search's answer is {'the grid’s own' if same else 'another configuration'}; "
          f"its grid throughput {value:.1f} vs the grid-best's CI low {low:.1f} → "
          + ("as good (within the CI)" if within else "worse"))
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
