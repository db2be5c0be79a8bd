"""Is trtsweep's recommendation the truly fastest? The default sweep vs a hand-tuned loop, in one run.

    python benchmarks/speedup.py [--model mobilenet_v2] [--repeats 5]

1. The default sweep ``engine=tf,tflite,onnx precision=fp32,int8 batch_size=1`` (default thread
   budget, measurement and confirmation) — its recommended configuration and speed-up over TF FP32.
2. A hand-tuned loop over the same converted models: LiteRT and ONNX Runtime at 1 and 2 threads (or
   every core), FP32 and INT8, and TF FP32, each timed by a bare loop in this process.
3. ratio = sweep's recommended speed-up ÷ the best hand-tuned speed-up among the precisions that
   passed the accuracy constraint (target ≥ 0.95, issue 7); and the pick itself timed on the
   hand-tuned loop's stopwatch, in the same interleaved rounds, against the hand-tuned best.
4. The sweep again ``--repeats`` times (``force=true``: re-measured, conversions reused): how often the
   recommendation is the same configuration (target: every time, or a declared tie).

MobileNetV2 here has random weights (nothing is downloaded) and sample_images data has no labels,
so accuracy_drop is 1 − top-1 agreement with TF FP32.  INT8's gain depends on the CPU (VNNI): the
host line says which CPU the ratios were measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, host_line, run_sweep

sys.path.insert(0, str(ROOT / "src"))


def bare_ms(run, min_time_s: float = 0.5, warmup: int = 10) -> float:
    """Mean latency of a bare loop (ms), after a warm-up, over at least ``min_time_s``."""
    for _ in range(warmup):
        run()
    n, t0 = 0, time.perf_counter()
    while True:
        run()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time_s and n >= 20:
            return 1000.0 * elapsed / n


def hand_tuned(records: list[dict], thread_counts: list[int], x: np.ndarray, rounds: int = 5) -> list[dict]:
    """Every converted LiteRT / ONNX Runtime model of the sweep, and TF FP32, in bare loops: all loaded
    first, then timed in ``rounds`` interleaved rounds (drift hits all alike); the median round counts."""
    import onnxruntime as ort
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    rows = []
    for rec in records:
        spec, art = rec["spec"], rec.get("artifact")
        if rec["status"] not in ("ok", "accuracy_violation", "infeasible") or not art:
            continue
        passed = rec["status"] == "ok"
        if spec["engine"] == "tf":
            sig = tf.saved_model.load(art).signatures[spec["model"]["signature_key"]]  # tf: the SavedModel
            name = list(sig.structured_input_signature[1])[0]
            xt = tf.constant(x)
            rows.append({"engine": "tf", "precision": "fp32", "threads": "all", "passed": passed,
                         "run": lambda sig=sig, name=name, xt=xt: [v.numpy() for v in sig(**{name: xt}).values()]})
            continue
        for t in thread_counts:
            if spec["engine"] == "tflite":
                it = Interpreter(model_path=art, num_threads=t)
                d = it.get_input_details()[0]
                if tuple(d["shape"]) != x.shape:
                    it.resize_tensor_input(d["index"], list(x.shape))
                it.allocate_tensors()
                out = it.get_output_details()[0]["index"]

                def run(it=it, idx=d["index"], out=out):
                    it.set_tensor(idx, x)
                    it.invoke()
                    return it.get_tensor(out)
            elif spec["engine"] == "onnx":
                so = ort.SessionOptions()
                so.intra_op_num_threads = t
                sess = ort.InferenceSession(art, so, providers=["CPUExecutionProvider"])
                feed = {sess.get_inputs()[0].name: x}

                def run(sess=sess, feed=feed):
                    return sess.run(None, feed)
            else:
                continue
            rows.append({"engine": spec["engine"], "precision": spec["precision"], "threads": t, "passed": passed,
                         "run": run})
    times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for _ in range(rounds):
        for i, r in enumerate(rows):
            times[i].append(bare_ms(r["run"]))
    for i, r in enumerate(rows):
        r["ms"] = float(np.median(times[i]))
        del r["run"]
    return rows


def recommended(df) -> tuple[str, float]:
    best = df[df["best"].fillna(False).astype(bool)] if "best" in df else df.iloc[0:0]
    if best.empty:
        ok = df[df.status == "ok"].sort_values("throughput_ips", ascending=False)
        best = ok.head(1)
    r = best.iloc[0]
    label = f"{r.engine} {r.precision} threads={int(r.threads)}"
    tie = bool(r.get("tie", False))
    confirmed = r.get("confirm_speedup_vs_tf_fp32")
    sp = float(confirmed) if confirmed == confirmed and confirmed is not None else float(r.speedup_vs_tf_fp32)
    return label + (" (tie)" if tie else ""), sp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--repeats", type=int, default=5, help="repeated sweeps for the stability count")
    a = ap.parse_args()
    from trtsweep.cores import core_budget

    work = Path(tempfile.mkdtemp(prefix="trtsweep-speedup-"))
    cache = work / "cache"
    sweep_args = ["-m", f"model={a.model}", "engine=tf,tflite,onnx", "precision=fp32,int8", "batch_size=1",
                  "name=bench_speedup", f"cache_dir={cache}", "tracking=none"]
    print(host_line(), f"| core budget {core_budget()}", flush=True)
    wall, df, _ = run_sweep(sweep_args, work / "sweep0")
    label, sweep_speedup = recommended(df)
    print(f"sweep 1: {wall:.0f} s, recommends {label}: {sweep_speedup:.2f}× over TF FP32 (the sweep's own "
          f"confirmation rounds)", flush=True)

    records = [json.loads(p.read_text()) for p in sorted((work / "sweep0").rglob("trials/*.json"))]
    size = int(records[0]["report"]["model"]["inputs"][0]["shape"][1]) if records[0].get("report") else 224
    x = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    rows = hand_tuned(records, sorted({1, core_budget()}), x)
    tf_ms = next(r["ms"] for r in rows if r["engine"] == "tf")
    print("\nhand-tuned bare loops (same converted models, this process):")
    for r in sorted(rows, key=lambda r: r["ms"]):
        print(f"  {r['engine']:<6} {r['precision']:<5} threads={r['threads']!s:<3} {r['ms']:8.3f} ms  "
              f"{tf_ms / r['ms']:5.2f}× TF  {'passes' if r['passed'] else 'fails'} the accuracy constraint")
    best_hand = min((r for r in rows if r["passed"]), key=lambda r: r["ms"])
    hand_speedup = tf_ms / best_hand["ms"]
    ratio = sweep_speedup / hand_speedup
    print(f"\nbest hand-tuned (passing): {best_hand['engine']} {best_hand['precision']} threads={best_hand['threads']} "
          f"= {hand_speedup:.2f}× TF FP32")
    print(f"sweep's recommendation {label} = {sweep_speedup:.2f}× → ratio {ratio:.3f} (target ≥ 0.95)", flush=True)
    engine, precision, threads = label.replace(" (tie)", "").split()
    pick = next((r for r in rows if r["engine"] == engine and r["precision"] == precision
                 and str(r["threads"]) == threads.split("=")[1]), None)
    if pick is not None:  # the pick and the hand-tuned best on one stopwatch, in the same interleaved rounds
        print(f"the pick on the same stopwatch: {pick['ms']:.3f} ms vs the best hand-tuned {best_hand['ms']:.3f} ms "
              f"→ ratio {best_hand['ms'] / pick['ms']:.3f}", flush=True)

    picks = [label]
    for i in range(1, a.repeats):
        wall, df, _ = run_sweep(sweep_args + ["force=true"], work / f"sweep{i}")
        lab, sp = recommended(df)
        picks.append(lab)
        print(f"sweep {i + 1}: {wall:.0f} s, recommends {lab}: {sp:.2f}× over TF FP32", flush=True)
    counts = Counter(p.replace(" (tie)", "") for p in picks)
    top, n = counts.most_common(1)[0]
    ties = sum(1 for p in picks if p.endswith("(tie)"))
    print(f"\nstability: the same recommendation ({top}) in {n} of {len(picks)} sweeps; {ties} declared a tie "
          f"(target: {len(picks)} of {len(picks)}, or a declared tie)")


if __name__ == "__main__":
    main()
