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

    From TensorFlow's ``fingerprint.pb`` (written by ``tf.saved_model.save`` since TF 2.12) where
    present: its hashes of the graph program, the signatures, the object graph and the checkpoint,
    which stay the same when the same model is exported again and change with any weight (its
    whole-file checksum and UUID change on every export, so they are left out).  Otherwise a hash of
    ``saved_model.pb`` and the variables index (which holds a checksum of every variable's data).
    """
    p = Path(path)
    h = hashlib.sha256()
    fp = p / "fingerprint.pb"
    fields = _fingerprint_hashes(fp.read_bytes()) if fp.exists() else None
    if fields:
        h.update(json.dumps(fields, sort_keys=True).encode())
        return h.hexdigest()[:16]
    for rel in ("saved_model.pb", "saved_model.pbtxt", "variables/variables.index"):
        f = p / rel
        if f.exists():
            h.update(rel.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


#: FingerprintDef fields (tensorflow/core/protobuf/fingerprint.proto) that identify the content
_FINGERPRINT_FIELDS = {2: "graph_def_program_hash", 3: "signature_def_hash", 4: "saved_object_graph_hash",
                       5: "checkpoint_hash"}


def _fingerprint_hashes(data: bytes) -> dict[str, int] | None:
    """The content hashes of a ``fingerprint.pb`` (protobuf wire format, read without TensorFlow)."""

    def varint(i: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            b = data[i]
            value |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                return value, i
            shift += 7

    out: dict[str, int] = {}
    i = 0
    try:
        while i < len(data):
            tag, i = varint(i)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                value, i = varint(i)
                if field in _FINGERPRINT_FIELDS:
                    out[_FINGERPRINT_FIELDS[field]] = value
            elif wire == 2:
                length, i = varint(i)
                i += length
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                return None
    except IndexError:
        return None
    return out if len(out) == len(_FINGERPRINT_FIELDS) else None


def data_fingerprint(path: str | Path) -> str:
    """Content identity of a data file (hash of its bytes) or image folder (names, sizes, mtimes).
    A file is hashed once per sweep process for as long as its size and mtime stay the same."""
    p = Path(path).expanduser()
    if p.is_file():
        st = p.stat()
        return _file_hash(str(p.resolve()), st.st_size, st.st_mtime_ns)
    return _content_hash(p)


@lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return _content_hash(Path(path))


def _content_hash(p: Path) -> str:
    h = hashlib.sha256()
    if p.is_file():
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
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
    from trtsweep.host import _cpuinfo, cpu_flags

    info = _cpuinfo()
    flags = sorted(cpu_flags(info))
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


def machine_id() -> str:
    """Short id of the hardware a nightly's history is matched on: :func:`host_identity` without the core
    set (part of a configuration, see :func:`trtsweep.run_tags.config_identity`) and without the GPU
    driver, which is software: a driver upgrade, like a library upgrade, is compared with the history."""
    return digest({k: v for k, v in host_identity().items() if k != "gpu_driver"}, 12)
