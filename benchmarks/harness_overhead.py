"""p50 latency measured by trtsweep's harness vs a bare hand-written loop over the SAME LiteRT
interpreter and input, in the same process, interleaved (A B A B ...) so drift hits both alike.

    python benchmarks/harness_overhead.py [--model mobilenet_v2] [--rounds 5]

Target: ratio ≤ 1.05.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, host_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--cache-dir", default=str(ROOT / "outputs" / "cache"))
    a = ap.parse_args()

    import yaml

    from trtsweep import models
    from trtsweep.config import DataConfig, MeasureConfig, ModelConfig
    from trtsweep.data import batches, load
    from trtsweep.engines.tflite import TFLiteEngine, TFLiteParams
    from trtsweep.measure import measure

    mcfg = yaml.safe_load((ROOT / "conf" / "model" / f"{a.model}.yaml").read_text())
    info = models.resolve(ModelConfig(**mcfg), a.cache_dir)
    ds = load(DataConfig(name=mcfg.get("default_data", "random"), calibration_samples=0, eval_samples=1), info)
    engine = TFLiteEngine(TFLiteParams(num_threads=1))
    out = Path(tempfile.mkdtemp())
    art = engine.convert(info, "fp32", None, out).artifact
    runner = engine.load(Path(art), info, "fp32", 1)
    batch = batches(ds.evaluation, 1)[0]
    prepared = runner.prepare(batch)

    # the bare loop: the same interpreter, the same input, nothing but set/invoke/get
    it = runner.interpreter
    in_idx = [idx for idx, _ in prepared]
    x = [arr for _, arr in prepared]
    out_idx = [d["index"] for d in it.get_output_details()]

    def bare(n: int) -> np.ndarray:
        lat = np.empty(n)
        clock = time.perf_counter_ns
        for i in range(n):
            t0 = clock()
            for idx, arr in zip(in_idx, x, strict=True):
                it.set_tensor(idx, arr)
            it.invoke()
            for idx in out_idx:
                it.get_tensor(idx)
            lat[i] = clock() - t0
        return lat / 1e6

    cfg = MeasureConfig(warmup_iters=0, min_iters=a.iters, min_time_s=0.0, repeats=1)
    bare(20)  # warm-up both paths
    measure(runner.run, prepared, 1, MeasureConfig(warmup_iters=20, min_iters=1, min_time_s=0, repeats=1))
    harness_p50, bare_p50 = [], []
    for r in range(a.rounds):  # ABBA order: neither path always runs first
        pair = [lambda: harness_p50.append(np.percentile(measure(runner.run, prepared, 1, cfg).latencies_ms, 50)),
                lambda: bare_p50.append(np.percentile(bare(a.iters), 50))]
        for step in (pair if r % 2 == 0 else pair[::-1]):
            step()
    h, b = float(np.median(harness_p50)), float(np.median(bare_p50))
    print(host_line())
    print(f"model={a.model} tflite fp32 bs=1 num_threads=1, {a.rounds} interleaved rounds × {a.iters} iterations")
    print(f"p50 trtsweep harness: {h:.4f} ms   p50 bare loop: {b:.4f} ms")
    print(f"harness_overhead ratio = {h / b:.3f}  (target ≤ 1.05: {'met' if h / b <= 1.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
