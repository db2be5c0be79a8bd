"""Issue 7 end to end, on real engines: one core budget across engines, engine parameters only where
they exist, a cache that re-measures a changed model, and a confirmation that fixes a wrong order."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from trtsweep import cores

pytestmark = pytest.mark.slow

THREAD_PARAM = {"tf": "intra_op_threads", "tflite": "num_threads", "onnx": "intra_op_num_threads"}


def test_threads_grid_measures_every_engine_at_each_budget(sweep):
    res = sweep("-m", "engine=tf,tflite,onnx", "threads=1,2", "confirm.rounds=3")
    assert res.returncode == 0, res.stderr[-3000:]
    parents, children = sweep.runs()
    assert len(children) == 6 and all(c.data.tags["status"] == "ok" for c in children)
    budget = cores.core_budget()
    seen = set()
    for c in children:
        p = c.data.params
        threads = int(p["threads"])
        seen.add((p["engine"], threads))
        assert int(p[f"engine.{THREAD_PARAM[p['engine']]}"]) == threads  # the resolved value, never 0/-1
        assert len(p["core_set"].split(",")) == min(threads, budget)
        assert {"throughput_ci_low", "throughput_ci_high"} <= set(c.data.metrics)
        m = c.data.metrics
        assert m["throughput_ci_low"] <= m["throughput_ips"] <= m["throughput_ci_high"]
    assert seen == {(e, t) for e in THREAD_PARAM for t in (1, 2)}

    # the confirmed winner: tagged on exactly one child and on the parent, reproducible from best.yaml
    best = [c for c in children if c.data.tags.get("best") == "true"]
    assert len(best) == 1 and "confirm_throughput_ips" in best[0].data.metrics
    parent = parents[0]
    assert parent.data.tags["best"] == best[0].data.tags["trtsweep.trial_key"]
    assert "confirmed for digits_cnn bs=1" in parent.data.tags["recommendation"]
    sweep_dir = sweep.results_csv().parent
    spec = yaml.safe_load((sweep_dir / "best.yaml").read_text())["best"][0]
    assert spec["trial_key"] == best[0].data.tags["trtsweep.trial_key"]
    assert f"engine={spec['engine']}" in spec["overrides"] and f"threads={spec['threads']}" in spec["overrides"]
    df = pd.read_csv(sweep.results_csv())
    assert df["best"].sum() == 1 and df["confirm_throughput_ips"].notna().sum() >= 2
    assert "threads" in res.stdout.split("trials:")[0]  # the printed table shows the swept column
    assert "confirmed" in res.stdout

    # the same sweep again: served from the cache, and it says so
    again = sweep("-m", "engine=tf,tflite,onnx", "threads=1,2", "confirm.enabled=false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "served from the cache" in again.stdout
    parents, children = sweep.runs()
    second = max(parents, key=lambda r: r.info.start_time)  # the first may hold a result an earlier test cached
    cached = [c for c in children if c.data.tags.get("mlflow.parentRunId") == second.info.run_id
              and c.data.tags.get("cached") == "true"]
    assert len(cached) == 6 and all(c.data.tags.get("cached_measured_at") for c in cached)


def test_engine_parameter_applies_only_to_engines_that_have_it(sweep):
    res = sweep("-m", "engine=tf,tflite", "engine.num_threads=1,2", "confirm.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "engine.num_threads applies to tflite only" in res.stderr + res.stdout
    _, children = sweep.runs()
    got = sorted((c.data.params["engine"], c.data.params["threads"]) for c in children)
    assert got == [("tf", str(cores.core_budget())), ("tflite", "1"), ("tflite", "2")]


def test_engine_parameter_no_swept_engine_has_is_one_line(sweep):
    res = sweep("-m", "engine=tf,tflite", "engine.intra_op_num_threads=1,2")
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("trtsweep: error:")]
    assert len(err) == 1 and "engine.intra_op_num_threads" in err[0] and "onnx" in err[0], res.stderr[-2000:]


EXPORT = """
import sys, numpy as np, tensorflow as tf
scale = float(sys.argv[2])
rng = np.random.default_rng(0)
m = tf.Module()
m.w = tf.Variable(rng.normal(0, 1, (16, 10)).astype(np.float32) * scale)
@tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])
def serve(x):
    return {"y": tf.nn.softmax(tf.matmul(x, m.w))}
m.serve = serve
tf.saved_model.save(m, sys.argv[1], signatures={"serving_default": serve})
"""


def test_replaced_saved_model_is_reconverted_and_remeasured(sweep, tmp_path):
    path = tmp_path / "model"

    def export(scale: str) -> None:
        subprocess.run([sys.executable, "-c", EXPORT, str(path), scale], check=True, capture_output=True)

    def run() -> dict:
        res = sweep("model=saved_model", f"model.path={path}", "engine=tflite", "data=random")
        assert res.returncode == 0, res.stderr[-3000:]
        newest = max((sweep.cwd / "outputs").rglob("trials/*.json"), key=lambda p: p.stat().st_mtime)
        return json.loads(newest.read_text())

    export("1.0")
    first = run()
    assert not first["cached"] and first["metrics"]["conversion_reused"] == 0
    second = run()
    assert second["cached"] and second["trial_key"] == first["trial_key"]
    export("-1.0")  # other weights, same path
    third = run()
    assert not third["cached"] and third["trial_key"] != first["trial_key"]
    assert third["metrics"]["conversion_reused"] == 0


def test_confirmation_corrects_a_misordered_measurement(sweep):
    """Two real engines whose single measurements are swapped: the interleaved re-measurement, in the
    trial workers, names the truly faster one (LiteRT on the digits CNN is ~30× faster than TF)."""
    from trtsweep import confirm, runner

    res = sweep("-m", "engine=tf,tflite", "confirm.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (sweep.results_csv().parent / "trials").glob("*.json")]
    by_engine = {r["spec"]["engine"]: r for r in records}
    tf_m, lite_m = by_engine["tf"]["metrics"], by_engine["tflite"]["metrics"]
    for k in ("throughput_ips", "throughput_ci_low", "throughput_ci_high"):
        tf_m[k], lite_m[k] = lite_m[k], tf_m[k]  # the sweep "measured" TF as the faster one
    try:
        verdicts = confirm.run(records, top_k=3, rounds=3)
    finally:
        runner.pool().stop()
    assert len(verdicts) == 1
    v = verdicts[0]
    assert v.winner == by_engine["tflite"]["trial_key"] and not v.is_tie
    assert v.time_s > 0  # the confirmation's own time (benchmarks/sweep_overhead.py counts it as work)
    tf_ips = v.stats[by_engine["tf"]["trial_key"]]["confirm_throughput_ips"]
    assert v.stats[v.winner]["confirm_throughput_ips"] > 5 * tf_ips
