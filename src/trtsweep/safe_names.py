"""File and directory names made from user values stay in their directory (docs/security.md).

A model name (``model.name``) becomes part of a cache directory's name; an engine name, a conversion
or trial key part of an artifact's path.  :func:`safe_component` accepts a value as one path
component or refuses it with a :class:`~trtsweep.errors.ConfigError` naming the value and the fix:
no ``/`` or ``\\`` (so no ``../x`` and no ``/etc/passwd``), no NUL or other control character, not
empty, ``.`` or ``..``, at most :data:`MAX_BYTES` bytes.  :func:`inside` joins components under a base
directory and checks that the result is still inside it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from trtsweep.errors import ConfigError

#: at most this many bytes (UTF-8) per component: room for a suffix within the usual 255-byte limit
MAX_BYTES = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be one file name, or None if it can."""
    if value is None or isinstance(value, str) and value.strip() == "":
        return "is empty"
    if not isinstance(value, str):
        return "is not text"
    if value in (".", ".."):
        return "is a relative directory"
    for sep in ("/", "\\"):
        if sep in value:
            return f"has '{sep}' (a file name cannot hold a path)"
    if _CONTROL.search(value):
        return "has a control character (NUL, newline...)"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        return f"is longer than {MAX_BYTES} bytes"
    return None


def safe_component(value: object, what: str = "name", fix: str | None = None) -> str:
    """``value`` if it can be one file or directory name; else a ConfigError ``<what>=<value> <problem>;
    fix: <fix>`` (``what``: the setting it came from, e.g. ``model.name``)."""
    problem = name_problem(value)
    if problem is None:
        return value  # type: ignore[return-value]
    fix = fix or f"{what}=<letters, digits, '.', '_' or '-'>, e.g. {what}={suggest(value)}"
    raise ConfigError(f"{what}={value!r} cannot be used as a file name: it {problem}; fix: {fix}")


def suggest(value: object) -> str:
    """A safe name close to ``value`` (for a message's fix): unsafe characters as ``_``."""
    text = re.sub(r"[^0-9A-Za-z._-]+", "_", str(value or "")).strip("._") or "my_model"
    return text[:MAX_BYTES]


def inside(base: str | os.PathLike, *parts: str, what: str = "name") -> Path:
    """``base / part / ...`` where each part is a :func:`safe_component`; refuses a result outside ``base``
    (a symlinked part is allowed: only the names are checked, not where links point)."""
    path = Path(base)
    for part in parts:
        path = path / safe_component(part, what)
    if os.path.commonpath([os.path.abspath(base), os.path.abspath(path)]) != os.path.abspath(base):
        raise ConfigError(f"{what}: {path} is outside {base}; fix: a plain name without '/' or '..'")
    return path


__all__ = ["MAX_BYTES", "inside", "name_problem", "safe_component", "suggest"]
