"""TF-TRT engine: config → installed TF-TRT API, validation, planning, calibration/build inputs,
conversion reports, availability.  Everything here runs against the installed TensorFlow without
TensorRT; the ``gpu``-marked tests convert and run for real where TF-TRT is available."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf
from tensorflow.core.framework import function_pb2, graph_pb2, node_def_pb2

from trtsweep.config import plan_trial
from trtsweep.engines.base import Availability, get_engine, make_params
from trtsweep.engines.tftrt import (
    ENGINE,
    PROFILE_STRATEGIES,
    TFTRTEngine,
    TFTRTModel,
    TFTRTParams,
    _resolve_saved_model,
    implicit_batch_reason,
)
from trtsweep.engines.tftrt._api import (
    API_BUILD,
    API_CONVERSION_PARAMS,
    API_CONVERT,
    API_INIT,
    API_SAVE,
    FIELD_TO_API,
    _missing_arg_message,
    check_installed_api,
    installed_arg_names,
    trt_call_kwargs,
)
from trtsweep.engines.tftrt._diagnostics import _capture_native_log, _hinted_errors, log_warnings, trt_error_hint
from trtsweep.engines.tftrt._graph_report import conversion_report
from trtsweep.engines.tftrt._inputs import build_batch_sizes, build_input_fn, calibration_input_fn, input_order
from trtsweep.engines.tftrt._probe import _probe_in_subprocess, availability_from_probe, probe_tensorflow
from trtsweep.entry import CONF_DIR
from trtsweep.errors import ConfigError, EngineUnavailable, ModelError, TrtsweepError
from trtsweep.gpu import gpu_facts, parse_cuda_version, parse_gpu_query
from trtsweep.types import CalibrationData, ModelInfo, TensorSpec

REPO = Path(__file__).resolve().parents[2]
AVAILABILITY = TFTRTEngine.availability()
requires_tftrt = pytest.mark.skipif(not AVAILABILITY.available, reason=f"TF-TRT unavailable: {AVAILABILITY.reason}")
PARAM_VARIANTS = {
    "defaults": {},
    "dynamic": {"use_dynamic_shape": True, "dynamic_shape_profile_strategy": "Optimal"},
    "implicit_batch": {"use_dynamic_shape": False, "maximum_cached_engines": 2},
    "no_prebuild": {"build_engines": False, "use_dynamic_shape": False},
    "tuned": {"max_workspace_size_bytes": 1 << 32, "minimum_segment_size": 5, "maximum_cached_engines": 4,
              "allow_build_at_runtime": False, "max_batch_size": 16},
}


def params(**overrides) -> TFTRTParams:
    return make_params(ENGINE, overrides)


# ---------------------------------------------------------------------------------------------
# tiny models, built in the tests


class _TwoInputs(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="zb"),
                                  tf.TensorSpec([None, 3], tf.int32, name="ya")])
    def serve(self, zb, ya):
        return {"out": tf.matmul(zb, self.w) + tf.cast(ya, tf.float32)}


class _Unconvertible(tf.Module):
    """Ops TensorRT has no converter for: lgamma and string ops."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x):
        return {"y": tf.math.lgamma(tf.abs(x) + 1.0), "n": tf.strings.length(tf.strings.as_string(x))}


class _TinyConvNet(tf.Module):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.k = tf.Variable((rng.normal(size=(3, 3, 3, 8)) * 0.2).astype(np.float32))
        self.b = tf.Variable((rng.normal(size=(8,)) * 0.1).astype(np.float32))
        self.w = tf.Variable((rng.normal(size=(8 * 8 * 8, 10)) * 0.05).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="images")])
    def serve(self, images):
        x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(images, self.k, 1, "SAME"), self.b))
        return {"logits": tf.matmul(tf.reshape(x, [-1, 8 * 8 * 8]), self.w)}


def _save(module: tf.Module, path: Path) -> str:
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return str(path)


def _info(name: str, path: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> ModelInfo:
    return ModelInfo(name=name, path=path, signature_key="serving_default", inputs=inputs, outputs=outputs,
                     fingerprint=name)


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory) -> ModelInfo:
    path = _save(_TwoInputs(), tmp_path_factory.mktemp("two_inputs") / "sm")
    return _info("two_inputs", path, [TensorSpec("zb", (None, 4), "float32"), TensorSpec("ya", (None, 3), "int32")],
                 [TensorSpec("out", (None, 3), "float32")])


@pytest.fixture(scope="module")
def unconvertible(tmp_path_factory) -> ModelInfo:
    path = _save(_Unconvertible(), tmp_path_factory.mktemp("unconvertible") / "sm")
    return _info("unconvertible", path, [TensorSpec("x", (None, 4), "float32")],
                 [TensorSpec("n", (None, 4), "int32"), TensorSpec("y", (None, 4), "float32")])


@pytest.fixture(scope="module")
def tiny_convnet(tmp_path_factory) -> ModelInfo:
    path = _save(_TinyConvNet(), tmp_path_factory.mktemp("tiny_convnet") / "sm")
    return _info("tiny_convnet", path, [TensorSpec("images", (None, 8, 8, 3), "float32")],
                 [TensorSpec("logits", (None, 10), "float32")])


def _calibration(model: ModelInfo, batches: int, batch_size: int, seed: int = 0) -> CalibrationData:
    rng = np.random.default_rng(seed)
    return CalibrationData([
        {s.name: rng.uniform(0, 1, size=s.concrete(batch_size)).astype(s.dtype) for s in model.inputs}
        for _ in range(batches)
    ])


# ---------------------------------------------------------------------------------------------
# config → installed TF-TRT API


def test_engine_is_registered_with_its_precisions():
    assert get_engine("tftrt") is TFTRTEngine is ENGINE
    assert TFTRTEngine.name == "tftrt"
    assert TFTRTEngine.precisions == ("fp32", "fp16", "int8")


def test_package_modules_are_not_engines_and_import_without_cycles():
    """``engines/tftrt/`` is one engine; its private modules never import the package or each other in a cycle."""
    import ast
    import graphlib

    import trtsweep.engines.tftrt as pkg
    from trtsweep.engines.base import engine_names

    assert "tftrt" in engine_names() and not any("." in n or n.startswith("_") for n in engine_names())
    for name in pkg.__all__:  # the package's public names still resolve
        assert getattr(pkg, name) is not None, name
    graph: dict[str, set[str]] = {}
    for path in sorted(Path(pkg.__file__).parent.glob("_*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        type_only = {id(n) for block in ast.walk(tree)  # `if TYPE_CHECKING:` imports are never executed
                     if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                     for stmt in block.body for n in ast.walk(stmt)}
        deps: set[str] = set()
        for node in ast.walk(tree):  # every level: an import inside a function runs too, only later
            if id(node) in type_only:
                continue
            if isinstance(node, ast.ImportFrom):
                module = f"{pkg.__name__}.{node.module or ''}".rstrip(".") if node.level else node.module or ""
                if module.startswith(pkg.__name__):
                    deps.add(module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith(pkg.__name__))
        assert pkg.__name__ not in deps, f"{path.name} imports the package itself"
        graph[f"{pkg.__name__}.{path.stem}"] = deps
    assert len(graph) == 5
    list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle


def test_every_param_maps_to_an_argument_of_the_installed_tftrt_api():
    fields = {f.name for f in dataclasses.fields(TFTRTParams)}
    assert fields == set(FIELD_TO_API), "every engine parameter must say where it goes in TF-TRT"
    for field_name, targets in FIELD_TO_API.items():
        for api, arg in targets:
            assert arg in installed_arg_names(api), f"engine.{field_name} -> {api}({arg}=) not in installed TF"


@pytest.mark.parametrize("variant", sorted(PARAM_VARIANTS))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_call_kwargs_are_accepted_by_name_by_the_installed_classes(precision, variant):
    p = params(**PARAM_VARIANTS[variant])
    calls = trt_call_kwargs(p, precision, "/in", "serving_default", "/out")
    assert set(calls) == {API_CONVERSION_PARAMS, API_INIT, API_CONVERT, API_BUILD, API_SAVE}
    check_installed_api(calls)  # raises on any name the installed TF lacks
    for api, kwargs in calls.items():
        assert set(kwargs) <= installed_arg_names(api)
    assert calls[API_INIT]["precision_mode"] == precision.upper()
    for f in ("max_workspace_size_bytes", "minimum_segment_size", "maximum_cached_engines", "use_calibration",
              "allow_build_at_runtime", "use_dynamic_shape", "dynamic_shape_profile_strategy"):
        assert calls[API_INIT][f] == getattr(p, f)
    # the converter kwargs also build the installed TrtConversionParams without complaint
    from tensorflow.python.compiler.tensorrt import trt_convert

    conversion = trt_convert.TrtConversionParams(**calls[API_CONVERSION_PARAMS])
    assert conversion.precision_mode == precision.upper()
    assert conversion.minimum_segment_size == p.minimum_segment_size


def test_an_argument_the_installed_tf_lacks_is_an_error_not_a_silent_drop():
    calls = trt_call_kwargs(params(), "fp16")
    calls[API_INIT]["is_dynamic_op"] = True  # TF1-era argument, absent from TrtGraphConverterV2
    with pytest.raises(ConfigError, match=r"TrtGraphConverterV2\.__init__\(is_dynamic_op=") as err:
        check_installed_api(calls)
    assert "fix:" in str(err.value) and tf.__version__ in str(err.value)
    # an engine parameter is named in the message, so the user knows which setting to drop
    assert "engine.use_dynamic_shape" in _missing_arg_message(API_INIT, "use_dynamic_shape")


def test_unknown_precision_has_no_precision_mode():
    with pytest.raises(ConfigError, match="precision=int8_dynamic"):
        trt_call_kwargs(params(), "int8_dynamic")


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("overrides, field_name", [
    ({"minimum_segment_size": -1}, "minimum_segment_size"),
    ({"minimum_segment_size": 0}, "minimum_segment_size"),
    ({"max_workspace_size_bytes": 0}, "max_workspace_size_bytes"),
    ({"max_workspace_size_bytes": -5}, "max_workspace_size_bytes"),
    ({"max_workspace_size_bytes": sys.maxsize}, "max_workspace_size_bytes"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"maximum_cached_engines": 0}, "maximum_cached_engines"),
    ({"dynamic_shape_profile_strategy": "Fastest", "use_dynamic_shape": True}, "dynamic_shape_profile_strategy"),
    ({"dynamic_shape_profile_strategy": "Optimal", "use_dynamic_shape": False}, "dynamic_shape_profile_strategy"),
    ({"build_engines": False}, "build_engines"),  # dynamic shapes (the default) need build()
    ({"build_engines": False, "allow_build_at_runtime": False, "use_dynamic_shape": False}, "build_engines"),
    ({"minimum_segment_size": "3"}, "minimum_segment_size"),
    ({"use_calibration": 1}, "use_calibration"),
    ({"max_batch_sizes": 8}, "max_batch_sizes"),
])
def test_invalid_values_fail_naming_the_field_and_the_fix(overrides, field_name):
    with pytest.raises(ConfigError) as err:
        params(**overrides)
    msg = str(err.value)
    assert f"engine.{field_name}" in msg
    assert "\n" not in msg


def test_profile_strategy_error_lists_the_choices_and_suggests_the_spelling():
    with pytest.raises(ConfigError) as err:
        params(use_dynamic_shape=True, dynamic_shape_profile_strategy="range+optimal")
    assert "fix: engine.dynamic_shape_profile_strategy=Range+Optimal" in str(err.value)
    for s in PROFILE_STRATEGIES:
        assert s in str(err.value)


def test_valid_variants_are_accepted():
    for overrides in PARAM_VARIANTS.values():
        params(**overrides)
    for strategy in PROFILE_STRATEGIES:
        params(use_dynamic_shape=True, dynamic_shape_profile_strategy=strategy)


def test_config_file_lists_every_param_with_its_default():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "engine" / "tftrt.yaml"))
    assert cfg.pop("name") == "tftrt"
    defaults = dataclasses.asdict(TFTRTParams())
    assert cfg == defaults
    assert make_params(ENGINE, cfg) == TFTRTParams()
    text = (CONF_DIR / "engine" / "tftrt.yaml").read_text()
    for name in defaults:  # every field is commented on the line(s) just above it
        lines = text.splitlines()
        i = next(k for k, ln in enumerate(lines) if ln.startswith(f"{name}:"))
        assert lines[i - 1].startswith("#"), f"{name} has no comment"


# ---------------------------------------------------------------------------------------------
# planning


def _trial_cfg(tmp_path: Path, precision: str = "fp32", calibration_samples: int = 128, **engine) -> dict:
    return {
        "model": {"name": "digits_cnn", "source": "digits_cnn"},
        "engine": {"name": "tftrt", **engine},
        "precision": {"name": precision},
        "data": {"name": "digits", "calibration_samples": calibration_samples},
        "batch_size": 8,
        "cache_dir": str(tmp_path / "cache"),
    }


def test_plan_rejects_invalid_engine_values_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="engine.minimum_segment_size=-2"):
        plan_trial(_trial_cfg(tmp_path, minimum_segment_size=-2))
    with pytest.raises(ConfigError, match="engine.dynamic_shape_profile_strategy"):
        plan_trial(_trial_cfg(tmp_path, dynamic_shape_profile_strategy="Best"))


def test_plan_rejects_int8_without_calibration_samples(tmp_path, monkeypatch):
    # the check sits behind availability in plan_trial: pretend TF-TRT is here to reach it
    monkeypatch.setattr(TFTRTEngine, "availability", classmethod(lambda cls: Availability(True)))
    with pytest.raises(ConfigError, match="data.calibration_samples"):
        plan_trial(_trial_cfg(tmp_path, "int8", calibration_samples=0))
    spec = plan_trial(_trial_cfg(tmp_path, "int8", calibration_samples=0, use_calibration=False))
    assert "use_calibration" in spec.skip_reason  # no calibration needed, but skipped as unsupported


def test_plan_skips_every_tftrt_trial_here_with_the_availability_reason(tmp_path):
    if AVAILABILITY.available:
        pytest.skip("TF-TRT is available here")
    spec = plan_trial(_trial_cfg(tmp_path, "fp16", maximum_cached_engines=2), sweep_batch_sizes=[1, 8])
    assert spec.skip_reason == AVAILABILITY.reason
    assert spec.engine_params["maximum_cached_engines"] == 2
    assert spec.conversion_key() != plan_trial(_trial_cfg(tmp_path, "fp16"), sweep_batch_sizes=[1]).conversion_key()


def test_unsupported_combinations_have_reasons():
    assert TFTRTEngine.unsupported("fp16", params()) is None
    assert TFTRTEngine.unsupported("int8", params()) is None
    assert "int8_dynamic" in TFTRTEngine.unsupported("int8_dynamic", params())
    reason = TFTRTEngine.unsupported("int8", params(use_calibration=False))
    assert "engine.use_calibration=true" in reason and "\n" not in reason


def test_implicit_batch_is_unsupported_with_tensorrt_10(monkeypatch):
    implicit = params(use_dynamic_shape=False)
    assert implicit_batch_reason(implicit, [8, 6, 1]) is None
    assert implicit_batch_reason(params(), [10, 7, 0]) is None  # dynamic shapes: the default
    reason = implicit_batch_reason(implicit, [10, 7, 0])
    assert "TensorRT 10.7.0" in reason and "fix: engine.use_dynamic_shape=true" in reason
    trt10 = Availability(True, "", {"loaded_tensorrt": [10, 7, 0]})
    monkeypatch.setattr(TFTRTEngine, "availability", classmethod(lambda cls: trt10))
    assert TFTRTEngine.unsupported("fp16", implicit) == reason
    assert TFTRTEngine.unsupported("fp16", params()) is None


def test_needs_calibration_only_for_calibrated_int8():
    assert TFTRTEngine.needs_calibration("int8", params())
    assert TFTRTEngine.needs_calibration("int8", None)  # TrialSpec.conversion_key passes no params
    assert not TFTRTEngine.needs_calibration("int8", params(use_calibration=False))
    assert not TFTRTEngine.needs_calibration("fp16", params())
    assert not TFTRTEngine.needs_calibration("fp32", None)


def test_calibration_uses_the_largest_built_batch_size():
    assert TFTRTEngine.calibration_batch_size(params(), [1, 8]) == 8
    assert TFTRTEngine.calibration_batch_size(params(max_batch_size=32), [1, 8]) == 32
    assert TFTRTEngine.calibration_batch_size(params(), []) == 1


def test_no_param_is_runtime_only_so_every_one_keys_the_conversion():
    p = params(maximum_cached_engines=3)
    assert TFTRTEngine.conversion_params(p) == dataclasses.asdict(p)


# ---------------------------------------------------------------------------------------------
# availability


def test_availability_here_is_false_with_a_one_line_reason_naming_tensorrt():
    if AVAILABILITY.available:
        pytest.skip("TF-TRT is available here")
    reason = AVAILABILITY.reason
    assert "TensorRT" in reason and "docker/" in reason
    assert "\n" not in reason and len(reason) < 300
    assert TFTRTEngine.availability() is AVAILABILITY  # cached


def test_probe_reads_the_installed_tensorflow_without_raising():
    facts = probe_tensorflow()
    assert facts["tf_version"] == tf.__version__
    assert isinstance(facts["tensorrt_enabled"], bool)
    assert facts["trt_convert"] is True
    avail = availability_from_probe(facts)
    if not facts["tensorrt_enabled"]:
        assert not avail.available and "built without TensorRT" in avail.reason
        assert "NGC TensorFlow container" in avail.reason


def test_probe_in_a_child_process_matches_the_in_process_probe():
    child = _probe_in_subprocess()
    here = probe_tensorflow()
    for key in ("tf_version", "tensorrt_enabled", "linked_tensorrt", "loaded_tensorrt", "trt_convert"):
        assert child[key] == here[key], key


def _facts(**overrides) -> dict:
    base = {"tf_version": "2.17.0", "built_with_cuda": True, "tensorrt_enabled": True, "linked_tensorrt": [10, 7, 0],
            "loaded_tensorrt": [10, 7, 0], "gpus": ["/physical_device:GPU:0"], "trt_convert": True}
    return {**base, **overrides}


@pytest.mark.parametrize("overrides, available, in_reason, in_warning", [
    ({}, True, "", None),
    ({"loaded_tensorrt": [10, 8, 0]}, True, "", "newer minor/patch"),
    ({"loaded_tensorrt": [8, 6, 1]}, False, "version skew", "major version skew"),
    ({"loaded_tensorrt": [10, 6, 0]}, False, "version skew", "older"),
    ({"loaded_tensorrt": [0, 0, 0]}, False, "libnvinfer", None),
    ({"tensorrt_enabled": False, "linked_tensorrt": [0, 0, 0], "loaded_tensorrt": [0, 0, 0]}, False,
     "built without TensorRT", None),
    ({"gpus": []}, False, "sees no GPU", None),
    ({"error": "ImportError: libcudart.so.12"}, False, "cannot be imported", None),
])
def test_availability_decision_and_version_skew_warnings(overrides, available, in_reason, in_warning):
    avail = availability_from_probe(_facts(**overrides))
    assert avail.available is available
    assert in_reason in avail.reason and "\n" not in avail.reason
    if not available:
        assert "TensorRT" in avail.reason or "GPU" in avail.reason
    warnings = avail.details["warnings"]
    assert (any(in_warning in w for w in warnings) if in_warning else warnings == [])


def test_convert_and_load_refuse_clearly_without_tftrt(tiny_convnet, tmp_path):
    if AVAILABILITY.available:
        pytest.skip("TF-TRT is available here")
    eng = TFTRTEngine(params())
    with pytest.raises(EngineUnavailable, match="TensorRT"):
        eng.convert(tiny_convnet, "fp16", None, tmp_path / "out", (1, 8))
    with pytest.raises(EngineUnavailable, match="TensorRT"):
        eng.load(tmp_path / "out", tiny_convnet, "fp16", 1)


def test_importing_the_engine_and_gpu_modules_does_not_import_tensorflow():
    code = ("import sys, trtsweep.engines.tftrt, trtsweep.gpu\n"
            "from trtsweep.engines.tftrt import TFTRTEngine as E\n"
            "E.validate(E.Params()); E.unsupported('int8', E.Params())\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# calibration and build inputs


def test_calibration_input_fn_yields_the_configured_batches_with_signature_shapes_and_dtypes(two_inputs):
    calib = _calibration(two_inputs, batches=5, batch_size=3)
    fn = calibration_input_fn(calib, two_inputs)
    got = list(fn())
    assert len(got) == 5
    assert input_order(two_inputs) == ["ya", "zb"]
    for item, batch in zip(got, calib.batches, strict=True):
        ya, zb = item
        assert ya.shape == (3, 3) and ya.dtype == np.int32
        assert zb.shape == (3, 4) and zb.dtype == np.float32
        np.testing.assert_array_equal(zb, batch["zb"])
    assert len(list(fn())) == 5  # a generator *function*: TF-TRT may call it again


def test_calibration_tuples_feed_the_converted_function_positionally(two_inputs):
    """TF-TRT calls its converted function with ``*tuple``; check the order against the installed TF."""
    from tensorflow.python.compiler.tensorrt import trt_convert
    from tensorflow.python.framework import convert_to_constants

    if not hasattr(trt_convert, "_construct_function_from_graph_def"):
        pytest.skip("installed TF-TRT builds its converted function differently")
    loaded = tf.saved_model.load(two_inputs.path)  # keep: the signature references its variables
    func = loaded.signatures["serving_default"]
    frozen = convert_to_constants.convert_variables_to_constants_v2(func)
    converted = trt_convert._construct_function_from_graph_def(func, frozen.graph.as_graph_def(), frozen)
    calib = _calibration(two_inputs, batches=1, batch_size=2)
    (args,) = list(calibration_input_fn(calib, two_inputs)())
    out = converted(*[tf.constant(a) for a in args])
    expected = func(**{k: tf.constant(v) for k, v in calib.batches[0].items()})["out"]
    np.testing.assert_allclose(np.asarray(out[0] if isinstance(out, (list, tuple)) else out["out"]),
                               expected.numpy(), rtol=1e-6)


def test_calibration_batches_must_share_one_shape_and_have_every_input(two_inputs):
    calib = _calibration(two_inputs, batches=2, batch_size=4)
    calib.batches.append(_calibration(two_inputs, batches=1, batch_size=3).batches[0])
    with pytest.raises(ConfigError, match="calibration batch 2"):
        calibration_input_fn(calib, two_inputs)
    with pytest.raises(ModelError, match="lacks input 'ya'"):
        calibration_input_fn(CalibrationData([{"zb": np.zeros((2, 4), np.float32)}]), two_inputs)
    with pytest.raises(ModelError, match="input 'zb' has shape"):
        calibration_input_fn(CalibrationData([{"zb": np.zeros((2, 5), np.float32),
                                               "ya": np.zeros((2, 3), np.int32)}]), two_inputs)
    with pytest.raises(ConfigError, match="data.calibration_samples"):
        calibration_input_fn(CalibrationData([]), two_inputs)


def test_build_input_fn_covers_every_timed_batch_size_and_max_batch_size(two_inputs):
    sizes = build_batch_sizes(params(max_batch_size=16), [8, 1, 8])
    assert sizes == (1, 8, 16)
    assert build_batch_sizes(params(), [4]) == (1, 4)
    got = list(build_input_fn(two_inputs, sizes)())
    assert [item[0].shape[0] for item in got] == [1, 8, 16]
    for (ya, zb), bs in zip(got, sizes, strict=True):
        assert ya.shape == (bs, 3) and ya.dtype == np.int32
        assert zb.shape == (bs, 4) and zb.dtype == np.float32


def test_build_input_fn_fails_early_on_an_unknown_non_batch_dimension():
    model = _info("dyn", "/nowhere", [TensorSpec("x", (None, None, 3), "float32")], [])
    with pytest.raises(ConfigError, match=r"\+model.input_shapes.x"):
        build_input_fn(model, (1,))


# ---------------------------------------------------------------------------------------------
# conversion report


def _node(name: str, op: str, **funcs: str) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op=op)
    for attr, fname in funcs.items():
        node.attr[attr].func.name = fname
    return node


def _function(name: str, nodes: list[node_def_pb2.NodeDef]) -> function_pb2.FunctionDef:
    f = function_pb2.FunctionDef()
    f.signature.name = name
    f.node_def.extend(nodes)
    return f


def _ops(prefix: str, ops: list[str]) -> list[node_def_pb2.NodeDef]:
    return [_node(f"{prefix}/{op.lower()}_{i}", op) for i, op in enumerate(ops)]


def _two_segment_graph() -> graph_pb2.GraphDef:
    g = tf.compat.v1.GraphDef()
    g.node.extend([
        _node("x", "Placeholder"),
        _node("TRTEngineOp_000_000", "TRTEngineOp", segment_func="TRTEngineOp_000_000_native_segment"),
        _node("lg", "Lgamma"),
        _node("TRTEngineOp_000_001", "TRTEngineOp", segment_func="TRTEngineOp_000_001_native_segment"),
        _node("Identity", "Identity"),
    ])
    g.library.function.extend([
        _function("TRTEngineOp_000_000_native_segment", _ops("s0", ["Conv2D", "BiasAdd", "Relu", "Const", "MatMul"])),
        _function("TRTEngineOp_000_001_native_segment", _ops("s1", ["Mul", "Sub", "Identity"])),
    ])
    return g


def test_report_counts_segments_nodes_and_ops_left_in_tf():
    r = conversion_report(_two_segment_graph())
    assert r["trt_segments"] == 2
    assert r["segment_node_counts"] == {"TRTEngineOp_000_000": 4, "TRTEngineOp_000_001": 2}
    assert (r["nodes_in_trt"], r["nodes_in_tf"], r["nodes_total"]) == (6, 1, 7)
    assert r["trt_converted_fraction"] == pytest.approx(6 / 7, abs=1e-6)
    assert r["ops_in_tf"] == {"Lgamma": 1}
    assert r["ops_in_trt"] == {"Conv2D": 1, "BiasAdd": 1, "Relu": 1, "MatMul": 1, "Mul": 1, "Sub": 1}
    assert r["warnings"] == []


def test_report_finds_segments_inside_library_functions_and_ignores_unreachable_ones():
    g = tf.compat.v1.GraphDef()
    g.node.extend([_node("x", "Placeholder"), _node("call", "StatefulPartitionedCall", f="__inference_pruned_7"),
                   _node("out", "Identity")])
    g.library.function.extend([
        _function("__inference_pruned_7", [_node("TRTEngineOp_000_000", "TRTEngineOp",
                                                 segment_func="TRTEngineOp_000_000_native_segment"),
                                           _node("sm", "Softmax")]),
        _function("TRTEngineOp_000_000_native_segment", _ops("s", ["MatMul", "BiasAdd", "Relu"])),
        _function("__inference_unused_9", _ops("u", ["Lgamma", "Lgamma"])),
    ])
    r = conversion_report(g)
    assert r["trt_segments"] == 1
    assert r["segment_node_counts"] == {"TRTEngineOp_000_000": 3}
    assert r["ops_in_tf"] == {"Softmax": 1}
    assert r["trt_converted_fraction"] == pytest.approx(0.75)


def test_report_without_native_segments_still_counts_engines():
    g = tf.compat.v1.GraphDef()
    g.node.extend([_node("TRTEngineOp_000_000", "TRTEngineOp"), _node("sm", "Softmax")])
    r = conversion_report(g)
    assert r["trt_segments"] == 1 and r["segment_node_counts"] == {"TRTEngineOp_000_000": None}
    assert r["trt_converted_fraction"] is None  # unknown, not 0


def test_report_warns_about_fragmentation():
    g = tf.compat.v1.GraphDef()
    for i in range(5):
        g.node.append(_node(f"TRTEngineOp_000_{i:03d}", "TRTEngineOp", segment_func=f"seg_{i}"))
        g.library.function.append(_function(f"seg_{i}", _ops(f"s{i}", ["Mul", "Add", "Relu"])))
        g.node.append(_node(f"lg_{i}", "Lgamma"))
    r = conversion_report(g)
    assert r["trt_segments"] == 5
    assert any("fragmented" in w and "engine.minimum_segment_size" in w and "Lgamma" in w for w in r["warnings"])


def test_report_warns_when_the_engine_cache_is_smaller_than_the_timed_shapes():
    g = _two_segment_graph()
    implicit = {"use_dynamic_shape": False}
    r = conversion_report(g, params=params(**implicit), timed_batch_sizes=[1, 8])
    assert any("engine.maximum_cached_engines=1 < 2" in w and "fix: engine.maximum_cached_engines=2" in w
               for w in r["warnings"])
    r = conversion_report(g, params=params(maximum_cached_engines=2, **implicit), timed_batch_sizes=[1, 8])
    assert not any("maximum_cached_engines" in w for w in r["warnings"])
    r = conversion_report(g, params=params(maximum_cached_engines=2, max_batch_size=32, **implicit),
                          timed_batch_sizes=[1, 8])
    assert any("fix: engine.maximum_cached_engines=3" in w for w in r["warnings"])


def test_report_warns_about_runtime_builds_with_dynamic_shapes_and_without_prebuilt_engines():
    g = _two_segment_graph()
    r = conversion_report(g, params=params(use_dynamic_shape=True), timed_batch_sizes=[1, 8])
    assert any("allow_build_at_runtime=true" in n for n in r["notes"])  # engines are pre-built: a note
    assert r["warnings"] == []  # one engine, one profile over 1..8: no cache trap
    r = conversion_report(g, params=params(allow_build_at_runtime=False), timed_batch_sizes=[1, 8])
    assert r["notes"] == []
    r = conversion_report(g, params=params(build_engines=False, use_dynamic_shape=False, maximum_cached_engines=2),
                          timed_batch_sizes=[1, 8])
    assert any("build_engines=false" in w for w in r["warnings"])


def test_report_on_a_real_savedmodel_with_ops_tensorrt_cannot_take(unconvertible):
    loaded = tf.saved_model.load(unconvertible.path)
    graph = loaded.signatures["serving_default"].graph.as_graph_def()
    r = conversion_report(graph, params=params(), timed_batch_sizes=[1, 8])
    assert r["trt_segments"] == 0
    assert r["trt_converted_fraction"] == 0.0
    assert r["nodes_in_trt"] == 0 and r["nodes_in_tf"] > 0
    for op in ("Lgamma", "AsString", "StringLength"):
        assert r["ops_in_tf"].get(op, 0) >= 1, (op, r["ops_in_tf"])
    assert not set(r["ops_in_tf"]) & {"Placeholder", "Identity", "StatefulPartitionedCall", "NoOp"}
    assert any("no TensorRT segment" in w and "Lgamma" in w for w in r["warnings"])


# ---------------------------------------------------------------------------------------------
# error hints and logs


def test_build_oom_text_maps_to_a_one_line_hint():
    text = ("2 root error(s) found. (0) Internal: 1: [optimizer.cpp::computeCosts::3728] Error Code 10: "
            "Internal Error (Could not find any implementation for node conv1 + relu1.)\n...")
    hint = trt_error_hint(text)
    assert "engine.max_workspace_size_bytes" in hint and "batch_size" in hint and "\n" not in hint
    assert "docker/" in trt_error_hint("RuntimeError: Tensorflow has not been built with TensorRT support.")
    assert trt_error_hint("ValueError: shapes (2,3) and (4,5) not aligned") is None


def test_log_warnings_catch_silent_fallbacks_and_build_oom():
    log = ("W tensorflow/compiler/tf2tensorrt/kernels/trt_engine_op.cc:1102] TF-TRT Warning: Engine creation for "
           "TRTEngineOp_000_000 failed. The native segment will be used instead. Reason: INTERNAL: Could not find "
           "any implementation for node conv1.\n")
    warnings = log_warnings(log)
    assert any("1 message(s) about falling back" in w for w in warnings)
    assert any("engine.max_workspace_size_bytes" in w for w in warnings)
    assert log_warnings("I ... Loaded TensorRT 10.7.0 and linked TensorFlow against TensorRT 10.7.0\n") == []


def test_known_tftrt_failures_are_reraised_with_the_hint_and_others_pass_through():
    with pytest.raises(TrtsweepError, match="engine.max_workspace_size_bytes") as err, _hinted_errors():
        raise RuntimeError("Internal Error (Could not find any implementation for node dense)")
    assert isinstance(err.value.__cause__, RuntimeError) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unrelated"), _hinted_errors():
        raise ValueError("unrelated")


def test_a_generic_failure_gets_the_hint_from_the_native_build_log(tmp_path):
    log = tmp_path / "build.log"
    log.write_text("E ... [optimizer.cpp] Error Code 10: Internal Error (Could not find any implementation for node x)")
    with pytest.raises(TrtsweepError, match="engine.max_workspace_size_bytes"), _hinted_errors(log):
        raise RuntimeError("Failed to build TensorRT engine")


def test_native_log_capture_records_fd2_and_restores_it(tmp_path):
    log = tmp_path / "build.log"
    with _capture_native_log(log):
        os.write(2, b"TF-TRT Warning: Engine creation for TRTEngineOp_000_000 failed.\n")
    assert "Engine creation" in log.read_text()
    os.write(2, b"")  # fd 2 is usable again
    assert log.read_text().count("Engine creation") == 1


# ---------------------------------------------------------------------------------------------
# loaded model (TF-TRT saves a plain SavedModel; the loading code is the same with or without TRTEngineOps)


def test_loaded_model_returns_host_outputs_in_the_models_declared_order(unconvertible, tmp_path):
    assert _resolve_saved_model(Path(unconvertible.path)) == Path(unconvertible.path)
    with pytest.raises(ModelError, match="no TF-TRT SavedModel"):
        _resolve_saved_model(tmp_path)
    loaded = TFTRTModel(Path(unconvertible.path), unconvertible, batch_size=2)
    x = np.array([[1, 2, 3, 4], [0.5, 1, 1.5, 2]], np.float32)
    prepared = loaded.prepare({"x": x.astype(np.float64)})  # cast to the signature dtype outside timing
    assert prepared["x"].dtype == tf.float32
    n, y = loaded.run(prepared)  # model.outputs order: n, then y
    assert isinstance(n, np.ndarray) and n.dtype == np.int32 and n.shape == (2, 4)
    np.testing.assert_allclose(y, tf.math.lgamma(np.abs(x) + 1).numpy(), rtol=1e-6)
    described = loaded.describe()
    assert described["trt_segments"] == 0 and described["trt_converted_fraction"] == 0.0
    assert "Lgamma" in described["ops_in_tf"] and described["batch_size"] == 2


def test_loaded_model_rejects_a_missing_signature(unconvertible):
    wrong = dataclasses.replace(unconvertible, signature_key="predict")
    with pytest.raises(ModelError, match="no signature 'predict'"):
        TFTRTModel(Path(unconvertible.path), wrong, batch_size=1)


# ---------------------------------------------------------------------------------------------
# GPU facts


def test_gpu_facts_never_raises_and_is_fast_without_nvidia_smi():
    t0 = time.perf_counter()
    facts = gpu_facts()
    assert isinstance(facts, dict)
    import shutil

    if shutil.which("nvidia-smi") is None:
        assert facts == {} and time.perf_counter() - t0 < 1.0
    else:
        assert "gpu_name" in facts


def test_gpu_query_and_banner_parsing():
    facts = parse_gpu_query("NVIDIA A100-SXM4-40GB, 550.54.15, 1024, 40960\nNVIDIA A100-SXM4-40GB, 550.54.15, 3, "
                            "40960\n")
    assert facts == {"gpu_name": "NVIDIA A100-SXM4-40GB", "gpu_driver": "550.54.15", "gpu_count": 2,
                     "gpu_memory_used_mb": 1024, "gpu_memory_total_mb": 40960}
    assert parse_gpu_query("Tesla T4, 535.1, [N/A], [N/A]")["gpu_name"] == "Tesla T4"
    assert parse_gpu_query("") == {}
    assert parse_cuda_version("| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4     |") == "12.4"
    assert parse_cuda_version("no banner") is None


# ---------------------------------------------------------------------------------------------
# real conversions (GPU + TensorRT-enabled TensorFlow only)


def _gpu_params(**overrides) -> TFTRTParams:
    """TF-TRT's defaults, in dynamic-shape mode where the loaded TensorRT has no implicit batch (10+)."""
    p = params(**overrides)
    if implicit_batch_reason(p, AVAILABILITY.details.get("loaded_tensorrt")):
        p = dataclasses.replace(p, use_dynamic_shape=True)
    return p


def _native(model: ModelInfo, batch: dict) -> np.ndarray:
    loaded = tf.saved_model.load(model.path)
    outputs = loaded.signatures[model.signature_key](**{k: tf.constant(v) for k, v in batch.items()})
    return outputs[model.outputs[0].name].numpy()


@pytest.mark.gpu
@requires_tftrt
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 5e-2), ("int8", None)])
def test_real_conversion_load_and_run(tiny_convnet, tmp_path, precision, tolerance):
    eng = TFTRTEngine(_gpu_params(maximum_cached_engines=2))
    calib = _calibration(tiny_convnet, batches=4, batch_size=4) if precision == "int8" else None
    result = eng.convert(tiny_convnet, precision, calib, tmp_path / "out", batch_sizes=(1, 4))
    assert Path(result.artifact, "saved_model.pb").exists()
    assert result.metrics["trt_segments"] >= 1, result.report
    assert result.metrics["trt_converted_fraction"] > 0.5, result.report
    assert result.report["build_batch_sizes"] == [1, 4]
    assert result.convert_time_s > 0
    assert (result.calibrate_time_s > 0) == (precision == "int8")
    assert not any("no TensorRT segment" in w for w in result.report["warnings"])

    batch = _calibration(tiny_convnet, batches=1, batch_size=4, seed=1).batches[0]
    loaded = eng.load(Path(result.artifact), tiny_convnet, precision, 4)
    (out,) = loaded.run(loaded.prepare(batch))
    ref = _native(tiny_convnet, batch)
    assert out.shape == ref.shape == (4, 10)
    if tolerance is not None:
        np.testing.assert_allclose(out, ref, atol=tolerance, rtol=tolerance)
    else:  # int8: close in direction, not in every digit
        cos = float(np.sum(out * ref) / (np.linalg.norm(out) * np.linalg.norm(ref)))
        assert cos > 0.95, cos
    described = loaded.describe()
    assert described["trt_segments"] >= 1 and described["device"].endswith("GPU:0")
    assert described["gpu"].get("gpu_name")


@pytest.mark.gpu
@requires_tftrt
def test_real_conversion_with_dynamic_shapes_runs_every_built_batch_size(tiny_convnet, tmp_path):
    eng = TFTRTEngine(params(use_dynamic_shape=True, dynamic_shape_profile_strategy="Range"))
    result = eng.convert(tiny_convnet, "fp16", None, tmp_path / "out", batch_sizes=(1, 2, 8))
    assert result.metrics["trt_segments"] >= 1, result.report
    for bs in (1, 2, 8):
        loaded = eng.load(Path(result.artifact), tiny_convnet, "fp16", bs)
        batch = _calibration(tiny_convnet, batches=1, batch_size=bs, seed=bs).batches[0]
        (out,) = loaded.run(loaded.prepare(batch))
        np.testing.assert_allclose(out, _native(tiny_convnet, batch), atol=5e-2, rtol=5e-2)
