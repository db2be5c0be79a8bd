"""TensorFlow's start-up noise on CPU hosts: its CUDA probing lines, silenced unless asked for.

Importing TensorFlow on a machine without a GPU driver prints, from C++ before any logging is set up
(so ``TF_CPP_MIN_LOG_LEVEL`` does not hide all of them)::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ... UNKNOWN ERROR (303)

:func:`import_tensorflow` imports TensorFlow and initialises its platforms (where ``cuInit`` is called)
with the process's stderr (file descriptor 2) sent to a file, then writes back every line but those.
Where a GPU may be in use (an NVIDIA driver: ``nvidia-smi`` or ``/dev/nvidia0``), nothing is filtered:
there the lines mean something.  ``TRTSWEEP_VERBOSE=1`` keeps them everywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

VERBOSE_ENV = "TRTSWEEP_VERBOSE"

#: lines TensorFlow prints while probing for CUDA on a host without a GPU driver
CUDA_PROBING = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT"
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def gpu_driver_present() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()


def quiet_by_default() -> None:
    """In the sweep's own process (inherited by its workers): TensorFlow's C++ info and warning lines off,
    unless verbose or set already."""
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def filtering() -> bool:
    return not verbose() and not gpu_driver_present()


@contextlib.contextmanager
def native_stderr_without(pattern: re.Pattern | None = CUDA_PROBING) -> Iterator[None]:
    """Run the block with file descriptor 2 sent to a temporary file; then write its lines back to stderr,
    leaving out those matching ``pattern`` (None: every line, only later).  On an exception every line is
    written back."""
    sys.stderr.flush()
    saved = os.dup(2)
    keep_all = False
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except BaseException:
            keep_all = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            kept = [ln for ln in text.splitlines(keepends=True)
                    if keep_all or pattern is None or not pattern.search(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow() -> None:
    """Import TensorFlow and initialise its platforms, without the CUDA probing lines where no GPU is in
    use (:func:`filtering`).  What it prints is shown once the import is done: a sweep that stops before
    (an invalid value) kills the worker, and its one-line error is then all the user sees."""
    if "tensorflow" in sys.modules:
        return
    with native_stderr_without(CUDA_PROBING if filtering() else None):
        import tensorflow as tf

        tf.config.list_physical_devices()
