"""engine=onnx on a real (small, trained) Keras CNN: convert → load → run → compare with TensorFlow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from trtsweep.engines.base import get_engine, make_params
from trtsweep.engines.onnx import OnnxConversionError, OnnxEngine, OnnxModel, describe_onnx, match_names
from trtsweep.entry import CONF_DIR
from trtsweep.errors import ConfigError, ModelError
from trtsweep.types import CalibrationData, ModelInfo, TensorSpec

tf = pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

CONF = CONF_DIR / "engine" / "onnx.yaml"
EVAL = 256


# ---------------------------------------------------------------------------
# fixtures
@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    return x, d.target.astype(np.int64)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, digits) -> str:
    import keras

    keras.utils.set_random_seed(0)
    x, y = digits
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[EVAL:], y[EVAL:], epochs=4, batch_size=64, verbose=0)
    path = str(tmp_path_factory.mktemp("digits_cnn") / "saved_model")
    model.export(path, verbose=False)
    return path


def _model_info(path: str, name: str = "digits_cnn") -> ModelInfo:
    sig = tf.saved_model.load(path).signatures["serving_default"]
    _, kwargs = sig.structured_input_signature

    def spec(n, t):
        return TensorSpec(n, tuple(t.shape.as_list()), t.dtype.name)

    return ModelInfo(
        name=name, path=path, signature_key="serving_default",
        inputs=[spec(n, t) for n, t in sorted(kwargs.items())],
        outputs=[spec(n, t) for n, t in sorted(sig.structured_outputs.items())],
        fingerprint="test", input_range=(0.0, 1.0), num_classes=10,
    )


@pytest.fixture(scope="module")
def model(saved_model) -> ModelInfo:
    return _model_info(saved_model)


@pytest.fixture(scope="module")
def reference(saved_model, model, digits) -> np.ndarray:
    """Native TF FP32 logits on the eval set."""
    sig = tf.saved_model.load(saved_model).signatures["serving_default"]
    out = sig(**{model.inputs[0].name: tf.constant(digits[0][:EVAL])})
    return out[model.outputs[0].name].numpy()


@pytest.fixture(scope="module")
def calibration(model, digits) -> CalibrationData:
    x = digits[0][EVAL:EVAL + 128]
    return CalibrationData([{model.inputs[0].name: x[i:i + 32]} for i in range(0, len(x), 32)])


def _engine(**overrides) -> OnnxEngine:
    return OnnxEngine(make_params(OnnxEngine, overrides))


def _run_all(loaded: OnnxModel, name: str, x: np.ndarray, batch_size: int) -> np.ndarray:
    outs = [loaded.run(loaded.prepare({name: x[i:i + batch_size]}))[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


# ---------------------------------------------------------------------------
# params and planning (no conversion)
def test_registered_and_yaml_lists_every_param_with_its_default():
    assert get_engine("onnx") is OnnxEngine
    values = yaml.safe_load(CONF.read_text())
    assert values["name"] == "onnx"
    fields = {f.name for f in dataclasses.fields(OnnxEngine.Params)}
    assert set(values) - {"name"} == fields
    assert make_params(OnnxEngine, values) == OnnxEngine.Params()


def test_runtime_params_do_not_change_the_conversion():
    a = make_params(OnnxEngine, {"intra_op_num_threads": 1, "graph_optimization_level": "basic",
                                 "execution_mode": "parallel", "inter_op_num_threads": 2})
    assert OnnxEngine.conversion_params(a) == OnnxEngine.conversion_params(OnnxEngine.Params())
    b = make_params(OnnxEngine, {"opset": 15})
    assert OnnxEngine.conversion_params(b) != OnnxEngine.conversion_params(OnnxEngine.Params())


@pytest.mark.parametrize("key,value", [
    ("graph_optimization_level", "max"),
    ("execution_mode", "async"),
    ("quant_format", "qqq"),
    ("activation_type", "int4"),
    ("provider", "tpu"),
    ("intra_op_num_threads", -1),
    ("inter_op_num_threads", -2),
    ("opset", 9),
    ("opset", 30),
    ("opset", "17"),
    ("per_channel", "yes"),
])
def test_invalid_params_name_the_field_and_the_fix(key, value):
    with pytest.raises(ConfigError) as err:
        make_params(OnnxEngine, {"name": "onnx", key: value})
    msg = str(err.value)
    assert f"engine.{key}" in msg and str(value) in msg
    assert "fix" in msg or "must be of type" in msg


def test_unknown_param_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"engine\.threads is not a parameter.*intra_op_num_threads"):
        make_params(OnnxEngine, {"threads": 2})


def test_availability_reports_versions_and_providers():
    avail = OnnxEngine.availability()
    assert avail.available, avail.reason
    assert {"onnxruntime", "tf2onnx", "onnx"} <= set(avail.details)
    assert "CPUExecutionProvider" in avail.details["providers"]


def test_unsupported_precision_and_missing_provider_are_skipped_not_errors():
    assert "precision=bf16" in OnnxEngine.unsupported("bf16", OnnxEngine.Params())
    assert OnnxEngine.unsupported("int8", OnnxEngine.Params()) is None
    if "CUDAExecutionProvider" not in OnnxEngine.availability().details["providers"]:
        reason = OnnxEngine.unsupported("fp32", make_params(OnnxEngine, {"provider": "cuda"}))
        assert "CUDAExecutionProvider" in reason and "engine.provider=cpu" in reason


def test_match_names_exact_suffix_and_position():
    assert match_names(["x"], ["x"], "input") == {"x": "x"}
    assert match_names(["input_1"], ["serving_default_input_1:0"], "input") == {"input_1": "serving_default_input_1:0"}
    assert match_names(["a", "b"], ["b", "zz"], "input") == {"a": "zz", "b": "b"}
    with pytest.raises(ModelError, match="cannot match"):
        match_names(["a", "b"], ["c"], "output")


# ---------------------------------------------------------------------------
# convert → load → run
THRESHOLDS = {  # precision -> (max abs error on logits, minimum top-1 agreement with TF)
    "fp32": (1e-4, 1.0),
    "fp16": (5e-2, 0.99),
    "int8": (None, 0.95),
    "int8_dynamic": (None, 0.95),
}


@pytest.mark.parametrize("precision", list(THRESHOLDS))
def test_convert_load_run_matches_tensorflow(precision, model, reference, calibration, digits, tmp_path):
    engine = _engine()
    result = engine.convert(model, precision, calibration if precision == "int8" else None, tmp_path, (1, 4))

    assert Path(result.artifact) == tmp_path / "model.onnx" and Path(result.artifact).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # intermediates cleaned up
    assert result.convert_time_s > 0 and result.metrics == {"converted_fraction": 1.0}
    assert (result.calibrate_time_s > 0) == (precision == "int8")
    report = result.report
    assert report["opset"] == 17 and report["node_count"] == sum(report["op_types"].values())
    assert report["providers"] == ["CPUExecutionProvider"]
    assert report["inputs"] == [model.inputs[0].name] and report["outputs"] == [model.outputs[0].name]
    if precision.startswith("int8"):
        assert report["quantized_nodes"] > 0
    else:
        assert report["quantized_nodes"] == 0
    if precision == "fp16":  # float16 weights inside, float32 at the graph edges
        import onnx

        graph = onnx.load(result.artifact).graph
        weight_types = {i.data_type for i in graph.initializer} - {onnx.TensorProto.INT32, onnx.TensorProto.INT64}
        assert weight_types == {onnx.TensorProto.FLOAT16}
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    name, x = model.inputs[0].name, digits[0][:EVAL]
    max_err, min_agree = THRESHOLDS[precision]
    for batch_size, artifact in ((1, tmp_path), (4, Path(result.artifact))):  # dir or file both load
        loaded = engine.load(artifact, model, precision, batch_size)
        single = loaded.run(loaded.prepare({name: x[:batch_size]}))
        assert len(single) == 1 and single[0].shape == (batch_size, 10) and single[0].dtype == np.float32
        got = _run_all(loaded, name, x, batch_size)
        agreement = float(np.mean(got.argmax(1) == reference.argmax(1)))
        assert agreement >= min_agree, f"{precision} bs={batch_size}: top-1 agreement {agreement:.3f}"
        if max_err is not None:
            assert np.abs(got - reference).max() < max_err
        described = loaded.describe()
        assert described["providers"] == ["CPUExecutionProvider"]
        assert described["inputs"] == {name: name} and described["outputs"] == [model.outputs[0].name]
        loaded.close()


def test_runtime_params_reach_the_session(model, reference, digits, tmp_path):
    result = _engine().convert(model, "fp32", None, tmp_path)
    engine = _engine(intra_op_num_threads=1, inter_op_num_threads=1, graph_optimization_level="disable",
                     execution_mode="parallel")
    loaded = engine.load(Path(result.artifact), model, "fp32", 8)
    assert loaded.describe()["session_options"] == {
        "intra_op_num_threads": 1, "inter_op_num_threads": 1, "graph_optimization_level": "disable",
        "execution_mode": "parallel", "provider": "cpu",
    }
    # float64 input and a non-contiguous view are accepted: prepare converts
    x = digits[0][:16].astype(np.float64)[::2]
    np.testing.assert_allclose(loaded.run(loaded.prepare({model.inputs[0].name: x}))[0], reference[:16:2], atol=1e-4)
    with pytest.raises(ModelError, match="no input"):
        loaded.prepare({"wrong": x})


def test_int8_without_calibration_data_fails_clearly(model, tmp_path):
    with pytest.raises(ConfigError, match="data.calibration_samples"):
        _engine().convert(model, "int8", None, tmp_path)


def test_qoperator_format_uses_qlinear_ops(model, calibration, tmp_path):
    result = _engine(quant_format="qoperator", per_channel=False).convert(model, "int8", calibration, tmp_path)
    assert any(op.startswith("QLinear") for op in result.report["op_types"])
    assert result.report["quantization"]["format"] == "qoperator"


def test_unconvertible_op_fails_in_one_line_naming_the_op(tmp_path):
    class Lgamma(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.math.lgamma(x) + 1.0}

    module = Lgamma()
    path = str(tmp_path / "lgamma")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    with pytest.raises(OnnxConversionError) as err:
        _engine().convert(_model_info(path, "lgamma"), "fp32", None, tmp_path / "out")
    msg = str(err.value)
    assert "Lgamma" in msg and "\n" not in msg and "fix" in msg


def test_fixed_input_shapes_pin_open_signature_dims(tmp_path):
    class MeanPool(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
        def serve(self, image):
            return {"mean": tf.reduce_mean(image, axis=[1, 2])}

    module = MeanPool()
    path = str(tmp_path / "meanpool")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    info = _model_info(path, "meanpool")
    info.inputs = [dataclasses.replace(info.inputs[0], shape=(None, 5, 6, 3))]  # model.input_shapes
    result = _engine().convert(info, "fp32", None, tmp_path / "out")

    import onnx

    dims = onnx.load(result.artifact).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or None for d in dims] == [None, 5, 6, 3] and dims[0].dim_param
    x = np.random.default_rng(0).random((2, 5, 6, 3), dtype=np.float32)
    loaded = _engine().load(Path(result.artifact), info, "fp32", 2)
    np.testing.assert_allclose(loaded.run(loaded.prepare({"image": x}))[0], x.mean(axis=(1, 2)), atol=1e-6)
    assert describe_onnx(onnx.load(result.artifact))["quantized_nodes"] == 0


def test_multiple_inputs_and_outputs_are_matched_by_name(tmp_path):
    class TwoHeads(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="b_in"),
                                      tf.TensorSpec([None, 3], tf.int32, name="a_in")])
        def serve(self, b_in, a_in):
            return {"sum": b_in + tf.cast(a_in, tf.float32), "diff": b_in - tf.cast(a_in, tf.float32)}

    module = TwoHeads()
    path = str(tmp_path / "two_heads")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    info = _model_info(path, "two_heads")
    assert [t.name for t in info.outputs] == ["diff", "sum"]
    result = _engine().convert(info, "fp32", None, tmp_path / "out")
    assert result.report["outputs"] == ["diff", "sum"]  # tf2onnx keeps sorted output names

    info.outputs = info.outputs[::-1]  # whatever order the ModelInfo lists, run() follows it
    loaded = _engine().load(Path(result.artifact), info, "fp32", 2)
    b = np.arange(6, dtype=np.float32).reshape(2, 3)
    a = np.ones((2, 3), dtype=np.int64)  # wrong dtype on purpose: prepare casts to the graph's int32
    total, diff = loaded.run(loaded.prepare({"a_in": a, "b_in": b}))
    np.testing.assert_allclose(total, b + 1)
    np.testing.assert_allclose(diff, b - 1)
