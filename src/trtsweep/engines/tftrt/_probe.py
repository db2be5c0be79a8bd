"""Can TF-TRT run here?  Probe TensorFlow's TensorRT support (in a child interpreter unless the caller
has imported TensorFlow already) and turn the facts into an :class:`Availability` with a one-line reason.

Without an NVIDIA driver the answer comes at once, with no TensorFlow import.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from trtsweep.engines.base import Availability
from trtsweep.engines.tftrt._api import installed_api
from trtsweep.engines.tftrt._diagnostics import USE_TENSORRT_TF
from trtsweep.errors import EngineUnavailable, one_line


def probe_tensorflow() -> dict:
    """Facts about TensorFlow's TensorRT support in *this* process; every step guarded, never raises."""
    facts: dict[str, Any] = {"tf_version": None, "built_with_cuda": None, "tensorrt_enabled": None,
                             "linked_tensorrt": None, "loaded_tensorrt": None, "gpus": [], "trt_convert": False}
    try:
        import tensorflow as tf
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken CUDA install failing at import: a fact
        facts["error"] = one_line(e)
        return facts
    facts["tf_version"] = tf.__version__
    _guarded(facts, "built_with_cuda", lambda: bool(tf.test.is_built_with_cuda()))
    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils as trt_utils
    except Exception as e:  # noqa: BLE001 - no TensorRT in this TF build (or a broken one): a fact
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
    except Exception as e:  # noqa: BLE001 - the probe never raises: each failure is recorded as a fact
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
        return Availability(False, f"TensorFlow {version} has no usable TrtGraphConverterV2; {USE_TENSORRT_TF}",
                            details)
    if not facts.get("gpus"):
        return Availability(False, f"TensorFlow {version} has TensorRT {_version(loaded)} but sees no GPU (TF-TRT runs "
                                   f"on NVIDIA GPUs only); run on a GPU machine with `docker run --gpus all` (see "
                                   "docker/)",
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
    code = ("import json, sys\nfrom trtsweep.engines.tftrt._probe import probe_tensorflow\n"
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
