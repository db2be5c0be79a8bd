"""TF-TRT engine: SavedModel → ``TrtGraphConverterV2`` → SavedModel whose TensorRT-compatible
subgraphs are replaced by ``TRTEngineOp`` segments (fp32 / fp16 / int8 with calibration).

Written against the TF-TRT API of TensorFlow 2.16–2.17, the last releases built with TensorRT
(NGC TensorFlow containers, see ``docker/``).  Every keyword passed to TensorFlow is checked against
``inspect.signature`` of the *installed* classes, so an older or newer TensorFlow that lacks an
argument fails with a :class:`ConfigError` instead of silently dropping a setting.

Engines are built inside :meth:`TFTRTEngine.convert` (``converter.build``) for every batch size the
sweep will time, and saved with the model, so no TensorRT engine is built inside the timed loop.

TensorFlow is imported only inside functions.  :meth:`TFTRTEngine.availability` answers at once
where there is no NVIDIA driver; elsewhere it probes TensorFlow in a child process (unless the caller
has imported it already), so planning a sweep stays TF-free and a TensorRT library that crashes when
loaded cannot take the planner down with it.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from trtsweep.engines.base import (
    Availability,
    Batch,
    CalibrationData,
    ConversionResult,
    Engine,
    ModelInfo,
    Runner,
    TensorSpec,
)
from trtsweep.errors import ConfigError, EngineUnavailable, ModelError, TrtsweepError, one_line

SAVED_MODEL_DIR = "saved_model"
BUILD_LOG = "tftrt_build.log"

PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
#: ``trt_convert.supported_profile_strategies()`` of TF 2.16/2.17 (and 2.21)
PROFILE_STRATEGIES = ("Range", "Optimal", "Range+Optimal", "ImplicitBatchModeCompatible")
DEFAULT_PROFILE_STRATEGY = "Range"
#: TF-TRT casts the workspace size to int64 and adds to it: it uses ``sys.maxsize - 512`` as its own cap
MAX_WORKSPACE_BYTES = sys.maxsize - 512

USE_TENSORRT_TF = "use a TensorRT-enabled TensorFlow, e.g. an NGC TensorFlow container (see docker/)"

# The installed API each call is checked against (attribute paths inside ``trt_convert``).
API_CONVERSION_PARAMS = "TrtConversionParams"
API_INIT = "TrtGraphConverterV2.__init__"
API_CONVERT = "TrtGraphConverterV2.convert"
API_BUILD = "TrtGraphConverterV2.build"
API_SAVE = "TrtGraphConverterV2.save"

#: where each engine parameter goes in the TF-TRT API (checked by the tests and ``check_installed_api``)
FIELD_TO_API: dict[str, tuple[tuple[str, str], ...]] = {
    "max_workspace_size_bytes": ((API_CONVERSION_PARAMS, "max_workspace_size_bytes"), (API_INIT, "max_workspace_size_bytes")),
    "minimum_segment_size": ((API_CONVERSION_PARAMS, "minimum_segment_size"), (API_INIT, "minimum_segment_size")),
    "maximum_cached_engines": ((API_CONVERSION_PARAMS, "maximum_cached_engines"), (API_INIT, "maximum_cached_engines")),
    "use_calibration": ((API_CONVERSION_PARAMS, "use_calibration"), (API_INIT, "use_calibration")),
    "allow_build_at_runtime": ((API_CONVERSION_PARAMS, "allow_build_at_runtime"), (API_INIT, "allow_build_at_runtime")),
    "use_dynamic_shape": ((API_INIT, "use_dynamic_shape"),),
    "dynamic_shape_profile_strategy": ((API_INIT, "dynamic_shape_profile_strategy"),),
    # TF-TRT V2 has no max_batch_size: it becomes one of the input shapes build() builds engines for
    "max_batch_size": ((API_BUILD, "input_fn"),),
    "build_engines": ((API_BUILD, "input_fn"),),
}

#: op types that are plumbing, not work: counted neither as converted nor as left in TensorFlow
PLUMBING_OPS = frozenset({
    "Placeholder", "_Arg", "_Retval", "NoOp", "Identity", "IdentityN", "Const",
    "StatefulPartitionedCall", "PartitionedCall",
})
TRT_ENGINE_OP = "TRTEngineOp"

#: fragmentation: at least this many segments, most of them smaller than SMALL_SEGMENT_NODES nodes
FRAGMENTED_MIN_SEGMENTS = 4
SMALL_SEGMENT_NODES = 10

#: TensorRT / TF-TRT error or log text → one-line hint (lower-case substrings)
_ERROR_HINTS: tuple[tuple[str, str], ...] = (
    ("could not find any implementation",
     "TensorRT found no kernel that fits the workspace/GPU memory while building an engine; "
     "fix: raise engine.max_workspace_size_bytes (e.g. 4294967296) or lower batch_size"),
    ("not been built with tensorrt", f"this TensorFlow has no TensorRT support; {USE_TENSORRT_TF}"),
    ("incompatible tensorrt major version",
     f"the TensorRT library loaded at run time differs in major version from the one TensorFlow was built with; {USE_TENSORRT_TF}"),
    ("specified device is not a gpu", "TF-TRT needs a visible NVIDIA GPU; run with `docker run --gpus all` (see docker/)"),
    ("op type not registered 'trtengineop'", f"this SavedModel was converted by TF-TRT and needs TensorRT to load; {USE_TENSORRT_TF}"),
    ("out of memory", "the GPU ran out of memory; fix: lower batch_size or engine.max_workspace_size_bytes"),
)
#: TF-TRT log lines that mean a segment silently runs in TensorFlow instead of TensorRT
_FALLBACK_LOG_MARKERS = ("native segment will be used instead", "running native segment")


@dataclass
class TFTRTParams:
    """TF-TRT parameters (``conf/engine/tftrt.yaml``); all change the converted artifact."""

    max_workspace_size_bytes: int = 1 << 30
    minimum_segment_size: int = 3
    #: largest batch size to pre-build engines for, on top of the sweep's batch sizes
    max_batch_size: int = 1
    maximum_cached_engines: int = 1
    use_calibration: bool = True
    allow_build_at_runtime: bool = True
    #: TF-TRT's own default is False (implicit batch), which TensorRT 10 no longer has: see implicit_batch_reason
    use_dynamic_shape: bool = True
    dynamic_shape_profile_strategy: str = DEFAULT_PROFILE_STRATEGY
    #: run ``converter.build()`` so engines are built and saved at conversion, not at first call
    build_engines: bool = True


# ---------------------------------------------------------------------------------------------
# validation and the keyword arguments handed to TF-TRT


def validate_params(p: TFTRTParams) -> None:
    """Raise :class:`ConfigError` naming the field and the fix for the first invalid value."""
    if p.max_workspace_size_bytes <= 0:
        raise ConfigError(f"engine.max_workspace_size_bytes={p.max_workspace_size_bytes} must be > 0; "
                          f"fix: engine.max_workspace_size_bytes=1073741824 (1 GiB)")
    if p.max_workspace_size_bytes > MAX_WORKSPACE_BYTES:
        raise ConfigError(f"engine.max_workspace_size_bytes={p.max_workspace_size_bytes} overflows TF-TRT's int64 "
                          f"(max {MAX_WORKSPACE_BYTES}); fix: engine.max_workspace_size_bytes=4294967296")
    if p.minimum_segment_size < 1:
        raise ConfigError(f"engine.minimum_segment_size={p.minimum_segment_size} must be ≥ 1 (TF-TRT's -1 disables "
                          f"conversion of the main graph, which leaves nothing to measure); fix: engine.minimum_segment_size=3")
    if p.max_batch_size < 1:
        raise ConfigError(f"engine.max_batch_size={p.max_batch_size} must be ≥ 1; fix: engine.max_batch_size=1 "
                          f"(engines are built for every swept batch_size anyway)")
    if p.maximum_cached_engines < 1:
        raise ConfigError(f"engine.maximum_cached_engines={p.maximum_cached_engines} must be ≥ 1; "
                          f"fix: engine.maximum_cached_engines=<number of swept batch sizes>")
    strategy = p.dynamic_shape_profile_strategy
    if strategy not in PROFILE_STRATEGIES:
        near = [s for s in PROFILE_STRATEGIES if s.lower() == str(strategy).lower()]
        fix = near[0] if near else DEFAULT_PROFILE_STRATEGY
        raise ConfigError(f"engine.dynamic_shape_profile_strategy={strategy!r} is unknown; fix: "
                          f"engine.dynamic_shape_profile_strategy={fix} (one of {', '.join(PROFILE_STRATEGIES)})")
    if strategy != DEFAULT_PROFILE_STRATEGY and not p.use_dynamic_shape:
        raise ConfigError(f"engine.dynamic_shape_profile_strategy={strategy} only applies with engine.use_dynamic_shape=true; "
                          f"fix: engine.use_dynamic_shape=true or engine.dynamic_shape_profile_strategy={DEFAULT_PROFILE_STRATEGY}")
    if p.use_dynamic_shape and not p.build_engines:
        raise ConfigError("engine.use_dynamic_shape=true needs engine.build_engines=true: TF-TRT collects the "
                          "optimization profiles in converter.build(); fix: engine.build_engines=true")
    if not p.build_engines and not p.allow_build_at_runtime:
        raise ConfigError("engine.build_engines=false with engine.allow_build_at_runtime=false leaves every TRTEngineOp "
                          "without an engine, so the model would run entirely in TensorFlow; "
                          "fix: engine.build_engines=true")


def implicit_batch_reason(params: TFTRTParams, loaded_tensorrt: Sequence[int] | None) -> str | None:
    """Why implicit-batch conversion cannot work with the loaded TensorRT, or None.

    TensorRT 10 removed implicit batch mode (NGC containers from 24.05 on ship TensorRT 10): with
    ``use_dynamic_shape=false`` TF-TRT then builds no engine and silently runs native TensorFlow.
    """
    if params.use_dynamic_shape or not loaded_tensorrt or loaded_tensorrt[0] < 10:
        return None
    return (f"TensorRT {_version(loaded_tensorrt)} has no implicit batch mode, so engine.use_dynamic_shape=false "
            f"would build no TensorRT engine (TF-TRT silently runs TensorFlow); fix: engine.use_dynamic_shape=true")


def build_batch_sizes(params: TFTRTParams, batch_sizes: Iterable[int]) -> tuple[int, ...]:
    """Batch sizes ``build()`` builds engines for: the sweep's, plus ``max_batch_size``; ascending.

    Ascending matters in implicit-batch mode: the engine cache is LRU, so with a small
    ``maximum_cached_engines`` the largest engine (which can serve every smaller batch) is kept.
    """
    sizes = {int(b) for b in batch_sizes} | {int(params.max_batch_size)}
    bad = sorted(b for b in sizes if b < 1)
    if bad:
        raise ConfigError(f"batch_size={bad[0]} is invalid: must be ≥ 1; fix: batch_size=1")
    return tuple(sorted(sizes))


def trt_call_kwargs(params: TFTRTParams, precision: str, input_dir: str = "", signature_key: str = "serving_default",
                    output_dir: str = "") -> dict[str, dict[str, Any]]:
    """Keyword arguments of every TF-TRT call, keyed by the API they go to.

    ``convert``/``build`` callables are ``None`` placeholders filled in by :meth:`TFTRTEngine.convert`.
    The converter gets individual arguments (``conversion_params=`` is deprecated since TF 2.8); the
    ``TrtConversionParams`` mapping is kept so the tests check both spellings of every setting.
    """
    if precision not in PRECISION_MODES:
        raise ConfigError(f"engine=tftrt does not support precision={precision}; fix: one of {', '.join(PRECISION_MODES)}")
    conversion = {
        "max_workspace_size_bytes": params.max_workspace_size_bytes,
        "precision_mode": PRECISION_MODES[precision],
        "minimum_segment_size": params.minimum_segment_size,
        "maximum_cached_engines": params.maximum_cached_engines,
        "use_calibration": params.use_calibration,
        "allow_build_at_runtime": params.allow_build_at_runtime,
    }
    init = {
        "input_saved_model_dir": input_dir,
        "input_saved_model_signature_key": signature_key,
        "use_dynamic_shape": params.use_dynamic_shape,
        "dynamic_shape_profile_strategy": params.dynamic_shape_profile_strategy,
        **conversion,
    }
    return {
        API_CONVERSION_PARAMS: conversion,
        API_INIT: init,
        API_CONVERT: {"calibration_input_fn": None},
        API_BUILD: {"input_fn": None},
        API_SAVE: {"output_saved_model_dir": output_dir},
    }


def installed_api(api: str) -> Callable:
    """The installed TF-TRT callable named ``api`` (e.g. ``TrtGraphConverterV2.build``)."""
    from tensorflow.python.compiler.tensorrt import trt_convert

    obj: Any = trt_convert
    for part in api.split("."):
        obj = getattr(obj, part)
    return obj


def installed_arg_names(api: str) -> set[str]:
    sig = inspect.signature(installed_api(api))
    return {n for n, p in sig.parameters.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_installed_api(calls: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise :class:`ConfigError` if the installed TF-TRT lacks an argument we would pass."""
    for api, kwargs in calls.items():
        accepted = installed_arg_names(api)
        for arg in kwargs:
            if arg not in accepted:
                raise ConfigError(_missing_arg_message(api, arg))


def _missing_arg_message(api: str, arg: str) -> str:
    fields = [f for f, targets in FIELD_TO_API.items() if (api, arg) in targets]
    setting = f"engine.{fields[0]}" if fields else f"the {arg} argument"
    try:
        import tensorflow as tf

        version = tf.__version__
    except Exception:  # pragma: no cover - TF missing altogether
        version = "?"
    return (f"{setting} maps to {api}({arg}=...), which the installed TensorFlow {version} does not accept; "
            f"fix: use TensorFlow 2.16/2.17 with TensorRT (NGC container, see docker/)")


def trt_error_hint(text: str) -> str | None:
    """A one-line hint for a known TF-TRT / TensorRT error or log text, else ``None``."""
    low = text.lower()
    for needle, hint in _ERROR_HINTS:
        if needle in low:
            return hint
    return None


def log_warnings(log_text: str) -> list[str]:
    """Warnings from TF-TRT's native log: engines that failed to build and fell back to TensorFlow."""
    low = log_text.lower()
    out: list[str] = []
    fallbacks = sum(low.count(m) for m in _FALLBACK_LOG_MARKERS)
    if fallbacks:
        out.append(f"TF-TRT logged {fallbacks} message(s) about falling back to native TensorFlow segments while "
                   f"building (see {BUILD_LOG}); those segments are not accelerated")
    if "could not find any implementation" in low:  # a TensorRT build that ran out of workspace
        out.append(trt_error_hint(low))
    return out


# ---------------------------------------------------------------------------------------------
# inputs for calibration and engine building


def input_order(model: ModelInfo) -> list[str]:
    """Order in which the converted function takes positional inputs.

    A signature takes keyword inputs; ``nest.flatten`` orders a dict by sorted key, and that is the
    order of the signature function's ``inputs`` which TF-TRT's converted function is called with.
    """
    return sorted(spec.name for spec in model.inputs)


def _np_dtype(spec: TensorSpec) -> np.dtype:
    try:
        return np.dtype(spec.dtype)
    except TypeError:
        raise ModelError(f"input '{spec.name}' has dtype {spec.dtype}, which has no numpy equivalent; "
                         f"TF-TRT needs numeric inputs") from None


def _calibration_arrays(calibration: CalibrationData, model: ModelInfo) -> list[tuple[np.ndarray, ...]]:
    specs = {s.name: s for s in model.inputs}
    order = input_order(model)
    batches: list[tuple[np.ndarray, ...]] = []
    first_shapes: tuple[tuple[int, ...], ...] | None = None
    for i, batch in enumerate(calibration.batches):
        missing = [n for n in order if n not in batch]
        if missing:
            raise ModelError(f"calibration batch {i} lacks input '{missing[0]}' (has {', '.join(sorted(batch))})")
        arrays = tuple(np.asarray(batch[n], dtype=_np_dtype(specs[n])) for n in order)
        for name, arr in zip(order, arrays):
            want = specs[name].concrete(arr.shape[0] if arr.ndim else 1)
            if arr.shape != want:
                raise ModelError(f"calibration batch {i}: input '{name}' has shape {arr.shape}, signature expects {want}")
        shapes = tuple(a.shape for a in arrays)
        if first_shapes is None:
            first_shapes = shapes
        elif shapes != first_shapes:
            raise ConfigError(f"calibration batch {i} has shapes {shapes} but batch 0 has {first_shapes}; TF-TRT INT8 "
                              f"calibration needs one shape; fix: make data.calibration_samples a multiple of the calibration batch")
        batches.append(arrays)
    return batches


def calibration_input_fn(calibration: CalibrationData, model: ModelInfo) -> Callable[[], Iterator[tuple[np.ndarray, ...]]]:
    """Generator function for ``converter.convert(calibration_input_fn=...)``: one tuple per batch.

    Inputs are checked and cast here, before TensorFlow sees them, so a bad batch fails with a message.
    """
    batches = _calibration_arrays(calibration, model)
    if not batches:
        raise ConfigError("precision=int8 with engine=tftrt needs calibration data; fix: data.calibration_samples=128")

    def gen() -> Iterator[tuple[np.ndarray, ...]]:
        yield from batches

    return gen


def build_input_fn(model: ModelInfo, batch_sizes: Sequence[int]) -> Callable[[], Iterator[tuple[np.ndarray, ...]]]:
    """Generator function for ``converter.build(input_fn=...)``: one zero batch per batch size.

    Engine building depends on shapes, not values (INT8 ranges come from calibration).
    """
    specs = {s.name: s for s in model.inputs}
    order = input_order(model)
    shapes = [[(specs[n].concrete(bs), _np_dtype(specs[n])) for n in order] for bs in batch_sizes]

    def gen() -> Iterator[tuple[np.ndarray, ...]]:
        for per_input in shapes:
            yield tuple(np.zeros(shape, dtype=dtype) for shape, dtype in per_input)

    return gen


class _SpanTimer:
    """Time from a generator's first item to its exhaustion (calibration runs between the yields)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[[], Iterator[Any]]) -> Callable[[], Iterator[Any]]:
        def timed() -> Iterator[Any]:
            start = time.perf_counter()
            try:
                yield from fn()
            finally:
                self.seconds += time.perf_counter() - start

        return timed


# ---------------------------------------------------------------------------------------------
# what was converted


def _called_functions(node: Any) -> list[str]:
    names = []
    for value in node.attr.values():
        kind = value.WhichOneof("value")
        if kind == "func":
            names.append(value.func.name)
        elif kind == "list":
            names.extend(f.name for f in value.list.func)
    return names


def _segment_function(node: Any) -> str | None:
    if "segment_func" not in node.attr:
        return None
    attr = node.attr["segment_func"]
    return attr.func.name if attr.WhichOneof("value") == "func" and attr.func.name else None


def _work_ops(nodes: Iterable[Any]) -> Counter:
    return Counter(n.op for n in nodes if n.op not in PLUMBING_OPS)


def conversion_report(graph_def: Any, params: TFTRTParams | None = None, timed_batch_sizes: Sequence[int] = ()) -> dict:
    """Describe a (converted) GraphDef: TensorRT segments, work in TensorRT vs TensorFlow, traps.

    Walks the top-level graph and every library function reachable from it (TF2 puts
    ``TRTEngineOp`` nodes inside functions); a segment's size is the size of its ``segment_func``.
    Plumbing ops (:data:`PLUMBING_OPS`) are counted on neither side.  ``params`` and
    ``timed_batch_sizes`` enable the warnings that depend on the configuration.
    """
    library = {f.signature.name: f for f in graph_def.library.function}
    segments: dict[str, str | None] = {}  # TRTEngineOp node name -> segment function
    tf_ops: Counter = Counter()
    roots = [n for n in graph_def.node]
    pending = [name for n in roots for name in _called_functions(n)] if roots else list(library)
    bodies: list[Iterable[Any]] = [roots]
    seen: set[str] = set()
    all_nodes = [*roots, *(n for f in library.values() for n in f.node_def)]
    segment_funcs = {_segment_function(n) for n in all_nodes if n.op == TRT_ENGINE_OP} - {None}
    while pending:
        name = pending.pop()
        if name in seen or name in segment_funcs or name not in library:
            continue
        seen.add(name)
        bodies.append(library[name].node_def)
        pending.extend(c for n in library[name].node_def for c in _called_functions(n))
    for body in bodies:
        for node in body:
            if node.op == TRT_ENGINE_OP:
                segments[node.name] = _segment_function(node)
            elif node.op not in PLUMBING_OPS:
                tf_ops[node.op] += 1
    seg_sizes: dict[str, int | None] = {}
    trt_ops: Counter = Counter()
    for node_name, func in sorted(segments.items()):
        body = library.get(func) if func else None
        seg_sizes[node_name] = sum(_work_ops(body.node_def).values()) if body is not None else None
        if body is not None:
            trt_ops.update(_work_ops(body.node_def))
    in_trt = sum(v for v in seg_sizes.values() if v)
    in_tf = sum(tf_ops.values())
    total = in_trt + in_tf
    sizes_unknown = bool(seg_sizes) and all(v is None for v in seg_sizes.values())  # native segments removed
    report = {
        "trt_segments": len(segments),
        "nodes_in_trt": in_trt,
        "nodes_in_tf": in_tf,
        "nodes_total": total,
        "trt_converted_fraction": None if sizes_unknown else (round(in_trt / total, 6) if total else 0.0),
        "segment_node_counts": seg_sizes,
        "ops_in_tf": dict(tf_ops.most_common()),
        "ops_in_trt": dict(trt_ops.most_common()),
    }
    report["warnings"], report["notes"] = _report_findings(report, params, timed_batch_sizes)
    return report


def _fmt_ops(ops: Mapping[str, int], limit: int = 8) -> str:
    items = list(ops.items())
    text = ", ".join(f"{op}×{n}" for op, n in items[:limit])
    return text + (f", … ({len(items) - limit} more types)" if len(items) > limit else "") if items else "none"


def _report_findings(report: Mapping[str, Any], params: TFTRTParams | None,
                     timed: Sequence[int]) -> tuple[list[str], list[str]]:
    """(warnings, notes): warnings are traps that change what is measured; notes explain behaviour."""
    warnings: list[str] = []
    notes: list[str] = []
    n_seg = report["trt_segments"]
    if n_seg == 0:
        warnings.append("no TensorRT segment: the whole model runs in native TensorFlow (TF-TRT falls back silently); "
                        f"ops left in TensorFlow: {_fmt_ops(report['ops_in_tf'])}")
    sizes = [s for s in report["segment_node_counts"].values() if s is not None]
    small = [s for s in sizes if s < SMALL_SEGMENT_NODES]
    if n_seg >= FRAGMENTED_MIN_SEGMENTS and len(small) * 2 > len(sizes):
        warnings.append(f"fragmented conversion: {n_seg} TensorRT engines, {len(small)} with < {SMALL_SEGMENT_NODES} nodes "
                        f"(median {statistics.median(sizes):g}); every engine boundary costs a TensorFlow↔TensorRT hand-off "
                        f"and many small engines are often slower than native TensorFlow; fix: raise "
                        f"engine.minimum_segment_size, or avoid the ops that split the graph: {_fmt_ops(report['ops_in_tf'])}")
    if params is None:
        return warnings, notes
    if params.use_dynamic_shape and params.allow_build_at_runtime and n_seg:
        notes.append("engine.allow_build_at_runtime=true with engine.use_dynamic_shape=true: an engine missing from "
                        "the saved model is built at its first call (trtsweep warms up in load(), before timing); "
                        "shapes outside the built profiles run in native TensorFlow")
    if not params.build_engines and n_seg:
        warnings.append("engine.build_engines=false: no engine is pre-built, each is built at its first call "
                        "(in load(), before timing), so convert_time_s excludes TensorRT engine building")
    shapes = build_batch_sizes(params, timed) if timed else ()
    if not params.use_dynamic_shape and n_seg and params.maximum_cached_engines < len(shapes):
        warnings.append(f"engine.maximum_cached_engines={params.maximum_cached_engines} < {len(shapes)} input shapes "
                        f"(batch sizes {', '.join(map(str, shapes))}): each TRTEngineOp keeps only the most recent "
                        f"engines (LRU), so smaller batches run on a larger engine not tuned for them and a larger one is "
                        f"rebuilt at run time or falls back to TensorFlow; fix: engine.maximum_cached_engines={len(shapes)}")
    return warnings, notes


# ---------------------------------------------------------------------------------------------
# availability


def probe_tensorflow() -> dict:
    """Facts about TensorFlow's TensorRT support in *this* process; every step guarded, never raises."""
    facts: dict[str, Any] = {"tf_version": None, "built_with_cuda": None, "tensorrt_enabled": None,
                             "linked_tensorrt": None, "loaded_tensorrt": None, "gpus": [], "trt_convert": False}
    try:
        import tensorflow as tf
    except Exception as e:  # ImportError, or a broken CUDA install failing at import
        facts["error"] = one_line(e)
        return facts
    facts["tf_version"] = tf.__version__
    _guarded(facts, "built_with_cuda", lambda: bool(tf.test.is_built_with_cuda()))
    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils as trt_utils
    except Exception as e:
        facts["tensorrt_enabled"] = False
        facts["pywrap_error"] = one_line(e)
        trt_utils = None
    if trt_utils is not None:
        _guarded(facts, "tensorrt_enabled", lambda: bool(trt_utils.is_tensorrt_enabled()))
        _guarded(facts, "linked_tensorrt", lambda: [int(v) for v in trt_utils.get_linked_tensorrt_version()])
        _guarded(facts, "loaded_tensorrt", lambda: [int(v) for v in trt_utils.get_loaded_tensorrt_version()])
    _guarded(facts, "trt_convert", lambda: hasattr(installed_api("TrtGraphConverterV2"), "build"))
    _guarded(facts, "gpus", lambda: [d.name for d in tf.config.list_physical_devices("GPU")])
    return facts


def _guarded(facts: dict, key: str, fn: Callable[[], Any]) -> None:
    try:
        facts[key] = fn()
    except Exception as e:
        facts.setdefault("probe_errors", {})[key] = one_line(e)


def _version(v: Sequence[int] | None) -> str:
    return ".".join(str(x) for x in v) if v else "unknown"


def tensorrt_skew_warnings(linked: Sequence[int] | None, loaded: Sequence[int] | None) -> list[str]:
    """Converter/runtime TensorRT version skew, as TF-TRT's own check sees it."""
    if not linked or not loaded or not any(loaded):
        return []
    if linked[0] != loaded[0]:
        return [f"TensorRT major version skew: TensorFlow was built against {_version(linked)} but loads "
                f"{_version(loaded)}; TF-TRT refuses to convert"]
    if tuple(loaded) < tuple(linked):
        return [f"TensorRT {_version(loaded)} loaded is older than {_version(linked)} that TensorFlow was built "
                f"against; TF-TRT refuses to convert (TensorRT is not forward compatible)"]
    if tuple(loaded) != tuple(linked):
        return [f"TensorRT {_version(loaded)} loaded, TensorFlow built against {_version(linked)} "
                f"(newer minor/patch: supported, but engines are tied to the loaded version)"]
    return []


def availability_from_probe(facts: Mapping[str, Any]) -> Availability:
    """Turn :func:`probe_tensorflow` facts into an :class:`Availability` with a one-line reason."""
    details = dict(facts)
    details["warnings"] = tensorrt_skew_warnings(facts.get("linked_tensorrt"), facts.get("loaded_tensorrt"))
    version = facts.get("tf_version") or "?"
    linked, loaded = facts.get("linked_tensorrt"), facts.get("loaded_tensorrt")
    if facts.get("error"):
        return Availability(False, f"TF-TRT needs TensorFlow with TensorRT, but TensorFlow cannot be imported "
                                   f"({facts['error']}); {USE_TENSORRT_TF}", details)
    if not facts.get("tensorrt_enabled"):
        return Availability(False, f"TensorFlow {version} is built without TensorRT, so TF-TRT cannot convert; "
                                   f"{USE_TENSORRT_TF}", details)
    if not loaded or not any(loaded):
        return Availability(False, f"TensorFlow {version} is built against TensorRT {_version(linked)} but no TensorRT "
                                   f"library (libnvinfer) could be loaded; {USE_TENSORRT_TF}", details)
    if linked and (linked[0] != loaded[0] or tuple(loaded) < tuple(linked)):
        return Availability(False, f"TensorRT version skew: TensorFlow {version} was built against TensorRT "
                                   f"{_version(linked)} but loads {_version(loaded)}; {USE_TENSORRT_TF}", details)
    if not facts.get("trt_convert"):
        return Availability(False, f"TensorFlow {version} has no usable TrtGraphConverterV2; {USE_TENSORRT_TF}", details)
    if not facts.get("gpus"):
        return Availability(False, f"TensorFlow {version} has TensorRT {_version(loaded)} but sees no GPU (TF-TRT runs "
                                   f"on NVIDIA GPUs only); run on a GPU machine with `docker run --gpus all` (see docker/)",
                            details)
    return Availability(True, "", details)


_PROBE_MARKER = "@@TRTSWEEP_TFTRT_PROBE@@"
_PROBE_TIMEOUT_S = 300.0


def _probe_in_subprocess() -> dict:
    """Run :func:`probe_tensorflow` in a child interpreter (keeps the caller TF-free and crash-safe)."""
    import trtsweep

    src_root = str(Path(trtsweep.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    code = ("import json, sys\nfrom trtsweep.engines.tftrt import probe_tensorflow\n"
            f"sys.stdout.write('\\n{_PROBE_MARKER}' + json.dumps(probe_tensorflow()) + '\\n')\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"probing TensorFlow took more than {_PROBE_TIMEOUT_S:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_PROBE_MARKER):
            return json.loads(line[len(_PROBE_MARKER):])
    tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
    return {"error": f"probing TensorFlow failed (exit code {proc.returncode}): {tail[0][:300]}"}


def nvidia_driver_present() -> bool:
    """Cheap check (no TensorFlow import): an NVIDIA kernel driver device or ``nvidia-smi`` exists."""
    import shutil

    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def _installed_tf_version() -> str | None:
    import importlib.metadata

    for dist in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _availability() -> Availability:
    """Without an NVIDIA driver, answer at once (same answer in every process); else probe TensorFlow,
    in a child interpreter unless this process has imported it already."""
    if not nvidia_driver_present():
        details = {"tf_version": _installed_tf_version(), "gpus": [], "nvidia_driver": False,
                   "note": "TensorFlow not probed: no NVIDIA driver; probe_tensorflow() gives the full facts"}
        return Availability(False, "no NVIDIA GPU driver here (no /dev/nvidiactl, no nvidia-smi) and TF-TRT runs "
                                   f"TensorRT on NVIDIA GPUs only; on a GPU machine, {USE_TENSORRT_TF}", details)
    facts = probe_tensorflow() if "tensorflow" in sys.modules else _probe_in_subprocess()
    return availability_from_probe(facts)


def _require_available() -> Availability:
    avail = availability_from_probe(probe_tensorflow())
    if not avail.available:
        raise EngineUnavailable(avail.reason)
    return avail


# ---------------------------------------------------------------------------------------------
# process-level plumbing used by convert/load


def _allow_gpu_memory_growth() -> None:
    """Let TensorRT get GPU memory for its workspace: TensorFlow otherwise reserves nearly all of it."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # GPUs already initialised in this process: leave as is
            pass


@contextmanager
def _capture_native_log(path: Path) -> Iterator[None]:
    """Copy fd 2 (where TF-TRT/TensorRT C++ logs go) into ``path``; replayed to stderr afterwards."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:  # no usable fd 2: run without capture
        yield
        return
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except Exception:
                pass
            os.dup2(saved, 2)
            os.close(saved)
    try:
        os.write(2, path.read_bytes())
    except OSError:
        pass


@contextmanager
def _hinted_errors(log_path: Path | None = None) -> Iterator[None]:
    """Re-raise a TF-TRT failure with a one-line hint when its text (or the native log) is a known trap."""
    try:
        yield
    except TrtsweepError:
        raise
    except Exception as e:
        hint = trt_error_hint(str(e))
        if hint is None and log_path is not None and log_path.exists():
            hint = trt_error_hint(log_path.read_text(errors="replace"))
        if hint is None:
            raise
        raise TrtsweepError(f"{hint} [TF-TRT: {one_line(e)}]") from e


def _resolve_saved_model(artifact: Path) -> Path:
    artifact = Path(artifact)
    if (artifact / SAVED_MODEL_DIR / "saved_model.pb").exists():
        return artifact / SAVED_MODEL_DIR
    if (artifact / "saved_model.pb").exists():
        return artifact
    raise ModelError(f"{artifact} holds no TF-TRT SavedModel (no saved_model.pb); re-run the conversion with force=true")


# ---------------------------------------------------------------------------------------------
# runner and engine


class TFTRTRunner(Runner):
    """The converted SavedModel's signature at one batch size; engines deserialized in ``__init__``."""

    def __init__(self, saved_model_dir: Path, model: ModelInfo, batch_size: int):
        import tensorflow as tf

        self._tf = tf
        self._model = model
        self._batch_size = batch_size
        self._loaded = tf.saved_model.load(str(saved_model_dir))
        if model.signature_key not in self._loaded.signatures:
            raise ModelError(f"converted model has no signature '{model.signature_key}' "
                             f"(has {', '.join(self._loaded.signatures)}); re-run the conversion with force=true")
        self._fn = self._loaded.signatures[model.signature_key]
        self._device = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
        self._dtypes = {s.name: _np_dtype(s) for s in model.inputs}
        outputs = list(self._fn.structured_outputs)
        declared = [o.name for o in model.outputs]
        # same order as the native-TF reference (the model's declared outputs), else sorted keys
        self._output_keys = declared if declared and set(declared) <= set(outputs) else sorted(outputs)
        self._warm_up()

    def _warm_up(self) -> None:
        """One call at this batch size: deserializes (or builds) the engines before any timing."""
        zeros = {s.name: np.zeros(s.concrete(self._batch_size), dtype=self._dtypes[s.name]) for s in self._model.inputs}
        self.run(self.prepare(zeros))

    def prepare(self, batch: Batch) -> dict:
        tf = self._tf
        with tf.device(self._device):
            return {n: tf.identity(tf.constant(np.asarray(batch[n], dtype=dt))) for n, dt in self._dtypes.items()}

    def run(self, prepared: dict) -> list[np.ndarray]:
        out = self._fn(**prepared)
        return [out[k].numpy() for k in self._output_keys]  # .numpy() copies to host: the GPU sync point

    def describe(self) -> dict:
        from trtsweep.gpu import gpu_facts

        report = conversion_report(self._fn.graph.as_graph_def())
        return {
            "device": self._device,
            "batch_size": self._batch_size,
            "trt_segments": report["trt_segments"],
            "trt_converted_fraction": report["trt_converted_fraction"],
            "segment_node_counts": report["segment_node_counts"],
            "ops_in_tf": report["ops_in_tf"],
            "gpu": gpu_facts(),
        }


class TFTRTEngine(Engine):
    name = "tftrt"
    precisions = tuple(PRECISION_MODES)
    Params = TFTRTParams

    # ---- planning ----
    @classmethod
    def availability(cls) -> Availability:
        return _availability()

    @classmethod
    def diagnose(cls) -> dict:
        """The full probe even without a GPU driver: TF version, CUDA/TensorRT build, TensorRT versions, GPUs."""
        facts = _probe_in_subprocess()
        return {k: v for k, v in availability_from_probe(facts).details.items() if k != "note"}

    @classmethod
    def validate(cls, params: TFTRTParams) -> None:
        validate_params(params)

    @classmethod
    def unsupported(cls, precision: str, params: Any, model: ModelInfo | None = None) -> str | None:
        reason = super().unsupported(precision, params, model)
        if reason is not None or params is None:
            return reason
        if precision == "int8" and not params.use_calibration:
            return ("engine=tftrt precision=int8 with engine.use_calibration=false needs a quantization-aware model "
                    "with dynamic ranges on every tensor, which trtsweep does not produce; "
                    "fix: engine.use_calibration=true")
        avail = cls.availability()
        return implicit_batch_reason(params, avail.details.get("loaded_tensorrt")) if avail.available else None

    @classmethod
    def needs_calibration(cls, precision: str, params: Any) -> bool:
        # params is None when only the precision is known (e.g. TrialSpec.conversion_key): default is True
        return precision == "int8" and (params is None or bool(params.use_calibration))

    @classmethod
    def calibration_batch_size(cls, params: Any, batch_sizes: list[int]) -> int:
        """The largest built batch size: TF-TRT calibrates on one input shape, which must lie inside the
        dynamic-shape profile (built sizes), and in implicit-batch mode the calibrated engine is built at
        that size, so it must be the largest for every timed batch to fit it."""
        return max(build_batch_sizes(params if params is not None else TFTRTParams(), batch_sizes or [1]))

    @classmethod
    def process_env(cls, params: Any) -> dict[str, str]:
        return {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}

    # ---- work ----
    def convert(self, model: ModelInfo, precision: str, calibration: CalibrationData | None, out_dir: Path,
                batch_sizes: Iterable[int] = (1,)) -> ConversionResult:
        params: TFTRTParams = self.params
        timed = tuple(batch_sizes)
        avail = _require_available()
        implicit = implicit_batch_reason(params, avail.details.get("loaded_tensorrt"))
        if implicit:
            raise ConfigError(implicit)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        shapes = build_batch_sizes(params, timed)
        calls = trt_call_kwargs(params, precision, model.path, model.signature_key, str(out_dir / SAVED_MODEL_DIR))
        check_installed_api(calls)
        calib_timer = _SpanTimer()
        if self.needs_calibration(precision, params):
            if calibration is None or len(calibration) == 0:
                raise ConfigError("precision=int8 with engine=tftrt needs calibration data; fix: data.calibration_samples=128")
            calls[API_CONVERT]["calibration_input_fn"] = calib_timer.wrap(calibration_input_fn(calibration, model))
        calls[API_BUILD]["input_fn"] = build_input_fn(model, shapes)

        from tensorflow.python.compiler.tensorrt import trt_convert

        _allow_gpu_memory_growth()
        log_path = out_dir / BUILD_LOG
        t0 = time.perf_counter()
        with _hinted_errors(log_path), _capture_native_log(log_path):
            converter = trt_convert.TrtGraphConverterV2(**calls[API_INIT])
            converted = converter.convert(**calls[API_CONVERT])
            if params.build_engines:
                converter.build(**calls[API_BUILD])
            converter.save(**calls[API_SAVE])
        total_s = time.perf_counter() - t0

        report = conversion_report(converted.graph.as_graph_def(), params=params, timed_batch_sizes=timed)
        report["warnings"] += log_warnings(log_path.read_text(errors="replace") if log_path.exists() else "")
        report.update({
            "precision_mode": PRECISION_MODES[precision],
            "build_batch_sizes": list(shapes) if params.build_engines else [],
            "calibration_batches": len(calibration) if calls[API_CONVERT]["calibration_input_fn"] else 0,
            "converter_kwargs": {k: v for k, v in calls[API_INIT].items()},
            "tensorflow": avail.details.get("tf_version"),
            "tensorrt_linked": _version(avail.details.get("linked_tensorrt")),
            "tensorrt_loaded": _version(avail.details.get("loaded_tensorrt")),
        })
        report["warnings"] += avail.details.get("warnings", [])
        return ConversionResult(
            artifact=str(out_dir / SAVED_MODEL_DIR),
            convert_time_s=max(total_s - calib_timer.seconds, 0.0),
            calibrate_time_s=calib_timer.seconds,
            report=report,
            metrics={"trt_segments": report["trt_segments"], "trt_converted_fraction": report["trt_converted_fraction"]},
        )

    def load(self, artifact: Path, model: ModelInfo, precision: str, batch_size: int) -> Runner:
        _require_available()
        _allow_gpu_memory_growth()
        with _hinted_errors():
            return TFTRTRunner(_resolve_saved_model(Path(artifact)), model, batch_size)


ENGINE = TFTRTEngine

__all__ = [
    "ENGINE", "TFTRTEngine", "TFTRTParams", "TFTRTRunner", "FIELD_TO_API", "PROFILE_STRATEGIES",
    "availability_from_probe", "build_batch_sizes", "build_input_fn", "calibration_input_fn",
    "check_installed_api", "conversion_report", "implicit_batch_reason", "input_order", "log_warnings",
    "probe_tensorflow",
    "trt_call_kwargs", "trt_error_hint", "validate_params",
]
