"""What the HTML/Markdown report says, as plain data (no HTML here: the templates lay it out).

* :func:`trial_table`: every trial, one row each, the columns the report shows (display names);
* :func:`recommendations`: per model and batch size, the confirmed fastest configuration that passes
  every constraint (``report.best_per_model``), with :func:`reproduce_command`;
* :func:`not_measured` / :func:`over_bounds`: failed, skipped and pruned trials, and trials measured
  but over a bound, each with its reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from trtsweep import report
from trtsweep.results import TrialStatus

#: result column → column heading of the trials table, in the order shown (after the configuration)
METRIC_HEADINGS = {
    "throughput_ips": "throughput (items/s)", "throughput_ci": "95% CI", "latency_p50_ms": "p50 (ms)",
    "latency_p99_ms": "p99 (ms)", "speedup_vs_tf_fp32": "speed-up vs TF FP32", "accuracy_drop": "accuracy drop",
    "top1_agreement": "top-1 agreement", "converted_fraction": "converted fraction",
    "convert_time_s": "convert (s)", "calibrate_time_s": "calibrate (s)", "model_size_mb": "size (MB)",
    "confirm_throughput_ips": "confirmed (items/s)",
}
NOT_MEASURED = (TrialStatus.FAILED, TrialStatus.SKIPPED, TrialStatus.PRUNED)
OVER_BOUND = (TrialStatus.ACCURACY_VIOLATION, TrialStatus.INFEASIBLE)
#: overrides of best.yaml that say where results live, not what was measured
NOT_REPRODUCED = ("cache_dir=", "hydra.", "+hydra.")


def hydra_value(v: Any) -> str:
    """A value as a Hydra override writes it: true/false, null, 2 (not 2.0)."""
    if hasattr(v, "item") and not isinstance(v, str):  # a numpy scalar (a column read from a table)
        v = v.item()
    if isinstance(v, bool) or v in ("True", "False"):
        return str(v).lower()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v == ""


@lru_cache(maxsize=None)
def _engine(name: str) -> tuple[dict, tuple[str, ...]]:
    """An engine's default parameters and its thread parameters (those that follow ``threads``)."""
    from trtsweep.engines.base import get_engine

    eng = get_engine(name)
    return {k: hydra_value(v) for k, v in dataclasses.asdict(eng.Params()).items()}, eng.thread_params


@lru_cache(maxsize=None)
def _default_data(model: str) -> str | None:
    """The data a shipped model uses with ``data=auto``; None for a model of the user's own."""
    import yaml

    path = Path(__file__).parent / "conf" / "model" / f"{model}.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("default_data") if path.is_file() else None


def reproduce_command(row: Mapping[str, Any], overrides: list[str] | None = None) -> str:
    """``python sweep.py model=… engine=… precision=… batch_size=… threads=… [engine.<p>=…]``: the
    trial's configuration (:func:`setting_overrides`), then the trial's other ``overrides`` (from
    best.yaml: ``model.path=``, ``measure.*``…; not ``cache_dir`` nor ``hydra.*``)."""
    threads = row.get("threads")
    core = {"model": row["model"], "engine": row["engine"], "precision": row["precision"],
            "batch_size": row["batch_size"], "threads": None if _missing(threads) else threads}
    parts = [f"{k}={hydra_value(v)}" for k, v in core.items() if v is not None] + setting_overrides(row)
    written = {p.split("=", 1)[0] for p in parts}
    parts += [o for o in overrides or [] if o.split("=", 1)[0].lstrip("+~") not in written
              and not o.startswith(NOT_REPRODUCED)]
    return "python sweep.py " + " ".join(parts)


def setting_overrides(row: Mapping[str, Any]) -> list[str]:
    """The trial's settings beyond model, engine, precision, batch size and threads: ``data=`` where it
    is not the model's own, and the engine parameters that differ from the engine's defaults (a thread
    parameter only where it differs from ``threads``, which it otherwise follows)."""
    row = dict(row)  # a pandas row too: its keys, not its values
    parts = []
    data = row.get("data")
    if not _missing(data) and data != _default_data(str(row["model"])):
        parts.append(f"data={data}")
    try:
        defaults, thread_params = _engine(str(row["engine"]))
    except Exception:  # noqa: BLE001 - an engine this install lacks: every recorded parameter is written
        defaults, thread_params = {}, ()
    for col in sorted(c for c in row if str(c).startswith("engine.")):
        name, value = col[len("engine."):], row[col]
        if _missing(value):
            continue
        same = (hydra_value(value) == hydra_value(row.get("threads")) if name in thread_params
                else defaults.get(name) == hydra_value(value))
        if not same:
            parts.append(f"{col}={hydra_value(value)}")
    return parts


def _true(v: Any) -> bool:
    return v is True or str(v).lower() == "true"


def _flag(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df:
        return pd.Series(False, index=df.index)
    return df[col].map(_true)


def recommended_keys(df: pd.DataFrame) -> set[str]:
    return set(report.best_per_model(df).get("trial_key", pd.Series(dtype=str)))


def trial_table(df: pd.DataFrame, front: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials table and one CSS class per cell (its row's status, ``best`` for a recommended row).

    Every trial: model, engine, precision, batch size, the swept parameters, status, the metrics of
    :data:`METRIC_HEADINGS`, marks (recommended, Pareto, tie, unstable, cached), reason and trial key.
    Sorted by model, batch size and throughput (fastest first; unmeasured trials last)."""
    d = df.copy()
    if "throughput_ips" in d:
        d = d.sort_values(["model", "batch_size", "throughput_ips"], ascending=[True, True, False],
                          na_position="last", kind="stable")
    if "throughput_ci_low" in d and "throughput_ci_high" in d:
        d["throughput_ci"] = [f"{lo:,.1f}–{hi:,.1f}" if pd.notna(lo) and pd.notna(hi) else None
                              for lo, hi in zip(d.throughput_ci_low, d.throughput_ci_high, strict=True)]
    if "trt_converted_fraction" in d:  # TF-TRT's name for the same thing
        d["converted_fraction"] = d.get("converted_fraction", pd.Series(index=d.index)).fillna(
            d.trt_converted_fraction)
    best = recommended_keys(df)
    pareto = set(front.get("trial_key", pd.Series(dtype=str)))
    keys = d.get("trial_key", pd.Series("", index=d.index)).astype(str)
    marks = {"recommended": keys.isin(best), "Pareto": keys.isin(pareto), "tie": _flag(d, "tie"),
             "unstable": _flag(d, "unstable"), "cached": _flag(d, "cached")}
    d["marks"] = [", ".join(m for m, s in marks.items() if s.loc[i]) for i in d.index]
    config = ["model", "engine", "precision", "batch_size"] + report.swept_columns(d)
    cols = config + ["status"] + [c for c in METRIC_HEADINGS if c in d and d[c].notna().any()] \
        + ["marks", "reason", "trial_key"]
    out = d[[c for c in cols if c in d]].rename(columns={**METRIC_HEADINGS, "batch_size": "batch size",
                                                          "trial_key": "trial"})
    classes = pd.DataFrame("", index=out.index, columns=out.columns)
    for i in out.index:
        classes.loc[i, :] = f"status-{d.loc[i, 'status']}" + (" best" if keys.loc[i] in best else "")
    return out.reset_index(drop=True), classes.reset_index(drop=True)


def recommendations(df: pd.DataFrame, verdicts: list[dict], best: list[dict]) -> list[dict]:
    """Per model and batch size: the recommended trial (``report.best_per_model``: the confirmed winner,
    else the fastest stable trial that passes every constraint) as a dict for the templates, and the
    groups where no trial passed (``engine`` None)."""
    texts = {v.get("winner"): v.get("text", "") for v in verdicts}
    overrides = {b.get("trial_key"): b.get("overrides") or [] for b in best}
    picked = report.best_per_model(df)
    out = []
    for _, r in picked.iterrows():
        confirmed = _true(r.get("best")) and pd.notna(r.get("confirm_throughput_ips"))
        speedup = r.get("confirm_speedup_vs_tf_fp32") if confirmed and pd.notna(
            r.get("confirm_speedup_vs_tf_fp32")) else r.get("speedup_vs_tf_fp32")
        out.append({
            "model": r.model, "batch_size": hydra_value(r.batch_size), "engine": r.engine, "precision": r.precision,
            "threads": None if _missing(r.get("threads")) else hydra_value(r.threads),
            "params": " ".join(setting_overrides(r)), "trial_key": r.get("trial_key", ""),
            "throughput": r.throughput_ips, "ci": (r.get("throughput_ci_low"), r.get("throughput_ci_high")),
            "p50": r.get("latency_p50_ms"), "p99": r.get("latency_p99_ms"), "accuracy_drop": r.get("accuracy_drop"),
            "confirmed": confirmed, "confirm": (r.get("confirm_throughput_ips"), r.get("confirm_ci_low"),
                                                r.get("confirm_ci_high")),
            "speedup": speedup if pd.notna(speedup) else None, "same_rounds": confirmed and pd.notna(
                r.get("confirm_speedup_vs_tf_fp32")),
            "tie": _true(r.get("tie")), "unstable": _true(r.get("unstable")),
            "verdict": texts.get(r.get("trial_key"), ""),
            "command": reproduce_command(r, overrides.get(r.get("trial_key"))),
        })
    done = {(o["model"], o["batch_size"]) for o in out}
    for (model, bs), _ in df.groupby(["model", "batch_size"]):
        if (model, hydra_value(bs)) not in done:
            out.append({"model": model, "batch_size": hydra_value(bs), "engine": None})
    return sorted(out, key=lambda o: (str(o["model"]), float(o["batch_size"])))


def _listed(df: pd.DataFrame, statuses: tuple) -> list[dict]:
    rows = df[df.status.isin(statuses)]
    return [{"status": r.status, "trial": describe(r),
             "reason": r.get("reason") if isinstance(r.get("reason"), str) and r.get("reason") else
             (r.get("violates") or "—")} for _, r in rows.iterrows()]


def describe(r: Mapping[str, Any]) -> str:
    """``digits_cnn tflite int8 bs=1 threads=2 engine.use_xnnpack=false``: what sets a trial apart."""
    threads = r.get("threads")
    return (f"{r['model']} {r['engine']} {r['precision']} bs={hydra_value(r['batch_size'])}"
            + ("" if _missing(threads) else f" threads={hydra_value(threads)}")
            + "".join(f" {o}" for o in setting_overrides(r)))


def not_measured(df: pd.DataFrame) -> list[dict]:
    """Failed, skipped and pruned trials with their reasons."""
    return _listed(df, NOT_MEASURED)


def over_bounds(df: pd.DataFrame) -> list[dict]:
    """Trials measured but over a bound (accuracy or another constraint), with the bound and by how much."""
    return _listed(df, OVER_BOUND)


def pareto_rows(front: pd.DataFrame) -> list[dict]:
    """The Pareto set (``report.pareto_front``: accuracy drop ↓, throughput ↑ per model)."""
    if front.empty:
        return []
    return [{"model": r.model, "trial": describe(r).split(" ", 1)[1],
             "accuracy_drop": r.accuracy_drop, "throughput": r.throughput_ips, "trial_key": r.get("trial_key", "")}
            for _, r in front.sort_values(["model", "accuracy_drop"]).iterrows()]


__all__ = ["METRIC_HEADINGS", "describe", "hydra_value", "not_measured", "over_bounds", "pareto_rows",
           "recommendations", "recommended_keys", "reproduce_command", "setting_overrides", "trial_table"]
