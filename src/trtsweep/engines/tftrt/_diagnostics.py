"""TF-TRT / TensorRT failures made readable: one-line hints for known error texts, warnings from the
native build log, and the capture of that log (TensorRT's C++ logging goes to fd 2)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from trtsweep.errors import TrtsweepError, one_line

BUILD_LOG = "tftrt_build.log"

USE_TENSORRT_TF = "use a TensorRT-enabled TensorFlow, e.g. an NGC TensorFlow container (see docker/)"

#: TensorRT / TF-TRT error or log text → one-line hint (lower-case substrings)
_ERROR_HINTS: tuple[tuple[str, str], ...] = (
    ("could not find any implementation",
     "TensorRT found no kernel that fits the workspace/GPU memory while building an engine; "
     "fix: raise engine.max_workspace_size_bytes (e.g. 4294967296) or lower batch_size"),
    ("not been built with tensorrt", f"this TensorFlow has no TensorRT support; {USE_TENSORRT_TF}"),
    ("incompatible tensorrt major version",
     f"the TensorRT library loaded at run time differs in major version from the one TensorFlow was built with; "
     f"{USE_TENSORRT_TF}"),
    ("specified device is not a gpu", "TF-TRT needs a visible NVIDIA GPU; run with `docker run --gpus all` (see "
                                      "docker/)"),
    ("op type not registered 'trtengineop'", f"this SavedModel was converted by TF-TRT and needs TensorRT to load; "
                                             f"{USE_TENSORRT_TF}"),
    ("out of memory", "the GPU ran out of memory; fix: lower batch_size or engine.max_workspace_size_bytes"),
)
#: TF-TRT log lines that mean a segment silently runs in TensorFlow instead of TensorRT
_FALLBACK_LOG_MARKERS = ("native segment will be used instead", "running native segment")


def trt_error_hint(text: str) -> str | None:
    """A one-line hint for a known TF-TRT / TensorRT error or log text, else ``None``."""
    low = text.lower()
    for needle, hint in _ERROR_HINTS:
        if needle in low:
            return hint
    return None


def log_warnings(log_text: str) -> list[str]:
    """Warnings from TF-TRT's native log: engines that failed to build and fell back to TensorFlow."""
    low = log_text.lower()
    out: list[str] = []
    fallbacks = sum(low.count(m) for m in _FALLBACK_LOG_MARKERS)
    if fallbacks:
        out.append(f"TF-TRT logged {fallbacks} message(s) about falling back to native TensorFlow segments while "
                   f"building (see {BUILD_LOG}); those segments are not accelerated")
    if "could not find any implementation" in low:  # a TensorRT build that ran out of workspace
        out.append(trt_error_hint(low))
    return out


@contextmanager
def _capture_native_log(path: Path) -> Iterator[None]:
    """Copy fd 2 (where TF-TRT/TensorRT C++ logs go) into ``path``; replayed to stderr afterwards."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:  # no usable fd 2: run without capture
        yield
        return
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with suppress(OSError, ValueError):  # a closed or broken stderr: restore fd 2 all the same
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    with suppress(OSError):
        os.write(2, path.read_bytes())


@contextmanager
def _hinted_errors(log_path: Path | None = None) -> Iterator[None]:
    """Re-raise a TF-TRT failure with a one-line hint when its text (or the native log) is a known trap."""
    try:
        yield
    except TrtsweepError:
        raise
    except Exception as e:
        hint = trt_error_hint(str(e))
        if hint is None and log_path is not None and log_path.exists():
            hint = trt_error_hint(log_path.read_text(errors="replace"))
        if hint is None:
            raise
        raise TrtsweepError(f"{hint} [TF-TRT: {one_line(e)}]") from e
