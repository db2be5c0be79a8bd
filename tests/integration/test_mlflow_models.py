"""Every converted engine a first-class MLflow model: real sweeps on real engines log each trial's model
with its flavor, signature and input example; it loads with ``mlflow.pyfunc.load_model`` and computes
what the trial measured; confirmed winners go to the Model Registry, ``champion`` on the fastest."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from trtsweep.config import DataConfig
from trtsweep.data import batches, load
from trtsweep.engines.tf import TFModel
from trtsweep.fidelity import compare
from trtsweep.mlflow_registry import CHAMPION, registered_name
from trtsweep.report import load_trial_records
from trtsweep.types import ModelInfo

pytestmark = pytest.mark.slow

FLAVORS = {"tf": "tensorflow", "onnx": "onnx", "tflite": "python_function"}  # LiteRT: our pyfunc wrapper only


@pytest.fixture
def tracking_uri(sweep):
    """``models:/`` URIs resolve through MLflow's global tracking URI: the sweep's store for this test."""
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{sweep.db}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(before)


def _model_id(client, run) -> str:
    (output,) = client.get_run(run.info.run_id).outputs.model_outputs
    return output.model_id


def _single(prediction) -> np.ndarray:
    """The one output of a one-output model (MLflow's onnx pyfunc returns a dict by output name)."""
    if isinstance(prediction, dict):
        (prediction,) = prediction.values()
    return np.asarray(prediction)


def test_each_engines_logged_model_reproduces_its_trials_fidelity(sweep, tracking_uri):
    res = sweep("-m", "engine=tf,tflite,onnx", "precision=fp32,int8", "engine.int8_io=true",  # LiteRT: int8 in & out
                "tracking.log_models=true", "tracking.register_best=false", "confirm.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    client = sweep.client()
    _, children = sweep.runs()
    measured = {(c.data.params["engine"], c.data.params["precision"]): c for c in children
                if c.data.tags["status"] in ("ok", "accuracy_violation")}
    assert set(measured) == {("tf", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8")}

    # the evaluation set and the TF FP32 reference the trials were judged against, rebuilt here
    record = next(r for r in load_trial_records(sweep.results_csv().parent) if r["status"] == "ok")
    info = ModelInfo.from_dict(record["report"]["model"])
    ds = load(DataConfig(**record["spec"]["data"]), info)
    x = ds.evaluation[info.inputs[0].name]
    tf_model = TFModel(info, jit_compile=False)
    reference = np.concatenate([tf_model.run(tf_model.prepare(b))[0] for b in batches(ds.evaluation, 32)])[:len(x)]

    for (engine, precision), child in measured.items():
        model_id = _model_id(client, child)
        logged = mlflow.pyfunc.load_model(f"models:/{model_id}")
        assert FLAVORS[engine] in logged.metadata.flavors and logged.metadata.model_id == model_id
        assert logged.metadata.run_id == child.info.run_id
        assert logged.metadata.signature.inputs is not None and logged.metadata.signature.outputs is not None
        example = logged.input_example
        assert 1 <= len(example) <= 8 and np.array_equal(example, x[:len(example)])  # the first evaluation rows

        on_example = _single(logged.predict(example))
        everything = _single(logged.predict(x))
        assert on_example.shape == (len(example), 10) and on_example.dtype.kind == "f"  # dequantised (int8 out)
        # the example's rows agree with the TF reference exactly as they do in the trial's evaluation
        np.testing.assert_array_equal(on_example.argmax(1) == reference[:len(example)].argmax(1),
                                      everything[:len(example)].argmax(1) == reference[:len(example)].argmax(1))
        # and over the whole evaluation set the model reproduces the trial's fidelity figures
        metrics = child.data.metrics
        fidelity = compare(everything, reference, ds.labels)
        label = f"{engine} {precision}"
        assert fidelity["top1_agreement"] == metrics["top1_agreement"], label
        assert fidelity["accuracy"] == metrics["accuracy"], label
        assert fidelity["max_abs_error"] == pytest.approx(metrics["max_abs_error"], rel=1e-3, abs=1e-5), label
        # the trial's metrics are the logged model's metrics too
        linked = {m.key: m.value for m in client.get_logged_model(model_id).metrics}
        assert linked["top1_agreement"] == metrics["top1_agreement"]
        assert linked["throughput_ips"] == metrics["throughput_ips"]

    # the LiteRT pyfunc carries its own code: a fresh interpreter loads it from the model's copy of trtsweep
    uri = f"models:/{_model_id(client, measured[('tflite', 'int8')])}"
    script = ("import mlflow, sys; m = mlflow.pyfunc.load_model(sys.argv[1]); y = m.predict(m.input_example); "
              "import trtsweep; print(y.shape, trtsweep.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-c", script, uri], cwd=sweep.cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shape, where = out.stdout.strip().splitlines()[-1].split(") ")
    assert shape.startswith("(") and "/code/trtsweep/" in where

    assert client.search_registered_models() == []  # tracking.register_best=false


def test_the_champion_moves_to_a_faster_model_and_earlier_versions_stay(sweep, tracking_uri):
    name = registered_name("digits_cnn")
    client = sweep.client()

    def run(*overrides: str) -> tuple[list[str], str]:
        res = sweep("-m", *overrides, "tracking.log_models=true", "confirm.rounds=3")
        assert res.returncode == 0, res.stderr[-3000:]
        versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        champion = client.get_model_version_by_alias(name, CHAMPION)
        return [v.tags["engine"] for v in versions], champion.tags["engine"]

    # a winner is confirmed among at least two passing trials of a model and batch size
    assert run("engine=tf", "threads=1,2") == (["tf"], "tf")  # the first winner is the champion
    engines, champion = run("engine=tflite,onnx")  # both many times faster than TF on this model
    assert engines[0] == "tf" and engines[1] in ("tflite", "onnx") and champion == engines[1]
    # TF again in another sweep (its own runs and logged model): a new version, slower, not the champion
    assert run("engine=tf", "threads=1,2", "confirm.rounds=4") == (["tf", engines[1], "tf"], engines[1])

    champion = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    assert _single(champion.predict(champion.input_example)).shape[1] == 10


def test_a_model_with_two_inputs_takes_a_dict_of_arrays(sweep, tracking_uri, tmp_path):
    """MLflow's tensorflow pyfunc feeds one array: a SavedModel with two inputs is logged with trtsweep's
    pyfunc wrapper instead (its own TF loaded model); ONNX's pyfunc takes the dict itself."""
    import tensorflow as tf

    class TwoInputs(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([6, 3], seed=[3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="a"),
                                      tf.TensorSpec([None, 2], tf.float32, name="b")])
        def serve(self, a, b):
            return {"scores": tf.nn.softmax(tf.matmul(tf.concat([a, b], axis=1), self.w))}

    path = tmp_path / "two_inputs"
    module = TwoInputs()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    res = sweep("-m", "model=saved_model", f"model.path={path}", "data=random", "engine=tf,onnx", "batch_size=4",
                "tracking.log_models=true", "confirm.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    client = sweep.client()
    _, children = sweep.runs("trtsweep/saved_model")  # the experiment is named after the model
    assert len(children) == 2
    for child in children:
        logged = mlflow.pyfunc.load_model(f"models:/{_model_id(client, child)}")
        engine = child.data.params["engine"]
        assert ("tensorflow" in logged.metadata.flavors) is False
        assert engine == "tf" or "onnx" in logged.metadata.flavors
        example = logged.input_example
        assert set(example) == {"a", "b"} and example["a"].shape[1:] == (4,) and example["b"].shape[1:] == (2,)
        want = module.serve(a=tf.constant(example["a"]), b=tf.constant(example["b"]))["scores"].numpy()
        np.testing.assert_allclose(_single(logged.predict(example)), want, rtol=1e-4, atol=1e-5)
