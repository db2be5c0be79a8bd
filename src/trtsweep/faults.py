"""Test-only fault injection: the environment variable ``TRTSWEEP_TEST_FAULT`` makes trial workers
crash, segfault, hang, raise or run out of memory, so that tests can check a sweep survives them.  Only
tests set it; it is no config setting.

    TRTSWEEP_TEST_FAULT=crash                 every trial: crash (SIGABRT) | segv (a real segmentation
                                              fault: a NULL dereference) | hang | raise | oom | slow (every
                                              inference call takes 5 ms longer: a hopeless configuration)
    TRTSWEEP_TEST_FAULT=hang@data.seed=1      only trials whose spec has data.seed=1 (any dotted key of
                                              TrialSpec.to_dict(): batch_size, engine_params.num_threads…)
    TRTSWEEP_TEST_FAULT=segv@data.seed=1,hang@data.seed=2
                                              several rules, comma-separated: the first that matches wins

The sweep process decides (:func:`fault_for`) and hands the fault to the worker with the trial, which
injects it (:func:`inject`, :func:`slowed`).  A trial with a fault is never served from the result cache,
and leaves nothing there a normal run could be served: a failed result never is, and a measured one is
marked with its fault (``report.fault``) and never served.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from trtsweep.errors import ConfigError

ENV = "TRTSWEEP_TEST_FAULT"
FAULTS = ("crash", "segv", "hang", "raise", "oom", "slow")
SLOW_S = 0.005


def fault_for(spec: Mapping[str, Any]) -> str | None:
    """The fault ``TRTSWEEP_TEST_FAULT`` asks for in the trial ``spec`` (a ``TrialSpec.to_dict()``), or None."""
    value = os.environ.get(ENV, "").strip()
    for rule in filter(None, (r.strip() for r in value.split(","))):
        fault = _rule(rule, spec)
        if fault is not None:
            return fault
    return None


def _rule(value: str, spec: Mapping[str, Any]) -> str | None:
    fault, _, selector = value.partition("@")
    if fault not in FAULTS:
        raise ConfigError(f"{ENV}={value}: unknown fault {fault!r}; fix: one of {', '.join(FAULTS)}")
    if not selector:
        return fault
    key, sep, wanted = selector.partition("=")
    node: Any = spec
    for part in key.split("."):
        if not sep or not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{ENV}={value}: {selector!r} names no setting of a trial; "
                              f"fix: <fault>@<key>=<value>, e.g. {fault}@data.seed=1")
        node = node[part]
    return fault if _text(node) == wanted else None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def slowed(fault: str | None, run: Any) -> Any:
    """In the trial worker: the engine's run function, 5 ms slower per call under the ``slow`` fault."""
    if fault != "slow":
        return run

    def slow_run(prepared: Any) -> Any:
        time.sleep(SLOW_S)
        return run(prepared)

    return slow_run


def inject(fault: str | None) -> None:
    """In the trial worker: do what ``fault`` says (nothing for None)."""
    if fault == "crash":
        os.abort()
    if fault == "segv":
        import ctypes

        ctypes.string_at(0)  # reads address 0: the kernel sends SIGSEGV
    if fault == "hang":
        time.sleep(10**6)
    if fault == "raise":
        raise RuntimeError(f"injected failure ({ENV}=raise)")
    if fault == "oom":
        import numpy as np

        hog = []
        while True:
            hog.append(np.ones(64 * 2**20, np.uint8))
