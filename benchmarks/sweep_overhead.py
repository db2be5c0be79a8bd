"""Wall time of a 6-trial sweep vs the sum of its trials' convert + calibrate + measure time.

    python benchmarks/sweep_overhead.py

Everything else (process start-up, TensorFlow import, planning, reference outputs, fidelity
evaluation, MLflow logging, tables) counts against the sweep.  The model is built once beforehand
(a warm model cache, as on any second run); conversions start cold.  Target: ratio ≤ 1.3.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import host_line, run_sweep


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_cnn")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trtsweep-overhead-"))
    cache = work / "cache"
    grid = ["-m", f"model={a.model}", "engine=tflite", "precision=fp32,fp16,int8", "batch_size=1,8",
            f"cache_dir={cache}"]
    # warm the model cache only (a first run builds the model), then drop everything else
    run_sweep([f"model={a.model}", "engine=tf", f"cache_dir={cache}", "tracking=none", "measure.min_time_s=0",
               "measure.min_iters=1", "measure.repeats=1"], work / "warm")
    for sub in ("artifacts", "results", "reference"):
        shutil.rmtree(cache / sub, ignore_errors=True)
    wall, df, _ = run_sweep(grid, work / "run")
    measured = df.status.isin(["ok", "accuracy_violation", "infeasible"])  # all three were fully measured
    assert len(df) == 6 and measured.all(), df[["precision", "batch_size", "status", "reason"]]
    converted = df[df.conversion_reused == 0]
    work_s = converted.convert_time_s.sum() + converted.calibrate_time_s.sum() + df.measure_time_s.sum()
    print(host_line())
    print(f"model={a.model}: 6 trials (tflite × fp32,fp16,int8 × bs 1,8; {len(converted)} conversions, "
          "the rest reused)")
    print(f"convert {converted.convert_time_s.sum():.1f} s + calibrate {converted.calibrate_time_s.sum():.1f} s + "
          f"measure {df.measure_time_s.sum():.1f} s = {work_s:.1f} s of trial work; sweep wall time {wall:.1f} s")
    print(f"sweep_overhead ratio = {wall / work_s:.2f}  (target ≤ 1.3: {'met' if wall / work_s <= 1.3 else 'NOT met'})")


if __name__ == "__main__":
    main()
