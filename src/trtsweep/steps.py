"""Measurement steps: a trial's timed repeats reported as they finish, so a search can stop a hopeless
trial early (Optuna pruning) instead of measuring it to the end.

The worker reports each repeat's throughput to the parent and waits for a verdict before the next
repeat (between repeats, never inside the timed loop).  The parent asks the observer a searcher
installed with :func:`observing`; with none installed (grid, single runs) the worker is not asked to
report at all.  Conversion, calibration and loading come before the first step, so they are never
pruned; fidelity comes after the last, so a pruned trial skips it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: (step number from 1, that repeat's throughput in items/s) → a one-line reason to stop, or None to go on
Observer = Callable[[int, float], "str | None"]

_current: Observer | None = None


@contextmanager
def observing(observer: Observer | None) -> Iterator[None]:
    """Install ``observer`` for the trials run inside the block (in this process)."""
    global _current
    previous, _current = _current, observer
    try:
        yield
    finally:
        _current = previous


def current() -> Observer | None:
    return _current


def verdict(step: int, throughput_ips: float) -> str | None:
    """The installed observer's verdict on a step (None: go on); an observer's error never stops a trial."""
    if _current is None:
        return None
    try:
        return _current(step, throughput_ips)
    except Exception as e:
        import logging

        from trtsweep.errors import one_line

        log = logging.getLogger(__name__)
        log.warning("step observer failed (%s); the trial is measured to the end", one_line(e))
        log.debug("step observer error", exc_info=True)
        return None
