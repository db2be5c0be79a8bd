"""The best configuration a sweep finds vs engine=tf precision=fp32, on one model at batch 1, in one run.

    python benchmarks/speedup.py [--model mobilenet_v2]

Sweeps engine=tf,tflite,onnx × every precision × threads (1 and all cores) and prints the ratio.
Target (issue 2): ≥ 5× for mobilenet_v2 (measured by hand on an AVX-512 VNNI CPU: TF 17.5 ms,
LiteRT INT8 1.8 ms).  INT8's advantage depends on the CPU (VNNI); the host line says which.
MobileNetV2 here has random weights (nothing is downloaded) and sample_images data has no labels,
so accuracy_drop is 1 - top-1 agreement with TF FP32; both the best passing and the fastest
overall are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, host_line, run_sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--max-accuracy-drop", type=float, default=0.01)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trtsweep-speedup-"))
    cores = os.cpu_count() or 1
    base = [f"model={a.model}", "batch_size=1", "name=bench_speedup", f"cache_dir={ROOT / 'outputs' / 'cache'}",
            f"fidelity.max_accuracy_drop={a.max_accuracy_drop}", "tracking=none", "data.eval_samples=64",
            "data.calibration_samples=64"]
    frames = []
    for engine_args in (["engine=tf"], ["engine=tflite", "precision=fp32,fp16,int8,int8_dynamic", f"engine.num_threads=1,{cores}"],
                        ["engine=onnx", "precision=fp32,fp16,int8,int8_dynamic", f"engine.intra_op_num_threads=1,{cores}"]):
        _, df, _ = run_sweep(["-m", *base, *engine_args], work)
        frames.append(df)
    import pandas as pd

    df = pd.concat(frames, ignore_index=True)
    base_row = df[(df.engine == "tf") & (df.precision == "fp32") & (df.status == "ok")].iloc[0]
    ok = df[df.status == "ok"].sort_values("throughput_ips", ascending=False)
    any_ = df[df.status.isin(["ok", "accuracy_violation"])].sort_values("throughput_ips", ascending=False)
    print(host_line())
    cols = ["engine", "precision", "status", "latency_p50_ms", "throughput_ips", "top1_agreement"]
    params = [c for c in df.columns if c.startswith("engine.") and c.endswith("threads")]
    print(df[cols + params].sort_values("throughput_ips", ascending=False).to_string(index=False))
    tf_ms = base_row.latency_p50_ms
    for label, frame in (("best passing the accuracy check", ok), ("fastest overall", any_)):
        if frame.empty:
            print(f"{label}: none")
            continue
        r = frame.iloc[0]
        print(f"{label}: engine={r.engine} precision={r.precision} p50 {r.latency_p50_ms:.3f} ms vs tf fp32 "
              f"{tf_ms:.3f} ms → speedup {r.throughput_ips / base_row.throughput_ips:.2f}× throughput, "
              f"{tf_ms / r.latency_p50_ms:.2f}× p50 (target ≥ 5×)")


if __name__ == "__main__":
    main()
