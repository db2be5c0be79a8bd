"""End-to-end sweeps through the real entry point, on real engines and data, logged to a real MLflow store."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

CONTRACT_METRICS = {
    "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_std_ms", "latency_cv",
    "throughput_ips", "convert_time_s", "calibrate_time_s", "model_size_mb", "peak_rss_mb", "top1_agreement",
    "max_abs_error", "cosine_similarity", "accuracy", "accuracy_drop",
}


def test_tflite_precision_sweep_logs_parent_and_children(sweep):
    res = sweep("-m", "model=digits_cnn", "engine=tflite", "precision=fp32,fp16,int8", "engine.num_threads=1")
    assert res.returncode == 0, res.stderr[-3000:]
    parents, children = sweep.runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    assert parents[0].data.tags["host.cpu_flags"] and parents[0].data.tags["version.tensorflow"]
    assert parents[0].data.params == {"precision": "fp16,fp32,int8"}
    pid = parents[0].info.run_id
    by_precision = {}
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == pid
        assert c.info.status == "FINISHED" and c.data.tags["status"] == "ok"
        missing = CONTRACT_METRICS - set(c.data.metrics)
        assert not missing, f"child {c.data.params['precision']} lacks {missing}"
        p = c.data.params
        assert p["model"] == "digits_cnn" and p["engine"] == "tflite" and p["batch_size"] == "1"
        assert "engine.num_threads" not in p  # fixed in this sweep: in config.yaml, not a column
        assert c.data.tags["host_id"] and "version.tensorflow" not in c.data.tags  # host facts: on the parent
        assert c.info.run_name == f"tflite-{p['precision']}-bs1-t{p['threads']}"
        by_precision[p["precision"]] = c.data.metrics
    assert set(by_precision) == {"fp32", "fp16", "int8"}
    assert by_precision["fp32"]["accuracy"] > 0.9  # a really trained model on real held-out digits
    assert abs(by_precision["int8"]["accuracy"] - by_precision["fp32"]["accuracy"]) <= 0.02
    assert by_precision["int8"]["calibrate_time_s"] > 0
    assert by_precision["int8"]["model_size_mb"] < by_precision["fp32"]["model_size_mb"]
    df = pd.read_csv(sweep.results_csv())
    assert len(df) == 3 and set(df.precision) == {"fp32", "fp16", "int8"} and (df.status == "ok").all()
    assert "best for digits_cnn bs=1" in res.stdout


def test_unsupported_combination_is_skipped_with_reason(sweep):
    res = sweep("-m", "engine=tf,tflite", "precision=int8")
    assert res.returncode == 0, res.stderr[-3000:]
    _, children = sweep.runs()
    status = {c.data.params["engine"]: c.data.tags for c in children}
    assert status["tf"]["status"] == "skipped"
    assert "engine=tf" in status["tf"]["reason"] and "int8" in status["tf"]["reason"]
    assert status["tflite"]["status"] == "ok"
    df = pd.read_csv(sweep.results_csv())
    assert df.set_index("engine").loc["tf", "status"] == "skipped"


@pytest.mark.parametrize("override,needle", [
    ("batch_size=0", "batch_size=0"),
    ("model=saved_model", "model.path"),
    ("engine.num_threads=-2", "engine.num_threads=-2"),
    ("+engine.bogus=1", "engine.bogus"),
])
def test_invalid_value_fails_before_any_trial(sweep, override, needle):
    t0 = time.time()
    res = sweep("-m", "engine=tflite", f"precision=fp32,{'int8'}", override)
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("trtsweep: error:")]
    assert len(err_lines) == 1 and needle in err_lines[0] and "fix" in err_lines[0]
    assert "Traceback" not in res.stderr
    assert not list((sweep.cwd / "outputs").rglob("trials/*.json")), "a trial ran before validation failed"
    assert time.time() - t0 < 60


def test_unknown_model_path_fails_in_one_line(sweep, tmp_path):
    res = sweep("model=saved_model", f"model.path={tmp_path / 'nope'}")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("trtsweep: error: model.path=")


def test_crashing_trial_is_failed_and_sweep_goes_on(sweep):
    # every trial with data.seed=1 aborts its worker (a test-only fault); the others run in fresh workers
    res = sweep("-m", "engine=tflite", "precision=fp32", "batch_size=1,2,4", "data.seed=0,1",
                env={"TRTSWEEP_TEST_FAULT": "crash@data.seed=1"})
    assert res.returncode == 0, res.stderr[-3000:]
    _, children = sweep.runs()
    failed = [c for c in children if c.data.tags["status"] == "failed"]
    ok = [c for c in children if c.data.tags["status"] == "ok"]
    assert len(failed) == 3 and len(ok) == 3
    for c in failed:
        assert c.info.status == "FAILED" and c.data.params["data.seed"] == "1"
        assert "SIGABRT" in c.data.tags["reason"]
    for c in ok:
        assert c.data.metrics["throughput_ips"] > 0


def test_hanging_trial_times_out(sweep):
    res = sweep("-m", "engine=tflite", "precision=fp32", "data.seed=1,0", "trial.timeout_s=20",
                env={"TRTSWEEP_TEST_FAULT": "hang@data.seed=1"})
    assert res.returncode == 0, res.stderr[-3000:]
    _, children = sweep.runs()
    by_seed = {c.data.params["data.seed"]: c for c in children}
    assert by_seed["1"].data.tags["status"] == "failed"
    assert "timed out after 20 s" in by_seed["1"].data.tags["reason"]
    assert by_seed["0"].data.tags["status"] == "ok"


def test_interrupted_sweep_resumes_without_duplicates(sweep):
    grid = ["-m", "engine=tflite", "precision=fp32,fp16,int8_dynamic", "data.seed=7"]  # keys unique to this test
    proc = sweep.popen(*grid)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # kill as soon as the first trial's record is written
            if list((sweep.cwd / "outputs").rglob("trials/*.json")):
                break
            if proc.poll() is not None:
                pytest.fail("sweep ended before it could be interrupted:\n" + proc.stdout.read()[-3000:])
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    parents, children = sweep.runs()
    assert len(parents) == 1 and 1 <= len(children) < 3
    first_key = children[0].data.tags["trtsweep.trial_key"]

    res = sweep(*grid)
    assert res.returncode == 0, res.stderr[-3000:]
    parents, children = sweep.runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [c.data.tags["trtsweep.trial_key"] for c in children]
    assert len(keys) == 3 and len(set(keys)) == 3, keys
    assert all(c.data.tags["status"] == "ok" for c in children)
    assert "(cached, measured" in res.stdout + res.stderr  # the finished trial was not measured again
    df = pd.read_csv(sweep.results_csv())
    assert sorted(df.precision) == ["fp16", "fp32", "int8_dynamic"]
    rec = json.loads(next((sweep.cache / "results").glob(f"{first_key}.json")).read_text())
    assert rec["status"] == "ok"


def test_force_remeasures(sweep):
    assert sweep("engine=tflite").returncode == 0
    again = sweep("engine=tflite")
    assert "(cached, measured" in again.stdout + again.stderr  # the progress line of a result from the cache
    forced = sweep("engine=tflite", "force=true")
    assert forced.returncode == 0 and "(cached, measured" not in forced.stdout + forced.stderr


def test_tftrt_trials_are_skipped_here_and_the_rest_runs(sweep):
    from trtsweep.engines.tftrt import TFTRTEngine

    if TFTRTEngine.availability().available:
        pytest.skip("TF-TRT is available on this machine: tftrt trials run instead of being skipped")
    res = sweep("-m", "engine=tftrt,tflite", "precision=fp16")
    assert res.returncode == 0, res.stderr[-3000:]
    _, children = sweep.runs()
    by_engine = {c.data.params["engine"]: c for c in children}
    skipped = by_engine["tftrt"]
    assert skipped.data.tags["status"] == "skipped" and "TensorRT" in skipped.data.tags["reason"]
    assert "NGC" in skipped.data.tags["reason"]  # says what to use instead
    config = skipped_config(sweep, skipped.info.run_id)
    assert config["engine"]["minimum_segment_size"] == 3  # its parameters are still logged (config.yaml)
    assert skipped.info.run_name.endswith("-SKIPPED") and skipped.info.status == "KILLED"
    assert by_engine["tflite"].data.tags["status"] == "ok"
    assert by_engine["tflite"].data.metrics["throughput_ips"] > 0


def skipped_config(sweep, run_id: str) -> dict:
    import yaml
    from mlflow.artifacts import download_artifacts

    path = download_artifacts(run_id=run_id, artifact_path="config.yaml", tracking_uri=f"sqlite:///{sweep.db}")
    with open(path) as f:
        return yaml.safe_load(f)


def test_converted_model_is_logged_as_an_mlflow_model(sweep):
    res = sweep("engine=tflite", "precision=int8_dynamic", "tracking.log_models=true")
    assert res.returncode == 0, res.stderr[-3000:]
    _, children = sweep.runs()
    client = sweep.client()
    names = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"config.yaml", "trial_report.json"} <= names and "model" not in names  # no raw copy beside it
    (output,) = client.get_run(children[0].info.run_id).outputs.model_outputs  # the run's logged model
    files = {a.path for a in client.list_logged_model_artifacts(output.model_id)}
    assert {"MLmodel", "artifacts", "code", "input_example.json", "requirements.txt"} <= files
    assert [a.path for a in client.list_logged_model_artifacts(output.model_id, "artifacts")] == [
        "artifacts/model.tflite"]


def test_user_saved_model_with_dynamic_dims(sweep, tmp_path):
    """The main user flow: any SavedModel by path, a dynamic dimension fixed by an override."""
    import tensorflow as tf

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([16, 4], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="features")])
        def serve(self, features):
            return {"scores": tf.nn.softmax(tf.matmul(features, self.w))}

    path = tmp_path / "user_model"
    m = M()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    missing = sweep("model=saved_model", f"model.path={path}", "engine=tf")
    assert missing.returncode == 2
    assert "+model.input_shapes.features=" in missing.stderr.strip().splitlines()[-1]
    res = sweep("-m", "model=saved_model", f"model.path={path}", "+model.input_shapes.features=[-1,16]",
                "engine=tf,onnx", "batch_size=4")
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_csv(sweep.results_csv())
    assert list(df.status) == ["ok", "ok"] and set(df.data) == {"random"}
    onnx = df.set_index("engine").loc["onnx"]
    assert onnx.top1_agreement == 1.0 and onnx.max_abs_error < 1e-4
    assert onnx.speedup_vs_tf_fp32 > 0
