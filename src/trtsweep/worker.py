"""The trial worker: a child process that imports TensorFlow and the engines, and runs trials.

The parent (``runner.WorkerPool``) sends requests over a pipe and enforces the timeout and memory
cap; a crash, hang or OOM here kills only this process.  The worker is reused across trials that
need the same process environment (thread env vars), so TensorFlow is imported once per sweep,
and models, data and reference outputs are cached in memory and on disk.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from trtsweep.atomic import atomic_save_npy, atomic_write_json, build_once
from trtsweep.cache import size_mb
from trtsweep.faults import inject, slowed
from trtsweep.identity import digest
from trtsweep.safe_names import inside

log = logging.getLogger("trtsweep.worker")

_models: dict[str, Any] = {}
_datasets: dict[str, Any] = {}
_refs: dict[str, np.ndarray] = {}
_conn: Any = None  # the pipe to the parent (step reports of a trial, see trtsweep.steps)


def serve(conn, env: dict[str, str]) -> None:
    """Entry point of the child process."""
    global _conn
    _conn = conn
    os.environ.update(env)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trtsweep import tflog

    tflog.import_tensorflow()  # before any request: without TensorFlow's CUDA probing lines on CPU hosts
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="  [worker] %(message)s")
    for noisy in ("absl", "tensorflow", "tf2onnx", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if kind == "stop":
            return
        if kind == "step_verdict":  # a verdict that arrived after its trial ended
            continue
        try:
            handler = {"trial": run_trial, "resolve": resolve_model, "warm": warm, "prepare": prepare,
                       "confirm_load": confirm_load, "confirm_run": confirm_run, "confirm_close": confirm_close,
                       "package_model": package_model}[kind]
            conn.send(("ok", handler(payload)))
        except BaseException as e:  # noqa: BLE001 - everything is reported to the parent
            from trtsweep.errors import one_line

            conn.send(("error", one_line(e), traceback.format_exc()))
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                return


# ---------------------------------------------------------------------------
def warm(_: Any = None) -> bool:
    """The worker is ready: TensorFlow was imported when it started (:func:`serve`, through
    :func:`trtsweep.tflog.import_tensorflow`), so the first trial starts without the wait."""
    return True


def prepare(payload: dict) -> bool:
    """Resolve a trial's model and load its data ahead of it (kept in memory for the trial)."""
    from trtsweep.config import TrialSpec
    from trtsweep.types import ModelInfo

    spec = TrialSpec.from_dict(payload["spec"])
    model = ModelInfo.from_dict(resolve_model({"model": spec.model.__dict__, "cache_dir": spec.cache_dir}))
    _dataset(spec, model)
    if payload.get("mlflow_model"):  # the trials package MLflow models: MLflow's import and package map now
        _prepare_mlflow_models()
    return True


def _prepare_mlflow_models() -> None:
    """Import MLflow's pyfunc and build its map of installed packages (it checks a model's requirements
    against it when saving one: seconds, once per process), ahead of the first trial."""
    import mlflow.pyfunc  # noqa: F401

    with suppress(Exception):  # MLflow's own; without it the first model's save builds the map
        from mlflow.utils.requirements_utils import _init_modules_to_packages_map

        _init_modules_to_packages_map()


def resolve_model(payload: dict):
    from trtsweep import models
    from trtsweep.config import ModelConfig

    cfg = ModelConfig(**payload["model"])
    k = digest(payload)
    if k not in _models:
        _models[k] = models.resolve(cfg, payload["cache_dir"])
    return _models[k].to_dict()


def _dataset(spec, model):
    from trtsweep import data

    k = digest([model.fingerprint, spec.data.__dict__, spec.data_fingerprint])
    if k not in _datasets:
        _datasets[k] = data.load(spec.data, model)
    return _datasets[k]


def _reference(spec, model, ds) -> np.ndarray:
    """Native TF FP32 first output over the evaluation set (memory + disk cache)."""
    from trtsweep.data import batches
    from trtsweep.engines.tf import TFModel

    k = digest([model.fingerprint, model.signature_key, spec.data.__dict__, spec.data_fingerprint,
                spec.versions.get("tensorflow")])  # the reference is TF's own output: its version matters
    if k in _refs:
        return _refs[k]
    path = inside(Path(spec.cache_dir) / "reference", f"{model.name}-{k}.npy", what="model.name")
    if path.exists():
        _refs[k] = np.load(path)
        return _refs[k]
    loaded = TFModel(model, jit_compile=False)
    bs = 32 if model.inputs[0].shape[0] is None else int(model.inputs[0].shape[0])
    outs = [loaded.run(loaded.prepare(b))[0] for b in batches(ds.evaluation, bs)]
    ref = np.concatenate(outs)[: ds.eval_count]
    atomic_save_npy(path, ref)
    _refs[k] = ref
    return ref


def _reset_peak_rss() -> None:
    try:  # Linux ≥ 4.0: writing 5 resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def convert_cached(spec, engine, model, ds) -> tuple[Path, dict]:
    """Convert once per conversion key; later trials (other batch sizes, threads) reuse the artifact."""
    from trtsweep.calibration import calibration_data

    target = Path(spec.cache_dir) / "artifacts" / spec.engine / spec.conversion_key()
    with build_once(target, lambda t: (t / "conversion.json").exists()) as work:
        if work is None:  # force=true re-measures; the key proves the conversion is the same
            meta = json.loads((target / "conversion.json").read_text())
            meta["conversion_cached"] = True
            return _artifact_path(target, meta), meta
        calib = None
        if engine.needs_calibration(spec.precision, engine.params):
            calib = calibration_data(ds, engine.calibration_batch_size(engine.params, spec.sweep_batch_sizes))
            log.info("calibrating on %d batches", len(calib))
        log.info("converting %s -> %s %s", model.name, spec.engine, spec.precision)
        res = engine.convert(model, spec.precision, calib, work, spec.sweep_batch_sizes)
        art = Path(res.artifact)
        inside = work in art.parents
        meta = {"artifact_name": str(art.relative_to(work)) if inside else "", "artifact": str(art),
                "convert_time_s": res.convert_time_s, "calibrate_time_s": res.calibrate_time_s,
                "report": res.report, "metrics": res.metrics, "conversion_key": target.name,
                "identity": spec.conversion_identity(), "converted_at": time.time()}
        (work / "conversion.json").write_text(json.dumps(meta, indent=1, default=str))
    meta["conversion_cached"] = False
    return _artifact_path(target, meta), meta


def _artifact_path(target: Path, meta: dict) -> Path:
    """The artifact inside the conversion's directory, or outside it (engine=tf: the SavedModel itself)."""
    return target / meta["artifact_name"] if meta["artifact_name"] else Path(meta["artifact"])


def _fidelity(spec, conversion_key: str, loaded, eval_batches, ds, reference) -> dict:
    """Outputs on the evaluation set vs TF FP32, once per converted artifact and output-relevant settings:
    the batch size and thread counts do not change what a model computes, so their sweeps reuse it."""
    from trtsweep.fidelity import compare

    settings = {k: v for k, v in spec.engine_params.items() if "thread" not in k}
    key = digest([conversion_key, spec.data.__dict__, spec.data_fingerprint, settings])
    cache = Path(spec.cache_dir) / "artifacts" / spec.engine / conversion_key / f"fidelity-{key}.json"
    if cache.exists() and not spec.force:
        return json.loads(cache.read_text())
    outs = [loaded.to_float(loaded.run(loaded.prepare(b)))[0] for b in eval_batches]
    out = np.concatenate(outs)[: ds.eval_count]
    result = compare(out, reference, ds.labels)
    if cache.parent.is_dir():
        atomic_write_json(cache, result)
    return result


def run_trial(payload: dict) -> dict:
    from trtsweep import cores
    from trtsweep.config import TrialSpec
    from trtsweep.data import batches
    from trtsweep.host import host_facts
    from trtsweep.measure import measure

    spec = TrialSpec.from_dict(payload["spec"])
    pinned = cores.pin(spec.core_set)  # the trial's core budget, for every thread this worker has
    if payload.get("mlflow_model"):  # imported before the peak is reset: in every trial of the sweep alike
        import mlflow.pyfunc  # noqa: F401
    _reset_peak_rss()
    t_start = time.time()
    inject(payload.get("fault"))  # tests only (trtsweep.faults)
    model, ds, engine, artifact, conv = _converted(spec)
    t0 = time.perf_counter()
    reference = _reference(spec, model, ds)  # computed once (then from memory or the disk cache)
    reference_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = engine.load(artifact, model, spec.precision, spec.batch_size)
    load_s = time.perf_counter() - t0
    try:
        eval_batches = batches(ds.evaluation, spec.batch_size)
        prepared = loaded.prepare(eval_batches[0])
        log.info("measuring %s (warm-up %d, ≥%d iters and ≥%.1fs, ×%d, up to ×%d while the spread is > %.0f%%)",
                 spec.label(), spec.measure.warmup_iters, spec.measure.min_iters, spec.measure.min_time_s,
                 spec.measure.repeats, spec.measure.max_repeats, 100 * spec.measure.max_cv)
        t_measure = time.perf_counter()
        m = measure(slowed(payload.get("fault"), loaded.run), prepared, spec.batch_size, spec.measure,
                    on_step=_ask_parent if payload.get("report_steps") else None)
        measure_s = time.perf_counter() - t_measure
        run_metrics = loaded.run_metrics()  # after the timed loop, before fidelity adds its own batches
        t_fidelity = time.perf_counter()
        # a pruned trial is not worth its fidelity pass: it will never be recommended
        fidelity = {} if m.stopped else _fidelity(spec, conv["conversion_key"], loaded, eval_batches, ds, reference)
        fidelity_s = time.perf_counter() - t_fidelity  # ~0 when served from its cache (same artifact, settings)
        describe = loaded.describe()
        peak_rss_mb = _peak_rss_mb()  # the trial's own: packaging its MLflow model below is not part of it
        packaged = {} if m.stopped or not payload.get("mlflow_model") else _package(spec, engine, model, ds,
                                                                                    artifact, loaded)
    finally:
        loaded.close()
    metrics = {
        **m.metrics(), **fidelity, **{k: float(v) for k, v in conv["metrics"].items()}, **run_metrics,
        "convert_time_s": float(conv["convert_time_s"]), "calibrate_time_s": float(conv["calibrate_time_s"]),
        "load_time_s": load_s, "measure_time_s": measure_s, "fidelity_time_s": fidelity_s,
        "reference_time_s": reference_s,
        "conversion_reused": float(conv["conversion_cached"]), "model_size_mb": size_mb(artifact),
        "peak_rss_mb": peak_rss_mb,
        "eval_samples": float(ds.eval_count),
    }
    return {
        "metrics": metrics,
        "report": {"conversion": conv["report"], "runtime": {**describe, "core_set": pinned},
                   "model": model.to_dict(), "conversion_cached": conv["conversion_cached"],
                   "repeat_means_ms": m.repeat_means_ms, "repeat_trimmed_ms": m.repeat_trimmed_ms,
                   "step_end_s": m.step_end_s, **packaged},
        "artifact": str(artifact),
        "pruned": m.stopped,
        "unstable": m.unstable,
        "host": {**host_facts(), "host.core_set": cores.format_cores(pinned)},
        "started_at": t_start,
        "conversion_cached": conv["conversion_cached"],
    }


def _package(spec, engine, model, ds, artifact, loaded) -> dict:
    """The trial's MLflow model (trtsweep.mlflow_models), for the trial report: ``mlflow_model`` (its
    directory), or ``mlflow_model_error`` (one line: the trial itself stands)."""
    from trtsweep import mlflow_models
    from trtsweep.errors import one_line

    try:
        return {"mlflow_model": str(mlflow_models.package(spec, engine, model, ds, artifact, loaded))}
    except Exception as e:  # the measurement is complete and valid without it
        log.debug("MLflow model packaging failed", exc_info=True)
        return {"mlflow_model_error": one_line(e)}


def package_model(payload: dict) -> dict:
    """The MLflow model of a result served from the cache (measured when none was packaged)."""
    from trtsweep.config import TrialSpec

    spec = TrialSpec.from_dict(payload["spec"])
    model, ds, engine, artifact, _ = _converted(spec)
    loaded = engine.load(artifact, model, spec.precision, spec.batch_size)
    try:
        return _package(spec, engine, model, ds, artifact, loaded)
    finally:
        loaded.close()


def _ask_parent(step: int, throughput_ips: float) -> str | None:
    """Report a finished repeat and wait for the parent's verdict (trtsweep.steps): a reason to stop, or None."""
    _conn.send(("step", {"step": step, "throughput_ips": throughput_ips}))
    while True:
        kind, reason = _conn.recv()
        if kind == "step_verdict":
            return reason


# ---- confirmation: candidates loaded side by side, timed in interleaved rounds (see trtsweep.confirm) ----
_loaded: dict[str, tuple] = {}


def _converted(spec):
    """Model, dataset, engine, converted artifact and conversion record for ``spec`` (converted once per
    conversion key: trials and confirmation rounds share it)."""
    from trtsweep.engines.base import get_engine, make_params
    from trtsweep.types import ModelInfo

    model = ModelInfo.from_dict(resolve_model({"model": spec.model.__dict__, "cache_dir": spec.cache_dir}))
    ds = _dataset(spec, model)
    eng_cls = get_engine(spec.engine)
    engine = eng_cls(make_params(eng_cls, spec.engine_params))
    artifact, conv = convert_cached(spec, engine, model, ds)
    return model, ds, engine, artifact, conv


def confirm_load(payload: dict) -> bool:
    """Load a candidate and keep it (its inputs prepared) for ``confirm_run``."""
    from trtsweep import cores
    from trtsweep.config import TrialSpec
    from trtsweep.data import batches

    spec = TrialSpec.from_dict(payload["spec"])
    cores.pin(spec.core_set)
    model, ds, engine, artifact, _ = _converted(spec)
    loaded = engine.load(artifact, model, spec.precision, spec.batch_size)
    _loaded[payload["key"]] = (spec, loaded, loaded.prepare(batches(ds.evaluation, spec.batch_size)[0]))
    return True


def confirm_run(payload: dict) -> float:
    """One confirmation round of one candidate: its warm-up, then one timed repeat; items/s."""
    from trtsweep import cores
    from trtsweep.measure import timed_repeat, trimmed_mean

    spec, loaded, prepared = _loaded[payload["key"]]
    cores.pin(spec.core_set)
    m = spec.measure
    for _ in range(m.warmup_iters):
        loaded.run(prepared)
    lat = timed_repeat(loaded.run, prepared, m.min_iters, m.min_time_s)
    return spec.batch_size / (trimmed_mean(lat, m.trim) / 1000.0)


def confirm_close(_: Any = None) -> bool:
    for _spec, loaded, _prepared in _loaded.values():
        loaded.close()
    _loaded.clear()
    return True
