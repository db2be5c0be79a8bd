"""The installed TF-TRT API: the keyword arguments of every TF-TRT call, checked by name.

Every keyword passed to TensorFlow is checked against ``inspect.signature`` of the *installed*
classes, so an older or newer TensorFlow that lacks an argument fails with a :class:`ConfigError`
instead of silently dropping a setting.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Mapping

from trtsweep.errors import ConfigError

if TYPE_CHECKING:  # type-only: at run time no private module imports the package
    from trtsweep.engines.tftrt import TFTRTParams

PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}

# The installed API each call is checked against (attribute paths inside ``trt_convert``).
API_CONVERSION_PARAMS = "TrtConversionParams"
API_INIT = "TrtGraphConverterV2.__init__"
API_CONVERT = "TrtGraphConverterV2.convert"
API_BUILD = "TrtGraphConverterV2.build"
API_SAVE = "TrtGraphConverterV2.save"

#: where each engine parameter goes in the TF-TRT API (checked by the tests and ``check_installed_api``)
FIELD_TO_API: dict[str, tuple[tuple[str, str], ...]] = {
    "max_workspace_size_bytes": ((API_CONVERSION_PARAMS, "max_workspace_size_bytes"),
                                 (API_INIT, "max_workspace_size_bytes")),
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


def trt_call_kwargs(params: TFTRTParams, precision: str, input_dir: str = "", signature_key: str = "serving_default",
                    output_dir: str = "") -> dict[str, dict[str, Any]]:
    """Keyword arguments of every TF-TRT call, keyed by the API they go to.

    ``convert``/``build`` callables are ``None`` placeholders filled in by :meth:`TFTRTEngine.convert`.
    The converter gets individual arguments (``conversion_params=`` is deprecated since TF 2.8); the
    ``TrtConversionParams`` mapping is kept so the tests check both spellings of every setting.
    """
    if precision not in PRECISION_MODES:
        raise ConfigError(f"engine=tftrt does not support precision={precision}; fix: one of "
                          f"{', '.join(PRECISION_MODES)}")
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
    except Exception:  # noqa: BLE001 - TF missing or broken: the message names no version  # pragma: no cover
        version = "?"
    return (f"{setting} maps to {api}({arg}=...), which the installed TensorFlow {version} does not accept; "
            f"fix: use TensorFlow 2.16/2.17 with TensorRT (NGC container, see docker/)")
