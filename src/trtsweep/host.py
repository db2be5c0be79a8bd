"""Host facts recorded with every result, so a later comparison can tell a regression from a
different machine: CPU model and SIMD flags, cores, thread settings, GPU, library versions."""

from __future__ import annotations

import os
import platform
from contextlib import suppress
from functools import lru_cache
from importlib import metadata

SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "asimd", "sve")
PACKAGES = ("tensorflow", "tensorflow-cpu", "ai-edge-litert", "onnxruntime", "tf2onnx", "onnx", "numpy",
            "mlflow", "optuna", "hydra-core", "trtsweep")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def cpu_flags(info: dict[str, str]) -> set[str]:
    """The CPU's feature flags from :func:`_cpuinfo` (``flags`` on x86, ``Features`` on ARM)."""
    return set((info.get("flags") or info.get("Features") or "").split())


@lru_cache(maxsize=1)
def host_facts() -> dict[str, str]:
    info = _cpuinfo()
    flags = cpu_flags(info)
    facts = {
        "host.cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "host.cpu_flags": ",".join(f for f in SIMD_FLAGS if f in flags) or "unknown",
        "host.cores": str(os.cpu_count()),
        "host.cores_available": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                    else os.cpu_count()),
        "host.machine": platform.machine(),
        "host.python": platform.python_version(),
        "host.os": platform.platform(terse=True),
    }
    try:
        import psutil

        facts["host.memory_gb"] = f"{psutil.virtual_memory().total / 2**30:.1f}"
    except Exception:  # noqa: BLE001 - facts are best effort: a trial never fails for want of one
        pass
    for pkg in PACKAGES:
        with suppress(metadata.PackageNotFoundError):
            facts[f"version.{pkg}"] = metadata.version(pkg)
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS"):
        if var in os.environ:
            facts[f"env.{var}"] = os.environ[var]
    try:
        from trtsweep.gpu import gpu_facts

        facts.update({f"host.gpu.{k}" if not k.startswith("host.") else k: str(v) for k, v in gpu_facts().items()})
    except Exception:  # noqa: BLE001 - GPU facts are best effort
        pass
    facts.setdefault("host.gpu", facts.get("host.gpu.name", "none"))
    return facts
