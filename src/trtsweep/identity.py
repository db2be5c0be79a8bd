"""What makes two results the same measurement, so a cache can never serve a stale one.

* a **converted artifact** is the same only for the same model *content* (:func:`model_fingerprint`),
  the same converter and library versions (:func:`library_versions`) and the same conversion
  parameters;
* a **measured result** is the same only additionally on the same host (:func:`host_identity`: CPU
  model and flags, the core set the trial is pinned to, GPU name and UUID, driver).

Everything here is cheap (file hashes, package metadata, /proc) and runs at plan time in the
sweep's own process, so a cache hit never needs the worker.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable


def digest(obj: Any, length: int = 16) -> str:
    """Short stable hash of a JSON-able object: the one hash every cache key uses."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def model_fingerprint(path: str | Path) -> str:
    """The content identity of a SavedModel directory.

    TensorFlow's ``fingerprint.pb`` (written by ``tf.saved_model.save`` since TF 2.12: hashes of the
    graph, signatures, object graph and checkpoint) where present, otherwise a hash of
    ``saved_model.pb`` and the variables index (which holds a checksum of every variable's data).
    """
    p = Path(path)
    h = hashlib.sha256()
    fp = p / "fingerprint.pb"
    parts = ("fingerprint.pb",) if fp.exists() else ("saved_model.pb", "saved_model.pbtxt", "variables/variables.index")
    for rel in parts:
        f = p / rel
        if f.exists():
            h.update(rel.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def library_versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed versions of ``packages`` (the first of ``a|b`` alternatives that is installed);
    a package that is not installed is recorded as ``none``."""
    out = {}
    for spec in packages:
        names = spec.split("|")
        found = next((v for v in map(_version, names) if v is not None), None)
        out[names[0]] = found or "none"
    return out


@lru_cache(maxsize=1)
def _cpu_identity() -> dict[str, str]:
    from trtsweep.host import _cpuinfo

    info = _cpuinfo()
    flags = sorted(set((info.get("flags") or info.get("Features") or "").split()))
    return {"cpu_model": info.get("model name") or "", "cpu_flags_sha": digest(flags, 12)}


@lru_cache(maxsize=1)
def _gpu_identity() -> dict[str, str]:
    from trtsweep.gpu import gpu_facts

    g = gpu_facts()
    return {k: str(g.get(f"gpu_{k}", "")) for k in ("name", "uuid", "driver")}


def host_identity(core_set: list[int] | None = None) -> dict[str, str]:
    """The host facts a measurement depends on; ``core_set`` is the set the trial is pinned to."""
    ident = {**_cpu_identity(), **{f"gpu_{k}": v for k, v in _gpu_identity().items()}}
    if core_set is not None:
        ident["core_set"] = ",".join(map(str, core_set))
    return ident


def host_id(core_set: list[int] | None = None) -> str:
    """Short id of :func:`host_identity` (a tag on every result)."""
    return digest(host_identity(core_set), 12)
