"""``report.html`` (one self-contained page: plots embedded, nothing loaded from the network) and
``report.md`` (a Markdown summary) for a sweep, from Jinja2 templates (``trtsweep/templates``), the trials
table laid out by pandas' Styler and the plots drawn by matplotlib (:mod:`trtsweep.report_plots`).

:func:`write_report` is what ``trtsweep report``, the end of a sweep (``session.finish_sweep``) and the
nightly command call; :func:`log_to_parent` puts the two files on the sweep's MLflow parent run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from trtsweep import report, report_content, report_plots
from trtsweep.atomic import atomic_write_text
from trtsweep.constraints import ConstraintsConfig
from trtsweep.report_source import ReportData, load

REPORT_FILES = ("report.html", "report.md")


def write_report(source: str | Path | pd.DataFrame | ReportData | None = None, out_dir: str | Path | None = None,
                 *, history: pd.DataFrame | None = None, constraints: ConstraintsConfig | None = None,
                 max_accuracy_drop: float | None = None, tracking_uri: str | None = None) -> list[Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir`` (default: next to the source) and return
    their paths.

    ``source``: a sweep directory, a results.csv, an MLflow experiment name or run id (see
    :func:`trtsweep.report_source.load`; ``tracking_uri`` for MLflow), a results table (DataFrame) or
    loaded :class:`ReportData`; None: the latest sweep under ``outputs/``.  ``constraints`` /
    ``max_accuracy_drop``: judge every row again under these bounds (``report.judge``), as the runner
    does.  ``history`` (nightly runs): one row per configuration and night with the columns
    ``config_id, date, throughput_ips, band_low, band_high``; drawn as throughput over time with the
    regression band.
    """
    if isinstance(source, ReportData):
        data = source
    elif isinstance(source, pd.DataFrame):
        data = ReportData(source, "a results table", Path.cwd())
    else:
        data = load(source, tracking_uri)
    df = data.table
    if not df.empty and (constraints is not None or max_accuracy_drop is not None):
        df = report.judge(df, constraints, max_accuracy_drop)
    if not df.empty:
        df = report.add_speedup(df)
    ctx = context(replace(data, table=df), history)
    out = Path(out_dir) if out_dir is not None else data.out_dir
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    return [atomic_write_text(out / name, env.get_template(name).render(**ctx)) for name in REPORT_FILES]


def log_to_parent(data: ReportData, paths: list[Path], tracking_uri: str | None = None) -> str | None:
    """Put the report files on the sweep's MLflow parent run (as artifacts); its run id, or None where
    the source names no run this MLflow store holds."""
    from trtsweep.config import TrackingConfig
    from trtsweep.report_source import find_parent
    from trtsweep.tracking import Tracker

    found = find_parent(data, tracking_uri)
    if found is None:
        return None
    run_id, uri, experiment = found
    Tracker(TrackingConfig(uri=uri, experiment=experiment)).log_extras(run_id, files=paths)
    return run_id


# ---- what the templates get ----
def _num(v: Any, fmt: str = "{:.4g}") -> str:
    if v is None or isinstance(v, str) and not v:
        return "–"
    if isinstance(v, str):
        return v
    try:
        return "–" if math.isnan(float(v)) else fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def _formatters(columns: list[str]) -> dict[str, Callable[[Any], str]]:
    """Column heading → how its cells are written (the same in the HTML and the Markdown table)."""
    fmt = {"throughput (items/s)": "{:,.1f}", "confirmed (items/s)": "{:,.1f}", "speed-up vs TF FP32": "{:.2f}×",
           "accuracy drop": "{:.4f}", "top-1 agreement": "{:.4f}", "converted fraction": "{:.3f}",
           "convert (s)": "{:.2f}", "calibrate (s)": "{:.2f}"}
    out = {}
    for c in columns:
        if c in fmt:
            out[c] = lambda v, f=fmt[c]: _num(v, f)
        elif c in ("reason", "marks", "trial", "95% CI", "status", "model", "engine", "precision"):
            out[c] = lambda v: "" if v is None or isinstance(v, float) and math.isnan(v) else str(v)
        else:  # numbers (p50, p99, size) and swept values (threads=2, not 2.0)
            out[c] = lambda v: _num(v) if isinstance(v, float) and not v.is_integer() else (
                "–" if v is None or isinstance(v, float) and math.isnan(v) else report_content.hydra_value(v))
    return out


def trials_html(table: pd.DataFrame, classes: pd.DataFrame) -> str:
    """The trials table, laid out by pandas' Styler: one CSS class per row's status, ``best`` on the
    recommended rows, the reason column wrapped."""
    classes = classes.copy()
    if "reason" in classes:
        classes["reason"] = classes["reason"] + " col-reason"
    styler = (table.style.hide(axis="index").format(_formatters(list(table.columns)), escape="html")
              .set_uuid("trials").set_table_attributes('class="trials"').set_td_classes(classes))
    return styler.to_html()


def context(data: ReportData, history: pd.DataFrame | None = None) -> dict[str, Any]:
    """Everything the templates show, from the (judged, speed-up computed) table."""
    df = data.table
    base = {"label": data.label, "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "host": "", "trials": len(df),
            "counts": [], "recommendations": [], "plots": [], "pareto": [], "table_html": "",
            "table": pd.DataFrame(), "table_rows": [], "not_measured": [], "over_bounds": [], "config_columns": 4}
    if df.empty:
        return base
    front = report.pareto_front(df)
    table, classes = report_content.trial_table(df, front)
    fmts = _formatters(list(table.columns))
    swept = report.swept_columns(df)
    return {**base, "host": _host(df), "counts": sorted(df.status.value_counts().items()),
            "recommendations": report_content.recommendations(df, data.verdicts, data.best),
            "plots": _plots(df, front, swept, history), "pareto": report_content.pareto_rows(front),
            "table_html": trials_html(table, classes), "table": table,
            "table_rows": [[fmts[c](v) for c, v in zip(table.columns, row, strict=True)]
                           for row in table.itertuples(index=False)],
            "not_measured": report_content.not_measured(df), "over_bounds": report_content.over_bounds(df),
            "config_columns": 4 + len(swept)}


def _host(df: pd.DataFrame) -> str:
    facts = []
    for col, label in (("host.cpu_model", ""), ("host.cores", "cores "), ("host.gpu", "GPU ")):
        values = df[col].dropna().astype(str).unique() if col in df else []
        if len(values):
            facts.append(label + " / ".join(report_content.hydra_value(v) for v in df[col].dropna().unique()))
    if "host.cpu_flags" in df and df["host.cpu_flags"].notna().any():
        facts.append("flags " + str(df["host.cpu_flags"].dropna().iloc[0]))
    return " · ".join(facts)


def _plots(df: pd.DataFrame, front: pd.DataFrame, swept: list[str], history: pd.DataFrame | None) -> list[dict]:
    params = ["engine", "precision", "batch_size", *swept]
    several = df.model.nunique() > 1  # per-model plots: one panel each
    plots = [
        ("throughput", "Throughput by engine and precision",
         "Per model, the best measured throughput of each engine × precision (any batch size or parameter), "
         "with its 95% confidence interval; hatched bars are over a bound.",
         lambda: report_plots.throughput_by_engine(df), several),
        ("latency", "Latency against batch size",
         "p50 (solid) and p99 (dashed) latency per engine × precision, the lowest over the other parameters.",
         lambda: report_plots.latency_vs_batch(df), several),
        ("pareto", "Throughput against accuracy drop",
         "Every measured trial; the Pareto front ringed and joined; hollow markers are over a bound.",
         lambda: report_plots.pareto(df, front), several),
        ("parameters", "Effect of each swept parameter on throughput",
         "Every measured trial's throughput at each value of a parameter that varies in the sweep; the bar "
         "is the median.", lambda: report_plots.parameter_effects(df, params), True),
    ]
    if history is not None:
        plots.append(("history", "Throughput over time",
                      "Each configuration's throughput in the nightly runs, with its regression band; red: "
                      "below the band.", lambda: report_plots.history(history), True))
    out = []
    for pid, title, caption, draw, wide in plots:
        uri = draw()
        if uri:
            out.append({"id": pid, "title": title, "caption": caption, "uri": uri, "wide": wide})
    return out


def _md(v: Any) -> str:
    """Text inside a Markdown table cell or list item: no line breaks, pipes escaped."""
    return str(v).replace("\n", " ").replace("|", "\\|")


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("trtsweep", "templates"),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                                                 default_for_string=False),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["num"] = _num
    env.filters["md"] = _md
    return env


__all__ = ["REPORT_FILES", "context", "log_to_parent", "trials_html", "write_report"]
