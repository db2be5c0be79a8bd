"""Results tables with pandas: one row per trial, speed-up over TF FP32, best passing config, Pareto front."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd

from trtsweep.config import flatten

KEY_COLUMNS = ["model", "engine", "precision", "batch_size", "status"]
SHOW_METRICS = ["latency_p50_ms", "throughput_ips", "top1_agreement", "accuracy_drop"]


def row(result: dict) -> dict:
    spec = result["spec"]
    r = {
        "trial_key": result["trial_key"], "model": spec["model"]["name"], "engine": spec["engine"],
        "precision": spec["precision"], "batch_size": spec["batch_size"], "status": result["status"],
        "reason": result.get("reason") or "", "data": spec["data"]["name"], "cached": result.get("cached", False),
    }
    r.update({f"engine.{k}": v for k, v in spec["engine_params"].items()})
    r.update(result.get("metrics") or {})
    host = result.get("host") or {}
    for k in ("host.cpu_model", "host.cpu_flags", "host.cores", "host.gpu"):
        if k in host:
            r[k] = host[k]
    r["mlflow_run_id"] = next(iter((result.get("mlflow_run_ids") or {}).values()), "")
    return r


def table(results: Iterable[dict]) -> pd.DataFrame:
    df = pd.DataFrame([row(r) for r in results])
    if df.empty:
        return df
    df = df.drop_duplicates("trial_key", keep="last").reset_index(drop=True)
    return add_speedup(df)


def add_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """``speedup_vs_tf_fp32``: throughput ratio to engine=tf precision=fp32 at the same model and batch size."""
    df = df.copy()
    df["speedup_vs_tf_fp32"] = float("nan")
    if "throughput_ips" not in df:
        return df
    base = df[(df.engine == "tf") & (df.precision == "fp32") & (df.status == "ok")]
    for (model, bs), grp in base.groupby(["model", "batch_size"]):
        ref = grp["throughput_ips"].max()
        mask = (df.model == model) & (df.batch_size == bs)
        df.loc[mask, "speedup_vs_tf_fp32"] = df.loc[mask, "throughput_ips"] / ref
    return df


def best_per_model(df: pd.DataFrame) -> pd.DataFrame:
    """Fastest trial per model (and batch size) that passed the accuracy check."""
    if df.empty or "throughput_ips" not in df:
        return df.iloc[0:0]
    ok = df[df.status == "ok"].dropna(subset=["throughput_ips"])
    if ok.empty:
        return ok
    return ok.loc[ok.groupby(["model", "batch_size"])["throughput_ips"].idxmax()].reset_index(drop=True)


def pareto_front(df: pd.DataFrame, x: str = "accuracy_drop", y: str = "throughput_ips") -> pd.DataFrame:
    """Trials not dominated in (lower ``x``, higher ``y``), per model."""
    if df.empty or x not in df or y not in df:
        return df.iloc[0:0]
    d = df[df.status.isin(["ok", "accuracy_violation"])].dropna(subset=[x, y])
    keep = []
    for _, grp in d.groupby("model"):
        g = grp.sort_values([x, y], ascending=[True, False])
        best = -float("inf")
        for idx, r in g.iterrows():
            if r[y] > best:
                keep.append(idx)
                best = r[y]
    return d.loc[keep]


def write(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """results.csv and results.parquet, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, writer in (("results.csv", lambda p: df.to_csv(p, index=False)),
                         ("results.parquet", lambda p: df.to_parquet(p, index=False))):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=name, suffix=".tmp")
        os.close(fd)
        try:
            writer(tmp)
            os.replace(tmp, out_dir / name)
            paths.append(out_dir / name)
        except Exception:  # noqa: BLE001 - parquet needs pyarrow; the csv is the contract
            if os.path.exists(tmp):
                os.unlink(tmp)
            if name == "results.csv":
                raise
    return paths


def load_trial_records(out_dir: Path) -> list[dict]:
    recs = []
    for p in sorted((out_dir / "trials").glob("*.json")):
        try:
            recs.append(json.loads(p.read_text()))
        except ValueError:
            continue
    return recs


def _plain(v):
    """1.0 -> 1 (pandas turns int columns with gaps into floats)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def summary_text(df: pd.DataFrame) -> str:
    if df.empty:
        return "no trials"
    counts = df.status.value_counts().to_dict()
    lines = ["trials: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))]
    best = best_per_model(df)
    if best.empty:
        lines.append("no trial passed the accuracy check")
    for _, r in best.iterrows():
        params = ", ".join(f"{c[7:]}={_plain(r[c])}" for c in best.columns if c.startswith("engine.") and pd.notna(r[c]))
        sp = r.get("speedup_vs_tf_fp32")
        sp_txt = f", {sp:.2f}x vs tf fp32" if pd.notna(sp) else " (no engine=tf precision=fp32 trial at this batch size)"
        lines.append(
            f"best for {r.model} bs={r.batch_size}: engine={r.engine} precision={r.precision}"
            + (f" [{params}]" if params else "")
            + f" — p50 {r.latency_p50_ms:.3f} ms, {r.throughput_ips:.1f} items/s{sp_txt}"
        )
    failed = df[df.status.isin(["failed", "skipped"])]
    for _, r in failed.iterrows():
        lines.append(f"{r.status}: {r.model} {r.engine} {r.precision} bs={r.batch_size} — {r.reason}")
    return "\n".join(lines)


def short_table(df: pd.DataFrame) -> str:
    cols = [c for c in KEY_COLUMNS + SHOW_METRICS + ["speedup_vs_tf_fp32"] if c in df]
    with pd.option_context("display.max_columns", 20, "display.width", 160, "display.float_format", "{:.4g}".format):
        return df[cols].to_string(index=False)


__all__ = ["table", "write", "best_per_model", "pareto_front", "summary_text", "short_table", "flatten"]
