"""GPU facts recorded with a trial (name, driver, CUDA, TensorRT, memory), via ``nvidia-smi``.

:func:`gpu_facts` never raises and returns ``{}`` at once where there is no ``nvidia-smi`` (no NVIDIA
driver), so every trial can call it.  It does not import TensorFlow; TensorRT versions come from
TensorFlow only if the process has already imported it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from contextlib import suppress

QUERY_FIELDS = ("name", "driver_version", "memory.used", "memory.total", "uuid")
_TIMEOUT_S = 5.0
_CUDA_RE = re.compile(r"CUDA Version:\s*([0-9][0-9.]*)")


def gpu_facts(timeout_s: float = _TIMEOUT_S) -> dict:
    """Facts about the first GPU this process sees, or ``{}`` (no nvidia-smi, no driver, error)."""
    try:
        exe = shutil.which("nvidia-smi")
        device = _visible_device()
        if exe is None or device == "":
            return {}
        query = [exe, f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits"]
        if device is not None:
            query.append(f"--id={device}")
        out = subprocess.run(query, capture_output=True, text=True, timeout=timeout_s)
        facts = parse_gpu_query(out.stdout) if out.returncode == 0 else {}
        if not facts:
            return {}
        header = subprocess.run([exe], capture_output=True, text=True, timeout=timeout_s)
        cuda = parse_cuda_version(header.stdout) if header.returncode == 0 else None
        if cuda:
            facts["cuda_driver_version"] = cuda  # the newest CUDA the driver supports
        facts.update(_library_versions())
        return facts
    except Exception:  # noqa: BLE001 - facts are best effort: a trial must never fail because of them
        return {}


def _visible_device() -> str | None:
    """First entry of CUDA_VISIBLE_DEVICES (index or UUID); ``""`` if it hides every GPU; None if unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    first = value.split(",")[0].strip()
    return "" if first in ("", "-1", "none", "NoDevFiles") else first


def parse_gpu_query(text: str) -> dict:
    """Parse ``nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total`` CSV (no header)."""
    rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines() if line.strip()]
    rows = [r for r in rows if len(r) in (len(QUERY_FIELDS) - 1, len(QUERY_FIELDS))]  # uuid is optional
    if not rows:
        return {}
    name, driver, used, total = rows[0][:4]
    facts: dict = {"gpu_name": name, "gpu_driver": driver, "gpu_count": len(rows)}
    if len(rows[0]) > 4:
        facts["gpu_uuid"] = rows[0][4]
    for key, value in (("gpu_memory_used_mb", used), ("gpu_memory_total_mb", total)):
        with suppress(ValueError):  # "[N/A]" on some boards
            facts[key] = int(float(value))
    return facts


def parse_cuda_version(text: str) -> str | None:
    """The ``CUDA Version: 12.4`` of ``nvidia-smi``'s banner."""
    m = _CUDA_RE.search(text)
    return m.group(1) if m else None


def _library_versions() -> dict:
    facts: dict = {}
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-libs"):
        try:
            facts["tensorrt_python"] = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    if "tensorflow" in sys.modules:  # never import TensorFlow just for facts
        try:
            from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils as trt

            if trt.is_tensorrt_enabled():
                facts["tensorrt_linked"] = ".".join(map(str, trt.get_linked_tensorrt_version()))
                facts["tensorrt_loaded"] = ".".join(map(str, trt.get_loaded_tensorrt_version()))
        except Exception:  # noqa: BLE001 - facts are best effort (a TF build without TensorRT, a broken one)
            pass
        try:
            build = sys.modules["tensorflow"].sysconfig.get_build_info()
            facts["tf_cuda_build_version"] = str(build.get("cuda_version", ""))
        except Exception:  # noqa: BLE001 - facts are best effort
            pass
    return facts
