"""The process's exit code from its trials (DESIGN.md §3): 0 done, 1 no trial succeeded, 2 a user or
configuration error (that one is :func:`trtsweep.session.fail`'s, before any trial).

Every trial this process runs or fetches from the cache is noted (:func:`note`, from
:func:`trtsweep.app.run_job`); :func:`exit_code` is 1 when at least one was noted and none of them
was measured (``ok``, ``accuracy_violation`` or ``infeasible``: the engine ran and gave figures), so
cron and CI notice a sweep whose every trial failed or was skipped.
"""

from __future__ import annotations

from trtsweep.results import MEASURED

OK, NO_TRIAL_SUCCEEDED, USER_ERROR = 0, 1, 2

_statuses: list[str] = []


def note(status: str) -> None:
    _statuses.append(str(status))


def reset() -> None:
    _statuses.clear()


def exit_code() -> int:
    if _statuses and not any(s in {str(m) for m in MEASURED} for s in _statuses):
        return NO_TRIAL_SUCCEEDED
    return OK


def summary() -> str:
    counts: dict[str, int] = {}
    for s in _statuses:
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
