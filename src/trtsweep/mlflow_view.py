"""How a sweep reads in the MLflow UI (issue 10): what goes in a child's params, its run name, and what
the parent carries once the sweep is done.

* a child's params: the key axes (``model``, ``engine``, ``precision``, ``batch_size``, ``threads``) and the
  parameters that vary in the sweep (:func:`varying_keys`, fixed when the sweep starts), at most
  :data:`MAX_PARAMS`; the full config is the ``config.yaml`` artifact;
* a child's name: what differs, unique within the sweep, with a non-ok status visible
  (``tflite-int8-bs8-t2``, ``tf-int8-bs1-t2-SKIPPED``);
* the parent: the sweep's axes as params, host and library facts as tags (once, not on every child),
  a markdown description (``mlflow.note.content``) with the ranked configurations, the counts and the
  winner, ``best_run_name``/``best_run_id``, and the best child tagged ``best=true`` in every sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from trtsweep.redact import mask_url
from trtsweep.results import TrialStatus

log = logging.getLogger(__name__)

KEY_PARAMS = ("model", "engine", "precision", "batch_size", "threads")
#: kept on every child whatever varies: the bound a nightly judges the run's history with (nightly_verdict)
JUDGED_PARAMS = ("fidelity.max_accuracy_drop",)
MAX_PARAMS = 12
#: the MLflow 3 UI opens an experiment of this kind in its model-training view (runs, charts), not GenAI
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TAG = (EXPERIMENT_KIND, "custom_model_development")
#: set by a sweeper for its jobs: the varying parameter names, comma-separated
ENV_VARYING = "TRTSWEEP_VARYING"
#: measurement bookkeeping kept in trial_report.json only, so that MLflow's chart view leads with
#: throughput, latency and accuracy
INTERNAL_METRICS = frozenset({"latency_min_ms", "timed_iterations", "timed_repeats", "load_time_s",
                              "measure_time_s", "fidelity_time_s", "reference_time_s", "conversion_reused",
                              "eval_samples"})
STATUS_SUFFIX = {TrialStatus.FAILED: "FAILED", TrialStatus.SKIPPED: "SKIPPED", TrialStatus.PRUNED: "PRUNED",
                 TrialStatus.ACCURACY_VIOLATION: "VIOLATION", TrialStatus.INFEASIBLE: "INFEASIBLE"}
_DERIVED = ("precision.", "model.", "tracking.", "hydra.")  # follow a key axis or the sweep itself


def varying_keys(rows: Sequence[Mapping[str, str]]) -> list[str]:
    """The parameter names (as in :func:`trtsweep.config.mlflow_params`) that vary among a sweep's trials:
    a key axis with more than one value, or another parameter with more than one value among the trials
    of one model, engine and precision (so an engine's own defaults do not count as varying)."""
    out = [k for k in KEY_PARAMS if len({r.get(k) for r in rows}) > 1]
    groups: dict[tuple, dict[str, set]] = {}
    for r in rows:
        values = groups.setdefault((r.get("model"), r.get("engine"), r.get("precision")), {})
        for k, v in r.items():
            values.setdefault(k, set()).add(v)
    others = sorted({k for g in groups.values() for k, vs in g.items()
                     if len(vs) > 1 and k not in KEY_PARAMS and not k.startswith(_DERIVED)},
                    key=lambda k: (not k.startswith("engine."), k == "core_set", k))
    others = [k for k in others if k not in JUDGED_PARAMS]
    return out + others[:MAX_PARAMS - len(KEY_PARAMS) - len(JUDGED_PARAMS)]


def axis_values(rows: Sequence[Mapping[str, str]], keys: Iterable[str]) -> dict[str, str]:
    """Each varying key's values in the sweep, as the parent's params (``engine`` = ``tf,tflite``)."""
    out = {}
    for k in keys:
        vals = sorted({r[k] for r in rows if k in r}, key=lambda v: (len(v), v))
        out[k] = (" | " if any("," in v for v in vals) else ",").join(vals)[:6000]
    return out


def child_params(all_params: Mapping[str, str], varying: Sequence[str] | None) -> dict[str, str]:
    """The key axes and the varying parameters of one trial (never more than :data:`MAX_PARAMS`)."""
    keys = list(KEY_PARAMS) + list(JUDGED_PARAMS) + [k for k in (varying or []) if k not in KEY_PARAMS]
    return {k: all_params[k] for k in keys[:MAX_PARAMS] if k in all_params}


def run_name(all_params: Mapping[str, str], varying: Sequence[str] | None, status: str) -> str:
    """``[model-]engine-precision-bs<N>-t<threads>[-<param>=<value>...][-STATUS]``: what differs between
    the sweep's trials (so names are unique within it) and a non-ok status."""
    varying = list(varying or [])
    p = all_params
    parts = ([p["model"]] if "model" in varying else []) + [
        p.get("engine", "?"), p.get("precision", "?"), f"bs{p.get('batch_size', '?')}", f"t{p.get('threads', '?')}"]
    threads_vary = "threads" in varying
    for k in varying:
        if k in KEY_PARAMS or k == "core_set" or (threads_vary and "threads" in k) or k not in p:
            continue
        parts.append(f"{k.rsplit('.', 1)[-1]}={p[k]}")
    suffix = STATUS_SUFFIX.get(TrialStatus(status)) if status in set(TrialStatus) else None
    return "-".join(parts + ([suffix] if suffix else []))[:250]


def parse_env(value: str | None) -> list[str] | None:
    return [k for k in value.split(",") if k] if value is not None else None


def describe(df: Any, best: Any, best_name: str | None, top: int = 10) -> str:
    """The parent's description (markdown): counts, the winner and the ranked configurations."""
    import pandas as pd

    counts = df.status.value_counts().to_dict() if not df.empty else {}
    lines = [f"**{len(df)} trial(s)**: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
             + f" (skipped {counts.get('skipped', 0)}, failed {counts.get('failed', 0)}, violating "
             f"{counts.get('accuracy_violation', 0) + counts.get('infeasible', 0)})", ""]
    if best is not None:
        sp = best.get("speedup_vs_tf_fp32")
        lines += [f"**Winner**: `{best_name or best.trial_key}` — {best.throughput_ips:.1f} items/s, p50 "
                  f"{best.latency_p50_ms:.3f} ms" + (f", {sp:.2f}× TF FP32" if pd.notna(sp) else "")
                  + (f"; confirmed {best.confirm_throughput_ips:.1f} items/s by interleaved re-measurement"
                     if pd.notna(best.get("confirm_throughput_ips")) else ""), ""]
    else:
        lines += ["**No winner**: no trial passed the accuracy check and the constraints", ""]
    measured = df[df.status == TrialStatus.OK] if "throughput_ips" in df else df.iloc[0:0]
    if not measured.empty:
        ranked = measured.sort_values("throughput_ips", ascending=False).head(top)
        lines += ["Ranked by the sweep's throughput; ★ the winner.", "",
                  "| # | run | throughput (items/s) | p50 (ms) | accuracy | speed-up vs TF FP32 |",
                  "|---|---|---|---|---|---|"]
        for i, (_, r) in enumerate(ranked.iterrows(), 1):
            sp = r.get("speedup_vs_tf_fp32")
            acc = r.get("accuracy")
            star = " ★" if best is not None and r.trial_key == best.trial_key else ""
            lines.append(f"| {i} | {r.get('run_name') or r.trial_key}{star} | {r.throughput_ips:.1f} | "
                         f"{r.latency_p50_ms:.3f} | {'' if pd.isna(acc) else f'{acc:.4f}'} | "
                         f"{'' if pd.isna(sp) else f'{sp:.2f}×'} |")
    return "\n".join(lines)


def publish_sweep(tracker: Any, parent_id: str, df: Any, records: list[dict], sweep_dir: Path,
                  varying: Sequence[str] | None) -> None:
    """The parent's params, host tags, description, best run and plot; ``speedup_vs_tf_fp32`` and ``best``
    on the children.  Called once the sweep's table is final."""
    import time

    import pandas as pd
    from mlflow.entities import Metric, Param

    from trtsweep import report

    client = tracker.client
    # this sweep's child of each trial (a cached result also names the runs of earlier sweeps and stores)
    ours = {r["trial_key"]: (r.get("mlflow_run_ids") or {}).get(parent_id) or "" for r in records}
    df = df.assign(mlflow_run_id=df.trial_key.map(ours).fillna(""))
    names, child_rows = {}, []
    ts = int(time.time() * 1000)
    for _, r in df.iterrows():
        run_id = r.get("mlflow_run_id")
        if not run_id:
            continue
        sp = r.get("speedup_vs_tf_fp32")
        if pd.notna(sp):
            client.log_batch(run_id, metrics=[Metric("speedup_vs_tf_fp32", float(sp), ts, 0)])
    df = df.copy()
    run_ids = [x for x in df.get("mlflow_run_id", pd.Series(dtype=object)).tolist() if x]
    for run_id in run_ids:
        with suppress(Exception):  # a run of another store: no name
            run = client.get_run(run_id)
            names[run_id] = run.info.run_name
            child_rows.append(dict(run.data.params))
    df["run_name"] = [names.get(x, "") for x in df.get("mlflow_run_id", [""] * len(df))]
    best_rows = report.best_per_model(df)
    best = best_rows.sort_values("throughput_ips").iloc[-1] if not best_rows.empty else None
    parent_tags = {}
    if best is not None and best.get("mlflow_run_id"):
        for _, b in best_rows.iterrows():
            if b.get("mlflow_run_id"):
                tracker.tag(b.mlflow_run_id, {"best": "true"})
        parent_tags.update({"best_run_id": best.mlflow_run_id, "best_run_name": names.get(best.mlflow_run_id, "")})
    host = next((r.get("host") for r in records if r.get("host")), None) or {}
    parent_tags.update({k: v for k, v in host.items()})
    parent_tags["mlflow.note.content"] = describe(df, best, names.get(best.mlflow_run_id) if best is not None
                                                  else None)
    tracker.tag(parent_id, parent_tags)
    existing = client.get_run(parent_id).data.params
    axes = {k: v for k, v in axis_values(child_rows, varying or []).items() if v and k not in existing}
    if axes:
        client.log_batch(parent_id, params=[Param(k, v) for k, v in list(axes.items())[:100]])
    if "throughput_ips" in df and df.throughput_ips.notna().any():
        try:
            plot = report.plot(df, sweep_dir / "sweep_plot.png")
            client.log_artifact(parent_id, str(plot))
        except Exception as e:  # noqa: BLE001 - the plot is a view; the table holds the sweep
            log.warning("could not plot the sweep for MLflow: %s", e)


def ui_link(uri: str, experiment_id: str, parent_id: str) -> str:
    """Where to look at the sweep: its parent run (description, child runs) in the MLflow UI's model-training
    view (a local store: the command that serves it first)."""
    path = f"#/experiments/{experiment_id}/runs/{parent_id}?workflowType=machine_learning"  # not the GenAI view
    uri = mask_url(uri)
    if uri.startswith(("http://", "https://")):
        return f"MLflow: {uri.rstrip('/')}/{path}"
    return f"MLflow: mlflow ui --backend-store-uri {uri} --host 127.0.0.1  → http://127.0.0.1:5000/{path}"


def dataset_inputs(spec: Any, metrics: Mapping[str, float]) -> list:
    """The trial's evaluation data (and calibration data, when it calibrated) as MLflow dataset inputs,
    each with a digest of what it was drawn from (source, file content, seed, sample count, model)."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    from trtsweep.identity import data_fingerprint, digest

    d = spec.data
    content = data_fingerprint(d.path) if d.path else None
    source = json.dumps({"uri": str(Path(d.path).expanduser().resolve()) if d.path else f"trtsweep:{d.name}"})
    out = []
    for context, n in (("evaluation", d.eval_samples), ("calibration", d.calibration_samples)):
        if context == "calibration" and not (metrics.get("calibrate_time_s") or 0) > 0:
            continue
        ident = {"data": d.name, "content": content, "seed": d.seed, "samples": n, "model": spec.model.name}
        ds = Dataset(name=f"{d.name}-{context}", digest=digest(ident, 12), source_type="local" if d.path else "code",
                     source=source, profile=json.dumps({"num_rows": n, "seed": d.seed}))
        out.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)]))
    return out
