"""Errors users see as one line (the traceback goes to the log)."""


class TrtsweepError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""


class ConfigError(TrtsweepError):
    """An invalid value or unsupported setting, found before any work starts."""


class ModelError(TrtsweepError):
    """A model cannot be resolved (missing path, signature, unknown dimension...)."""


class EngineUnavailable(TrtsweepError):
    """The engine cannot run on this machine (e.g. TF-TRT without TensorRT)."""


def one_line(exc: BaseException, limit: int = 500, with_type: bool = True) -> str:
    """First meaningful line of an exception, prefixed by its type unless it is ours (or ``with_type``
    is false: the library's own message is clear as it is)."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = lines[0] if lines else ""
    if with_type and not isinstance(exc, TrtsweepError):
        msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    elif not msg:
        msg = type(exc).__name__
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"
