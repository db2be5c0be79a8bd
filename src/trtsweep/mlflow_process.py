"""MLflow in a process of its own: :class:`RemoteTracker`.

Importing MLflow and creating a new database's schema take seconds of Python.  In the sweep's own
process they ran one after the other with Hydra's start-up and the planning (threads share one
interpreter lock); in a process of their own they run beside them and beside the worker's
TensorFlow import, and the sweep's process never imports MLflow at all.

The process serves :class:`trtsweep.tracking.Tracker`'s methods, one call at a time, in order, and
each call waits for its answer: callers get the same return values as from a ``Tracker``, and an
MLflow failure is raised in the caller as :class:`TrackingError` with its one-line message.  So a
sweep still logs each trial between trials, never while one is measured.  Where nothing is measured
(the end of a sweep), :meth:`RemoteTracker.submit` sends a call without waiting: MLflow works in its
process while the sweep's goes on (the HTML report), and ``.result()`` gives the call's outcome.

The entry point starts the process before Hydra (:func:`prestart`): it imports MLflow then, and opens
the database only when a sweep sends it the tracking settings, so a sweep that stops before (a typo,
``--help``) leaves nothing behind.  It is a plain child process (not ``multiprocessing``'s): a sweep
that stops early does not wait for it.  It finishes the call it is in — a schema half created would
leave the database unusable — and exits as soon as it finds its pipe closed.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import functools
import os
import pickle
import subprocess
import sys
import threading
import traceback
import weakref
from typing import Any

from trtsweep.config import TrackingConfig
from trtsweep.errors import one_line
from trtsweep.tracking import Tracker, resolve_uri

#: what a RemoteTracker forwards: every public method of Tracker
METHODS = frozenset(n for n, v in vars(Tracker).items() if callable(v) and not n.startswith("_"))

_BOOT = ("import sys; sys.path[:0] = {path!r}; from trtsweep.mlflow_process import serve; "
         "serve({requests}, {replies})")


class TrackingError(RuntimeError):
    """MLflow failed (its one-line message), or its process is gone."""


def serve(requests_fd: int, replies_fd: int) -> None:
    """The process: import MLflow, wait for the tracking settings, open MLflow and answer whether that
    worked, then one answer per call.  Once its pipe is closed it exits at once: every call was answered
    (their database writes are committed), and tearing down MLflow's modules takes seconds."""
    requests, replies = os.fdopen(requests_fd, "rb"), os.fdopen(replies_fd, "wb")
    try:
        with contextlib.suppress(Exception):  # else opening MLflow fails, and says why
            import mlflow.tracking  # noqa: F401 - the seconds of import, before a sweep asks for anything
        _answer(requests, replies)
    except (EOFError, OSError):  # the sweep is done, or gone
        pass
    except BaseException:  # noqa: BLE001 - the caller sees the process exit; the why goes to stderr
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _answer(requests: Any, replies: Any) -> None:
    def reply(message: tuple) -> None:
        pickle.dump(message, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()

    cfg = pickle.load(requests)
    try:
        tracker = Tracker(TrackingConfig(**cfg))
        opened = ("ok", tracker.experiment_id)
    except Exception as e:  # noqa: BLE001 - said to the caller, as an in-process Tracker would raise it
        tracker, opened = None, ("error", one_line(e))
    reply(opened)
    while True:
        method, args, kwargs = pickle.load(requests)
        if tracker is None:
            reply(opened)
            continue
        try:
            reply(("ok", getattr(tracker, method)(*args, **kwargs)))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
            reply(("error", one_line(e)))


class _Process:
    """A started MLflow process and our ends of its two pipes."""

    def __init__(self) -> None:
        child_requests, self_requests = os.pipe()
        self_replies, child_replies = os.pipe()
        code = _BOOT.format(path=list(sys.path), requests=child_requests, replies=child_replies)
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(child_requests, child_replies),
                                         stdin=subprocess.DEVNULL)
        finally:
            os.close(child_requests)
            os.close(child_replies)
        self.requests, self.replies = os.fdopen(self_requests, "wb"), os.fdopen(self_replies, "rb")

    def close(self) -> None:
        for f in (self.requests, self.replies):
            with contextlib.suppress(OSError):
                f.close()


_PRESTARTED: list[_Process] = []


def prestart() -> None:
    """Start a process (it imports MLflow) for the next :class:`RemoteTracker` of this process to use."""
    if not _PRESTARTED:
        _PRESTARTED.append(_Process())


class Pending:
    """A call sent to the MLflow process (:meth:`RemoteTracker.submit`)."""

    def __init__(self, tracker: RemoteTracker):
        self._tracker = tracker
        self.reply: tuple | None = None

    def result(self) -> Any:
        """Wait for the call's answer: its return value, or TrackingError with MLflow's one-line error."""
        if self.reply is None:
            with self._tracker._lock:
                self._tracker._answer_until(self)
        assert self.reply is not None
        status, value = self.reply
        if status == "error":
            raise TrackingError(value)
        return value


class RemoteTracker:
    """A :class:`~trtsweep.tracking.Tracker` whose MLflow work runs in a process of its own, started at
    construction (it returns at once; the first call waits until MLflow is open)."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.uri = resolve_uri(cfg.uri)
        self._lock = threading.Lock()
        self._opened: tuple | None = None
        self._pending: collections.deque[Pending] = collections.deque()  # sent, not yet answered, in order
        process = _PRESTARTED.pop() if _PRESTARTED else _Process()
        self.proc, self._requests, self._replies = process.proc, process.requests, process.replies
        _LIVE.add(self)
        try:
            pickle.dump(dataclasses.asdict(cfg), self._requests, protocol=pickle.HIGHEST_PROTOCOL)
            self._requests.flush()
        except (OSError, ValueError):  # it died: the first call says so
            pass

    def __getattr__(self, name: str) -> Any:
        if name in METHODS:
            return functools.partial(self.call, name)
        raise AttributeError(name)

    @property
    def experiment_id(self) -> str:
        """The id of the sweep's experiment (waits until MLflow is open)."""
        self.open()
        assert self._opened is not None
        return self._opened[1]

    def _read(self) -> tuple:
        try:
            return pickle.load(self._replies)
        except (EOFError, OSError, pickle.UnpicklingError, ValueError):
            raise TrackingError(f"the MLflow process exited (code {self.proc.poll()})") from None

    def open(self) -> None:
        """Wait until MLflow is open; raises TrackingError if it could not be opened."""
        with self._lock:
            self._wait_open()

    def _wait_open(self) -> None:
        if self._opened is None:
            self._opened = self._read()
        if self._opened[0] == "error":
            raise TrackingError(self._opened[1])

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``Tracker.<method>(*args, **kwargs)`` in the MLflow process."""
        return self.submit(method, *args, **kwargs).result()

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Pending:
        """Send ``Tracker.<method>(*args, **kwargs)`` to the MLflow process and return at once: it runs
        there while the caller goes on (calls run in the order sent); ``.result()`` waits for it."""
        with self._lock:
            self._wait_open()
            try:
                pickle.dump((method, args, kwargs), self._requests, protocol=pickle.HIGHEST_PROTOCOL)
                self._requests.flush()
            except (OSError, ValueError):
                raise TrackingError(f"the MLflow process exited (code {self.proc.poll()})") from None
            pending = Pending(self)
            self._pending.append(pending)
        return pending

    def _answer_until(self, pending: Pending) -> None:
        """Read the answers up to ``pending``'s (the lock is held)."""
        while pending.reply is None:
            first = self._pending.popleft()
            try:
                first.reply = self._read()
            except TrackingError as e:
                first.reply = ("error", str(e))

    def close(self) -> None:
        """Let the process go: it exits once it has answered (every call was answered already)."""
        _LIVE.discard(self)
        for f in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                f.close()


_LIVE: weakref.WeakSet[RemoteTracker] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for tracker in list(_LIVE):
        tracker.close()
    while _PRESTARTED:
        _PRESTARTED.pop().close()
