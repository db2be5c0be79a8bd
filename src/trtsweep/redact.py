"""Credentials out of what trtsweep logs, prints and records (docs/security.md).

A tracking URI or an Optuna storage URL may carry a password: ``postgresql://user:pw@host/db``,
``https://user:token@mlflow.example``, or a query parameter (``?password=...``, ``&token=...``).
:func:`mask_url` shows such a URL as ``postgresql://user:***@host/db``; :func:`mask_text` does the same
for every URL inside a longer text (a log line, an override list); :func:`mask_config` for every string
of a config (the ``config.yaml`` artifact, MLflow params); :func:`mask_logs` for every log record.
Masking never changes a text without credentials, so it is safe to apply to any value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

MASK = "***"

#: names of query parameters and config keys whose value is a secret
_SECRET_NAME = r"[A-Za-z0-9_.\-]*(?:passw(?:or)?d|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|credential)" \
               r"[A-Za-z0-9_.\-]*"
#: ``scheme://user:password@`` (the password up to the last ``@`` before the host; ``user`` kept)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):(?P<pw>[^\s'\"/]*)@")
#: ``?password=...`` / ``&token=...`` / ``;secret=...``
_QUERY = re.compile(rf"(?P<head>[?&;](?i:{_SECRET_NAME})=)(?P<value>[^&;#\s'\"]*)")
_SECRET_KEY = re.compile(rf"(?i:{_SECRET_NAME})")


def mask_text(text: str) -> str:
    """``text`` with the password of every URL in it (and password-like query parameters) as ``***``."""
    if "=" not in text and "@" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["pw"] else m[0], text)
    return _QUERY.sub(lambda m: m["head"] + (MASK if m["value"] else ""), text)


def mask_url(url: Any) -> Any:
    """``postgresql://user:pw@host/db?password=x`` → ``postgresql://user:***@host/db?password=***``;
    None and a URL without credentials unchanged."""
    return mask_text(url) if isinstance(url, str) else url


def is_secret_key(key: str) -> bool:
    """A config key whose value is a secret by its name (``password``, ``db_token``, ``api_key``...)."""
    return bool(_SECRET_KEY.fullmatch(str(key).rsplit(".", 1)[-1]))


def mask_config(value: Any) -> Any:
    """A copy of a config (dicts, lists, strings) with every URL's password masked, and the value of every
    key named like a secret (:func:`is_secret_key`) replaced by ``***``."""
    if isinstance(value, Mapping):
        return {k: MASK if is_secret_key(k) and isinstance(v, str) and v else mask_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_config(v) for v in value)
    return mask_url(value)


class _MaskingFactory:
    """A log record factory: the factory it wraps, then the record's message with :func:`mask_text` applied
    (formatted once, here).  Installed process-wide, so it outlives Hydra's ``logging.config.dictConfig``
    calls, which replace every handler (and their filters) for each job it launches."""

    def __init__(self, inner: Callable[..., logging.LogRecord]):
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's own problem; let it report it
            return record
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record


def mask_logs() -> None:
    """From now on, every log record of this process has its URLs' passwords masked (once installed)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _MaskingFactory):
        logging.setLogRecordFactory(_MaskingFactory(current))


__all__ = ["MASK", "is_secret_key", "mask_config", "mask_logs", "mask_text", "mask_url"]
