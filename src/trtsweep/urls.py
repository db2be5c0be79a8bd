"""Checks of the URLs a sweep is given, before any work: MLflow's tracking URI and Optuna's storage.

Only what can never work is refused here (a scheme nobody serves, a URL that does not parse, a
database driver SQLAlchemy does not know): a server that is merely unreachable is a fault of the
moment, handled where the connection is made.  Each problem is one line naming the value and a fix.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

#: the schemes MLflow's tracking store registry serves (mlflow.tracking._tracking_service.utils);
#: tests/unit/test_bad_input.py checks this list against the installed MLflow
MLFLOW_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
                  "databricks-uc", "uc")
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
TRACKING_FIX = "fix: tracking.uri=sqlite:///mlflow.db (or http://host:5000, a directory), or tracking=none"
JOURNAL = "journal:"


def tracking_uri_problem(uri: str | None) -> str | None:
    """Why MLflow can never use ``uri`` (``tracking.uri``; null: ``MLFLOW_TRACKING_URI``), or None."""
    key = "tracking.uri"
    if not uri:
        uri, key = os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI"
        if not uri:
            return None
    raw = str(uri)
    uri = _mask(raw)
    try:
        parts = urlsplit(raw)
    except ValueError as e:
        return f"{key}={uri} is not a valid URL ({e}); {TRACKING_FIX}"
    scheme = parts.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a path
        return None
    base = scheme.split("+")[0]
    if base not in MLFLOW_SCHEMES:
        return (f"{key}={uri}: MLflow has no tracking store for the scheme '{scheme}' (it takes "
                f"{', '.join(s for s in MLFLOW_SCHEMES if s)} or a path); {TRACKING_FIX}")
    if base in ("http", "https"):
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            return f"{key}={uri} has an invalid port; {TRACKING_FIX}"
        if not parts.hostname:
            return f"{key}={uri} names no host; {TRACKING_FIX}"
    if base in DATABASES:
        problem = _database_problem(raw)
        if problem:
            return f"{key}={uri} {problem}; {TRACKING_FIX}"
    return None


def storage_url_problem(url: str | None) -> str | None:
    """Why Optuna can never open ``hydra.sweeper.storage=url`` (a SQLAlchemy URL or ``journal:<file>``)."""
    fix = "fix: hydra.sweeper.storage=sqlite:///outputs/optuna.db (or postgresql://user:pw@host/db, journal:<file>)"
    if not url:
        return f"hydra.sweeper.storage={url!r} is empty; {fix}"
    url = str(url)
    if url.startswith(JOURNAL):
        if not url[len(JOURNAL):].removeprefix("//"):
            return f"hydra.sweeper.storage={url} names no file; {fix}"
        return None
    problem = _database_problem(url)
    if problem:
        return f"hydra.sweeper.storage={_mask(url)} {problem}; {fix}"
    return None


def _database_problem(url: str) -> str | None:
    """What makes a SQLAlchemy URL unusable before any connection: it does not parse, or names a database
    (dialect) SQLAlchemy has no driver for."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        why = "its port is not a number" if isinstance(e, ValueError) and "int()" in str(e) else "it does not parse"
        return f"is not a database URL ({why}; the form is dialect[+driver]://user:password@host:port/database)"
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        return f"names the database '{parsed.drivername}', which SQLAlchemy has no dialect for"
    except Exception:  # noqa: BLE001 - a dialect that fails to load is a driver problem: found on connecting
        return None
    return None


def _mask(url: str) -> str:
    """``url`` without its credentials (``scheme://***@host``)."""
    return re.sub(r"//[^@/]*@", "//***@", url)
