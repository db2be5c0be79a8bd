"""Results tables with pandas: one row per trial, speed-up over TF FP32, best passing config, Pareto front."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from trtsweep.atomic import atomic_write
from trtsweep.constraints import ACCURACY, NAMES, ConstraintsConfig, setting, verdict, violated
from trtsweep.regression import THROUGHPUT, Measurement, Rule, speed_change
from trtsweep.results import MEASURED, TrialStatus

KEY_COLUMNS = ["model", "engine", "precision", "batch_size", "status"]
SHOW_METRICS = ["latency_p50_ms", "throughput_ips", "top1_agreement", "accuracy_drop"]


def row(result: dict) -> dict:
    spec = result["spec"]
    r = {
        "trial_key": result["trial_key"], "model": spec["model"]["name"], "engine": spec["engine"],
        "precision": spec["precision"], "batch_size": spec["batch_size"], "status": str(result["status"]),
        "reason": result.get("reason") or "", "data": spec["data"]["name"], "threads": spec.get("threads"),
        "core_set": ",".join(map(str, spec.get("core_set") or [])), "cached": bool(result.get("cached", False)),
        "unstable": bool(result.get("unstable", False)),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result["started_at"]))
        if result.get("started_at") else "",
    }
    r.update({f"engine.{k}": v for k, v in spec["engine_params"].items()})
    r.update(result.get("metrics") or {})
    if r["status"] in MEASURED:  # the constraints it violates, under the bounds it was judged with
        r["violates"] = ",".join(violated(result.get("metrics") or {}, spec.get("constraints"),
                                          (spec.get("fidelity") or {}).get("max_accuracy_drop")))
    host = result.get("host") or {}
    for k in ("host.cpu_model", "host.cpu_flags", "host.cores", "host.gpu"):
        if k in host:
            r[k] = host[k]
    # the child run under the newest parent: a result from the cache was logged again under this sweep's
    # parent, after the parents it was logged under before (the first one is an earlier sweep's run)
    r["mlflow_run_id"] = next(reversed((result.get("mlflow_run_ids") or {}).values()), "")
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
    # the reference is a measurement: a TF FP32 trial over a bound (too slow, too big) still is one
    base = df[(df.engine == "tf") & (df.precision == "fp32") & df.status.isin(MEASURED)]
    for (model, bs), grp in base.groupby(["model", "batch_size"]):
        ref = grp["throughput_ips"].max()
        mask = (df.model == model) & (df.batch_size == bs)
        df.loc[mask, "speedup_vs_tf_fp32"] = df.loc[mask, "throughput_ips"] / ref
    return df


def best_per_model(df: pd.DataFrame) -> pd.DataFrame:
    """The recommended trial per model (and batch size): the confirmed winner where the sweep confirmed
    one, else the fastest that passed the accuracy check and every constraint (status ``ok``: never an
    ``accuracy_violation`` or ``infeasible`` one), stable ones first (an unstable trial is recommended
    only when no stable one passed)."""
    if df.empty or "throughput_ips" not in df:
        return df.iloc[0:0]
    ok = df[df.status == TrialStatus.OK].dropna(subset=["throughput_ips"])
    if ok.empty:
        return ok
    rows = []
    for _, grp in ok.groupby(["model", "batch_size"]):
        if "best" in grp and grp["best"].fillna(False).astype(bool).any():
            rows.append(grp[grp["best"].fillna(False).astype(bool)].iloc[0])
            continue
        stable = grp[~grp["unstable"].fillna(False).astype(bool)] if "unstable" in grp else grp
        pool = stable if not stable.empty else grp
        rows.append(pool.loc[pool["throughput_ips"].idxmax()])
    return pd.DataFrame(rows).reset_index(drop=True)


def apply_confirmation(df: pd.DataFrame, verdicts: Sequence) -> pd.DataFrame:
    """Columns from the confirmation step: ``confirm_*`` metrics, ``best`` (the recommended trial of its
    group) and ``tie`` (statistically tied with the fastest candidate)."""
    if df.empty or not verdicts:
        return df
    df = df.copy()
    df["best"] = False
    df["tie"] = False
    for v in verdicts:
        for key, st in v.stats.items():
            mask = df.trial_key == key
            for col, val in st.items():
                df.loc[mask, col] = val
            df.loc[mask, "tie"] = v.is_tie and key in v.tied
        df.loc[df.trial_key == v.winner, "best"] = True
    return df


def pareto_front(df: pd.DataFrame, x: str = "accuracy_drop", y: str = "throughput_ips") -> pd.DataFrame:
    """Trials not dominated in (lower ``x``, higher ``y``), per model: the accuracy trade-off of the
    trials within every other bound (``ok`` and ``accuracy_violation`` ones, never an infeasible one)."""
    if df.empty or x not in df or y not in df:
        return df.iloc[0:0]
    d = df[_within_other_bounds(df)].dropna(subset=[x, y])
    keep = []
    for _, grp in d.groupby("model"):
        g = grp.sort_values([x, y], ascending=[True, False])
        best = -float("inf")
        for idx, r in g.iterrows():
            if r[y] > best:
                keep.append(idx)
                best = r[y]
    return d.loc[keep]


def _within_other_bounds(df: pd.DataFrame) -> pd.Series:
    """Measured rows that violate no bound but (perhaps) the accuracy one."""
    ok = df.status.isin([TrialStatus.OK, TrialStatus.ACCURACY_VIOLATION])
    if "violates" in df:
        ok &= df["violates"].fillna("").astype(str).map(lambda v: set(filter(None, v.split(","))) <= {ACCURACY})
    return ok


def judge(df: pd.DataFrame, constraints: ConstraintsConfig | None, max_accuracy_drop: float | None = None
          ) -> pd.DataFrame:
    """The measured rows judged again under these bounds (``trtsweep report``/``compare`` options), with the
    function the runner uses: ``status``, ``reason`` and ``violates`` replaced.  ``max_accuracy_drop`` None:
    a row keeps its recorded accuracy verdict (the other bounds are judged)."""
    if df.empty or "status" not in df:
        return df
    df = df.copy()
    for col in ("reason", "violates"):
        df[col] = df[col].astype(object) if col in df else ""
    for idx, r in df[df.status.isin(MEASURED)].iterrows():
        metrics = {k: r[k] for k in NAMES if k in r and pd.notna(r[k])}
        status, reason = verdict(metrics, constraints, max_accuracy_drop)
        names = violated(metrics, constraints, max_accuracy_drop)
        if max_accuracy_drop is None and r.status == TrialStatus.ACCURACY_VIOLATION:
            kept = str(r.get("reason") or "accuracy_violation").split("; ")[0]
            status, reason, names = TrialStatus.ACCURACY_VIOLATION, "; ".join(filter(None, [kept, reason])), \
                [ACCURACY, *names]
        df.loc[idx, ["status", "reason", "violates"]] = [str(status), reason or "", ",".join(names)]
    return df


def write(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """results.csv and results.parquet, each written atomically."""
    paths = []
    for name, writer in (("results.csv", lambda p: df.to_csv(p, index=False)),
                         ("results.parquet", lambda p: df.to_parquet(p, index=False))):
        try:
            paths.append(atomic_write(out_dir / name, writer))
        except Exception:
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
    lines += best_lines(df)
    cached = df[df.get("cached", pd.Series(False, index=df.index)).fillna(False).astype(bool)]
    if not cached.empty:
        lines.append(f"{len(cached)} result(s) served from the cache (same model content, library versions, host "
                     f"and settings), first measured {cached.measured_at.min()} … {cached.measured_at.max()}; "
                     f"force=true re-measures")
    lines += infeasible_lines(df)
    failed = df[df.status.isin([TrialStatus.FAILED, TrialStatus.SKIPPED])]
    for _, r in failed.iterrows():
        lines.append(f"{r.status}: {r.model} {r.engine} {r.precision} bs={r.batch_size} — {r.reason}")
    return "\n".join(lines)


def best_lines(df: pd.DataFrame) -> list[str]:
    """The recommended configuration per model and batch size (:func:`best_per_model`), one line each."""
    best = best_per_model(df)
    lines = [] if not best.empty else ["no trial passed the accuracy check and the constraints"]
    varied = set(swept_columns(df))
    for _, r in best.iterrows():
        params = ", ".join(f"{c[7:]}={_plain(r[c])}" for c in best.columns
                           if c.startswith("engine.") and c in varied and pd.notna(r[c]))
        sp = r.get("confirm_speedup_vs_tf_fp32") if pd.notna(r.get("confirm_speedup_vs_tf_fp32")) \
            else r.get("speedup_vs_tf_fp32")
        same_rounds = " (timed in the same interleaved rounds)" if pd.notna(r.get("confirm_speedup_vs_tf_fp32")) else ""
        sp_txt = (f", {sp:.2f}x vs tf fp32{same_rounds}" if pd.notna(sp)
                  else " (no engine=tf precision=fp32 trial at this batch size)")
        conf = r.get("confirm_throughput_ips")
        conf_txt = (f"; confirmed {conf:.1f} items/s (95% CI {r.confirm_ci_low:.1f}–{r.confirm_ci_high:.1f})"
                    + (" — a statistical TIE, the cheapest of the tied is recommended" if r.get("tie") else "")
                    if pd.notna(conf) else "")
        flags = (" [cached, measured " + str(r.measured_at) + "]" if r.get("cached") else "") + (
            f" [UNSTABLE: spread {r.latency_cv:.0%}]" if r.get("unstable") else "")
        lines.append(
            f"best for {r.model} bs={r.batch_size}: engine={r.engine} precision={r.precision}"
            + (f" threads={_plain(r.threads)}" if pd.notna(r.get("threads")) else "")
            + (f" [{params}]" if params else "")
            + f" — p50 {r.latency_p50_ms:.3f} ms, {r.throughput_ips:.1f} items/s{sp_txt}{conf_txt}{flags}"
        )
    return lines


def infeasible_lines(df: pd.DataFrame) -> list[str]:
    """One line: how many trials were measured but are over a bound (never best), and which bounds."""
    bad = df[df.status == TrialStatus.INFEASIBLE]
    if bad.empty:
        return []
    names = [n for v in bad.get("violates", pd.Series(dtype=object)).fillna("").astype(str)
             for n in v.split(",") if n]
    which = ", ".join(f"{setting(n)} ×{names.count(n)}" for n in NAMES if n in names)
    return [f"infeasible: {len(bad)} trial(s) measured but over a bound" + (f" ({which})" if which else "")
            + "; the reason column says by how much"]


def violation_lines(df: pd.DataFrame) -> list[str]:
    """Each measured row over a bound: its configuration and the bound(s), by how much (its reason)."""
    bad = df[df.status.isin([TrialStatus.ACCURACY_VIOLATION, TrialStatus.INFEASIBLE])]
    keys = [c for c in config_columns(df) if c not in ("model", "engine", "precision", "batch_size")]
    return [f"{r.status}: {r.model} {r.engine} {r.precision} bs={_plain(r.batch_size)}"
            + "".join(f" {c}={_plain(r[c])}" for c in keys if pd.notna(r[c]))
            + f" — {r.get('reason') or r.get('violates') or '?'}" for _, r in bad.iterrows()]


def swept_columns(df: pd.DataFrame) -> list[str]:
    """Configuration columns beyond the key ones that differ between rows (``threads``, ``engine.*``…):
    without them, rows that differ only there would look like duplicates."""
    cands = ["threads", "data"] + sorted(c for c in df.columns if c.startswith("engine."))
    out = []
    for c in cands:
        if c in df and df[c].dropna().astype(str).nunique() > 1:
            out.append(c)
    return out


def short_table(df: pd.DataFrame) -> str:
    flags = [c for c in ("cached", "unstable", "best", "tie") if c in df and df[c].fillna(False).astype(bool).any()]
    extra = [c for c in ("confirm_throughput_ips",) if c in df]
    cols = [c for c in KEY_COLUMNS + swept_columns(df) + SHOW_METRICS + ["speedup_vs_tf_fp32"] + extra + flags
            if c in df]
    with pd.option_context("display.max_columns", 40, "display.width", 220, "display.float_format", "{:.4g}".format):
        return df[cols].to_string(index=False)


def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns that identify a configuration (not a measurement)."""
    return [c for c in ["model", "engine", "precision", "batch_size", "threads", "data"] if c in df] + sorted(
        c for c in df.columns if c.startswith("engine."))


def regressions(baseline: pd.DataFrame, current: pd.DataFrame, max_slowdown: float = 0.10,
                max_accuracy_loss: float = 0.005, sigmas: float = 0.0) -> pd.DataFrame:
    """Configurations present in both whose throughput fell by more than ``max_slowdown`` (fraction) and
    by more than the noise (``sigmas`` × the two trials' repeat spread, ``latency_cv``: the rule of
    :mod:`trtsweep.regression`, the nightly's), whose accuracy_drop rose by more than ``max_accuracy_loss``,
    or that passed before and fail now.  A row also says when the two results came from different CPUs
    (then it may be the machine, not a regression)."""
    rule = Rule(floor=max_slowdown, sigmas=sigmas).validate()
    keys = [c for c in config_columns(baseline) if c in current]
    b = baseline.astype({k: str for k in keys}).drop_duplicates(keys, keep="last")
    c = current.astype({k: str for k in keys}).drop_duplicates(keys, keep="last")
    m = b.merge(c, on=keys, suffixes=("_base", "_now"))
    out = []
    for _, r in m.iterrows():
        why = []
        if r.get("status_base") == TrialStatus.OK and r.get("status_now") != TrialStatus.OK:
            now_reason = r.get("reason_now")
            why.append(f"status {r.status_base} → {r.status_now}"
                       + (f" ({now_reason})" if isinstance(now_reason, str) and now_reason else ""))
        base, now = ({m: r.get(f"{m}_{side}") for m in (THROUGHPUT, "latency_cv")} for side in ("base", "now"))
        slower = speed_change(THROUGHPUT, Measurement.of(now), [Measurement.of(base)], rule)
        if slower is not None and slower.regressed:
            why.append(slower.text())
        ab, an = r.get("accuracy_drop_base"), r.get("accuracy_drop_now")
        if pd.notna(ab) and pd.notna(an) and an - ab > max_accuracy_loss:
            why.append(f"accuracy_drop {ab:.4f} → {an:.4f}")
        if why:
            same_host = all(r.get(f"{h}_base") == r.get(f"{h}_now") for h in ("host.cpu_model", "host.cpu_flags")
                            if f"{h}_base" in r)
            out.append({**{k: r[k] for k in keys if not k.startswith("engine.")}, "regression": "; ".join(why),
                        "same_host": same_host})
    return pd.DataFrame(out)


def plot(df: pd.DataFrame, path: Path) -> Path:
    """Throughput vs accuracy drop, one marker per engine, Pareto front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df[df.status.isin(MEASURED)].dropna(subset=["throughput_ips"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for engine, grp in d.groupby("engine"):
        ax.scatter(grp.get("accuracy_drop", pd.Series(0, index=grp.index)).fillna(0), grp.throughput_ips,
                   label=engine, alpha=0.8)
        for _, r in grp.iterrows():
            ax.annotate(f"{r.precision} bs{r.batch_size}", (r.get("accuracy_drop", 0) or 0, r.throughput_ips),
                        fontsize=7, alpha=0.7)
    front = pareto_front(d)
    if not front.empty:
        f = front.sort_values("accuracy_drop")
        ax.plot(f.accuracy_drop, f.throughput_ips, "k--", lw=1, label="Pareto front")
    ax.set_xlabel("accuracy_drop vs TF FP32")
    ax.set_ylabel("throughput_ips (items/s)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["table", "write", "best_per_model", "apply_confirmation", "pareto_front", "judge", "summary_text",
           "best_lines", "short_table", "infeasible_lines", "violation_lines", "swept_columns", "regressions", "plot"]
