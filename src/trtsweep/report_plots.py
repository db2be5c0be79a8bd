"""The HTML report's plots (matplotlib), each returned as a PNG ``data:`` URI to embed in the page.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state, no GUI backend), one panel
per model where the plot is per model:

* :func:`throughput_by_engine`: the best measured throughput of each engine × precision;
* :func:`latency_vs_batch`: p50 (and p99, dashed) latency against batch size per engine × precision;
* :func:`pareto`: throughput against accuracy drop, the Pareto front marked;
* :func:`parameter_effects`: throughput at each value of every swept parameter;
* :func:`history`: (nightly) each configuration's throughput over time with its regression band.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure

from trtsweep.results import MEASURED, TrialStatus

#: the columns :func:`history` needs (one row per configuration and night)
HISTORY_COLUMNS = ("config_id", "date", "throughput_ips", "band_low", "band_high")
MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "int8_dynamic": "v"}


def data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def measured(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or "throughput_ips" not in df:
        return df.iloc[0:0]
    return df[df.status.isin(MEASURED)].dropna(subset=["throughput_ips"])


def _panels(n: int, width: float = 5.2, height: float = 3.6, cols: int = 3) -> tuple[Figure, list]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _colors(keys: Sequence) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {k: cmap(i % 10) for i, k in enumerate(keys)}


def throughput_by_engine(df: pd.DataFrame) -> str | None:
    """Grouped bars per model: engine on x, one bar per precision, the best measured throughput of that
    engine × precision (any batch size or parameter) with its 95% CI; hatched where it is over a bound."""
    d = measured(df)
    if d.empty:
        return None
    models = sorted(d.model.unique())
    precisions = sorted(d.precision.unique(), key=lambda p: list(MARKERS).index(p) if p in MARKERS else 9)
    color = _colors(precisions)
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models, strict=True):
        m = d[d.model == model]
        best = m.loc[m.groupby(["engine", "precision"]).throughput_ips.idxmax()]
        engines = sorted(best.engine.unique())
        width = 0.8 / len(precisions)
        for i, p in enumerate(precisions):
            rows = best[best.precision == p].set_index("engine").reindex(engines)
            x = [j + (i - (len(precisions) - 1) / 2) * width for j in range(len(engines))]
            low = (rows.throughput_ips - rows.get("throughput_ci_low", rows.throughput_ips)).clip(lower=0)
            high = (rows.get("throughput_ci_high", rows.throughput_ips) - rows.throughput_ips).clip(lower=0)
            bars = ax.bar(x, rows.throughput_ips, width, label=p, color=color[p],
                          yerr=[low.fillna(0), high.fillna(0)], capsize=3)
            ax.bar_label(bars, labels=[_plain(round(v, 1)) if pd.notna(v) else "" for v in rows.throughput_ips],
                         fontsize=7, padding=2)
            for bar, status in zip(bars, rows.status, strict=True):
                if isinstance(status, str) and status != TrialStatus.OK:
                    bar.set_hatch("//")
                    bar.set_alpha(0.6)
        ax.set_xticks(range(len(engines)), engines)
        ax.set_yscale("log")
        ax.set_title(f"{model}: best throughput per engine × precision", fontsize=10)
        ax.set_ylabel("throughput (items/s)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, title="precision (hatched: over a bound)", title_fontsize=7)
    return data_uri(fig)


def latency_vs_batch(df: pd.DataFrame) -> str | None:
    """Per model: p50 latency (solid) and p99 (dashed) against batch size, per engine × precision (the
    lowest p50 over the other parameters at each batch size)."""
    d = measured(df).dropna(subset=["latency_p50_ms"]) if "latency_p50_ms" in df else df.iloc[0:0]
    if d.empty:
        return None
    models = sorted(d.model.unique())
    series = sorted({(e, p) for e, p in zip(d.engine, d.precision, strict=True)})
    color = _colors(series)
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models, strict=True):
        m = d[d.model == model]
        for (engine, precision), g in m.groupby(["engine", "precision"]):
            g = g.loc[g.groupby("batch_size").latency_p50_ms.idxmin()].sort_values("batch_size")
            c = color[(engine, precision)]
            ax.plot(g.batch_size, g.latency_p50_ms, marker=MARKERS.get(precision, "o"), color=c,
                    label=f"{engine} {precision}")
            if "latency_p99_ms" in g:
                ax.plot(g.batch_size, g.latency_p99_ms, ls="--", lw=1, color=c, alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(m.batch_size.unique()), [str(int(b)) for b in sorted(m.batch_size.unique())])
        ax.set_xlabel("batch size")
        ax.set_ylabel("latency (ms): p50 solid, p99 dashed")
        ax.set_title(f"{model}: latency against batch size", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return data_uri(fig)


def pareto(df: pd.DataFrame, front: pd.DataFrame) -> str | None:
    """Per model: throughput against accuracy drop, one colour per engine, one marker per precision
    (hollow: over a bound); the Pareto front (``report.pareto_front``) ringed and joined."""
    d = measured(df)
    if d.empty:
        return None
    d = d.assign(accuracy_drop=d.get("accuracy_drop", pd.Series(0.0, index=d.index)).fillna(0.0))
    models = sorted(d.model.unique())
    color = _colors(sorted(d.engine.unique()))
    fig, axes = _panels(len(models), width=6.0, height=4.2, cols=2)
    for ax, model in zip(axes, models, strict=True):
        m = d[d.model == model]
        for (engine, precision), g in m.groupby(["engine", "precision"]):
            ok = g.status == TrialStatus.OK
            ax.scatter(g.accuracy_drop[ok], g.throughput_ips[ok], color=color[engine],
                       marker=MARKERS.get(precision, "o"), label=f"{engine} {precision}", alpha=0.85)
            ax.scatter(g.accuracy_drop[~ok], g.throughput_ips[~ok], facecolors="none", edgecolors=color[engine],
                       marker=MARKERS.get(precision, "o"), alpha=0.85)
        f = front[front.model == model].sort_values("accuracy_drop") if not front.empty else front
        if not f.empty:
            ax.step(f.accuracy_drop, f.throughput_ips, where="post", color="black", lw=1, ls="--")
            ax.scatter(f.accuracy_drop, f.throughput_ips, s=160, facecolors="none", edgecolors="black",
                       label="Pareto front")
        ax.set_yscale("log")
        ax.set_xlabel("accuracy drop vs TF FP32")
        ax.set_ylabel("throughput (items/s)")
        ax.set_title(f"{model}: throughput against accuracy drop (hollow: over a bound)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return data_uri(fig)


def parameter_effects(df: pd.DataFrame, params: Sequence[str]) -> str | None:
    """One panel per swept parameter: every measured trial's throughput at each of its values (log
    scale, one colour per model), the median of each value marked."""
    d = measured(df)
    params = [p for p in params if p in d and d[p].dropna().astype(str).nunique() > 1]
    if d.empty or not params:
        return None
    color = _colors(sorted(d.model.unique()))
    fig, axes = _panels(len(params), width=4.4, height=3.4)
    for ax, p in zip(axes, params, strict=True):
        g = d.dropna(subset=[p])
        values = sorted(g[p].unique(), key=lambda v: (isinstance(v, str), v))
        pos = {v: i for i, v in enumerate(values)}
        for model, gm in g.groupby("model"):
            jitter = [(i % 7 - 3) * 0.05 for i in range(len(gm))]  # side by side, the same every time
            ax.scatter([pos[v] + j for v, j in zip(gm[p], jitter, strict=True)], gm.throughput_ips, s=18, alpha=0.7,
                       color=color[model], label=model)
        med = g.groupby(p).throughput_ips.median()
        ax.scatter([pos[v] for v in med.index], med.values, marker="_", s=500, color="black", label="median")
        ax.set_xticks(range(len(values)), [_plain(v) for v in values])
        ax.set_yscale("log")
        ax.set_title(p, fontsize=10)
        ax.set_ylabel("throughput (items/s)")
        ax.grid(axis="y", alpha=0.3)
        if p == params[0]:
            ax.legend(fontsize=7)
    return data_uri(fig)


def history(hist: pd.DataFrame) -> str | None:
    """Each configuration's throughput over time (nightly runs) with its regression band; nights below
    the band are marked in red.  ``hist`` has the columns :data:`HISTORY_COLUMNS`."""
    missing = [c for c in HISTORY_COLUMNS if c not in hist]
    if missing:
        raise ValueError(f"history lacks column(s) {', '.join(missing)}; fix: a DataFrame with the columns "
                         f"{', '.join(HISTORY_COLUMNS)} (one row per configuration and night)")
    if hist.empty:
        return None
    h = hist.assign(date=pd.to_datetime(hist.date)).sort_values("date")
    configs = list(dict.fromkeys(h.config_id))
    color = _colors(configs)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax = fig.subplots()
    for cid in configs:
        g = h[h.config_id == cid]
        ax.fill_between(g.date, g.band_low, g.band_high, color=color[cid], alpha=0.15, step="mid")
        ax.plot(g.date, g.throughput_ips, marker="o", color=color[cid], label=str(cid))
        low = g[g.throughput_ips < g.band_low]
        ax.scatter(low.date, low.throughput_ips, s=90, color="red", zorder=3)
    ax.set_yscale("log")
    ax.set_ylabel("throughput (items/s)")
    ax.set_title("throughput over time (band: the regression band; red: below it)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    return data_uri(fig)


def _plain(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


__all__ = ["HISTORY_COLUMNS", "data_uri", "history", "latency_vs_batch", "parameter_effects", "pareto",
           "throughput_by_engine"]
