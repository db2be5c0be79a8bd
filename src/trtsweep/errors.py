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


def config_error_line(exc: BaseException, limit: int = 500) -> str:
    """Hydra's (or OmegaConf's) many-line message about an override or a config that does not compose, as
    one line: the lines joined, option lists comma-separated, the search path and hints about Hydra's
    own flags left out.  ``Could not override 'bogus'. To append to your config use +bogus=1 ...``"""
    parts: list[str] = []
    options: list[str] = []
    for raw in str(exc).splitlines():
        line = raw.strip()
        if not line or line.startswith(("full_key:", "object_type=", "reference_type=", "provider=")):
            continue
        if line.startswith(("Config search path", "Set the environment variable HYDRA_FULL_ERROR")):
            continue
        if raw.startswith("\t") and parts and parts[-1].endswith(":"):  # an option of a listed group
            options.append(line)
            continue
        if options:
            parts[-1] += " " + ", ".join(options)
            options = []
        parts.append(line)
    if options:
        parts[-1] += " " + ", ".join(options)
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip().splitlines()[0] not in " ".join(parts):
        parts.append(str(cause).strip().splitlines()[0])
    msg = " ".join(p if p.endswith((".", ":")) else p + ";" for p in parts).rstrip(";") or type(exc).__name__
    override = getattr(exc, "override", None)  # Hydra's OverrideParseException: the override it could not parse
    if isinstance(override, str) and override and override not in msg:
        msg = f"{override}: {msg}"
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"
