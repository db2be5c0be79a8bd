"""``trtsweep cache ls|prune``: what the cache holds, and cleaning what can never be served again.

The cache (``cache_dir``, default ``outputs/cache``) holds measured results (``results/``),
converted artifacts (``artifacts/<engine>/<conversion key>/``), generated models (``models/``) and
TF FP32 reference outputs (``reference/``).  Results are keyed on model content, library versions,
host and settings, and artifacts on model content, library versions and conversion parameters
(:mod:`trtsweep.identity`), so an entry made with other library versions or on another host is
never served; ``prune`` removes such *stale* entries (or everything, or what is older than N days).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Entry:
    kind: str  # result | artifact | model | reference | leftover
    path: Path
    label: str
    created: float
    size_mb: float
    stale: str = ""  # why it can never be served again ("" = current)


def size_mb(p: Path) -> float:
    """Size of a file, or of every file below a directory, in MiB."""
    if p.is_file():
        return p.stat().st_size / 2**20
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20


def _why_stale(versions: dict, engine: str, host: dict | None, core_set: list | None) -> str:
    from trtsweep.engines.base import engine_names, get_engine
    from trtsweep.identity import host_identity, library_versions

    if engine not in engine_names():
        return f"engine {engine} no longer exists"
    now = library_versions(get_engine(engine).libraries)
    changed = [f"{k} {versions.get(k)} → {v}" for k, v in now.items() if versions.get(k) != v]
    if changed:
        return "library versions changed: " + ", ".join(changed)
    if host is not None and host != host_identity(core_set):
        return "measured on another host (CPU, core set or GPU differ)"
    return ""


def entries(cache_dir: Path) -> list[Entry]:
    out: list[Entry] = []
    for p in sorted((cache_dir / "results").glob("*.json")):
        try:
            d = json.loads(p.read_text())
            spec = d["spec"]
            label = (f"{spec['model']['name']} {spec['engine']} {spec['precision']} bs={spec['batch_size']} "
                     f"threads={spec.get('threads', '?')} → {d['status']}")
            stale = _why_stale(spec.get("versions") or {}, spec["engine"], spec.get("host") or {}, spec.get("core_set"))
            out.append(Entry("result", p, label, d.get("started_at") or p.stat().st_mtime, size_mb(p), stale))
        except (ValueError, KeyError, TypeError):
            out.append(Entry("result", p, "unreadable result", p.stat().st_mtime, size_mb(p), "unreadable"))
    for meta in sorted((cache_dir / "artifacts").glob("*/*/conversion.json")):
        d = meta.parent
        try:
            m = json.loads(meta.read_text())
            ident = m.get("identity") or {}
            label = f"{ident.get('model', {}).get('name', '?')} {d.parent.name} {ident.get('precision', '?')}"
            stale = (_why_stale(ident.get("versions") or {}, d.parent.name, None, None) if ident
                     else "made before artifacts recorded their identity")
            out.append(Entry("artifact", d, label, m.get("converted_at") or meta.stat().st_mtime, size_mb(d), stale))
        except (ValueError, KeyError, TypeError, AttributeError):
            out.append(Entry("artifact", d, "unreadable artifact", meta.stat().st_mtime, size_mb(d), "unreadable"))
    for d in sorted((cache_dir / "models").glob("*")):
        if d.is_dir() and ".tmp" not in d.name:
            out.append(Entry("model", d, d.name, d.stat().st_mtime, size_mb(d)))
    for f in sorted((cache_dir / "reference").glob("*.npy")):
        out.append(Entry("reference", f, f.name, f.stat().st_mtime, size_mb(f)))
    for pattern in ("artifacts/*/*.tmp*", "models/*.tmp*", "results/*.tmp"):  # interrupted writes
        for p in cache_dir.glob(pattern):
            out.append(Entry("leftover", p, p.name, p.stat().st_mtime, size_mb(p), "interrupted write"))
    return out


def ls(cache_dir: Path) -> str:
    es = entries(cache_dir)
    if not es:
        return f"{cache_dir}: empty"
    lines = [f"{cache_dir}: {len(es)} entries, {sum(e.size_mb for e in es):.1f} MB"]
    for kind in ("result", "artifact", "model", "reference", "leftover"):
        group = [e for e in es if e.kind == kind]
        if not group:
            continue
        stale = sum(1 for e in group if e.stale)
        lines.append(f"\n{kind}s: {len(group)} ({sum(e.size_mb for e in group):.1f} MB, {stale} stale)")
        for e in group:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created))
            lines.append(f"  {when}  {e.size_mb:8.2f} MB  {e.label}" + (f"  [stale: {e.stale}]" if e.stale else ""))
    return "\n".join(lines)


def prune(cache_dir: Path, everything: bool = False, older_than_days: float | None = None,
          dry_run: bool = False) -> list[Entry]:
    """Remove stale entries (and leftovers of interrupted writes); with ``everything``, all entries;
    with ``older_than_days``, also current ones made before that.  Returns what was (or would be) removed."""
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    gone = []
    for e in entries(cache_dir):
        if everything or e.stale or (cutoff is not None and e.created < cutoff):
            gone.append(e)
            if not dry_run:
                if e.path.is_dir():
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    e.path.unlink(missing_ok=True)
    return gone
