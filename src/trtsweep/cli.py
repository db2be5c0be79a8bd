"""``trtsweep`` command: ``doctor`` (which engines can run here, and why not), ``cache ls|prune``
(what the result and conversion cache holds; removing stale entries), ``report`` (tables, Pareto
front and plots of a sweep; report.html and report.md, see trtsweep.html_report), ``compare`` (flag
regressions against a baseline, for nightly jobs: exit code 1 when any configuration got slower or
less accurate than allowed), ``nightly`` (the nightly preset measured afresh, each configuration judged
against its MLflow history: exit 1 on a regression, 2 on an error; :mod:`trtsweep.nightly`) and
``baseline pin|unpin|ls`` (a run or sweep each nightly also compares with) and ``sync`` (log to MLflow
what a sweep measured while the tracking server was down, :mod:`trtsweep.sync`).  ``report`` and ``compare``
take the bounds of ``constraints.*`` (``--max-latency-p99-ms`` …, ``--max-accuracy-drop``) and judge
every row with them, as a sweep judges its trials."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trtsweep.errors import TrtsweepError, one_line
from trtsweep.redact import mask_text, mask_url

if TYPE_CHECKING:
    import pandas as pd


def sweep_cmd(a: argparse.Namespace) -> int:
    """``trtsweep sweep <args>`` is ``python sweep.py <args>``: the same Hydra app, config and flags."""
    from trtsweep.entry import run

    run(a.hydra_args)
    return 0


def doctor(_: argparse.Namespace) -> int:
    from trtsweep.engines.base import engine_names, get_engine
    from trtsweep.host import host_facts

    facts = host_facts()
    print(f"host: {facts['host.cpu_model']} | flags: {facts['host.cpu_flags']} | cores: {facts['host.cores']} "
          f"| GPU: {facts.get('host.gpu', 'none')}")
    print("versions: " + ", ".join(f"{k[8:]} {v}" for k, v in facts.items() if k.startswith("version.")))
    width = max(len(n) for n in engine_names())
    for name in engine_names():
        eng = get_engine(name)
        try:
            av = eng.availability()
        except Exception as e:  # noqa: BLE001 - doctor reports, never crashes
            print(f"{name:<{width}}  ERROR  {type(e).__name__}: {e}")
            continue
        mark = "ok   " if av.available else "no   "
        try:
            facts = eng.diagnose()
        except Exception as e:  # noqa: BLE001 - doctor reports every engine, whatever one of them raises
            facts = {**av.details, "diagnose_error": f"{type(e).__name__}: {e}"}
        detail = ", ".join(f"{k}={v}" for k, v in facts.items() if v not in (None, "", [], {}))
        print(f"{name:<{width}}  {mark}  precisions: {','.join(eng.precisions)}"
              + (f"  [{detail}]" if detail else "") + (f"\n{'':<{width}}         → {av.reason}" if av.reason else ""))
    return 0


def add_bound_options(p: argparse.ArgumentParser) -> None:
    """``--max-<metric>``: the bounds of ``constraints.*`` and ``fidelity.max_accuracy_drop``, to judge rows with."""
    from trtsweep.constraints import BOUNDS

    p.add_argument("--max-accuracy-drop", type=float, metavar="X",
                   help="judge accuracy_drop against X (default: each row's recorded accuracy verdict)")
    for name, key in BOUNDS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=float, metavar="X", dest=key,
                       help=f"a row whose {name} is above X is infeasible (as constraints.{key}=X)")


def judged(df: pd.DataFrame, a: argparse.Namespace) -> pd.DataFrame:
    """``df`` judged under the bound options (as the runner judges a trial); as recorded when none is given."""
    from trtsweep import report
    from trtsweep.constraints import BOUNDS, ConstraintsConfig

    values = {key: getattr(a, key) for key in BOUNDS.values() if getattr(a, key) is not None}
    if not values and a.max_accuracy_drop is None:
        return df
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"--{key.replace('_', '-')}={value:g} is invalid: must be > 0; fix: leave it out "
                             f"for no bound")
    if a.max_accuracy_drop is not None and not 0 <= a.max_accuracy_drop <= 1:
        raise ValueError(f"--max-accuracy-drop={a.max_accuracy_drop:g} must be in [0, 1]; "
                         "fix: --max-accuracy-drop=0.01")
    return report.judge(df, ConstraintsConfig(**values), a.max_accuracy_drop)


def report_cmd(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from trtsweep import report, report_source

    data = report_source.load(a.source, a.tracking_uri)
    df = report.add_speedup(judged(data.table, a))
    print(report.short_table(df) + "\n\n" + report.summary_text(df))
    front = report.pareto_front(df)
    if not front.empty:
        print("\nPareto front (accuracy_drop ↓, throughput_ips ↑):")
        print(report.short_table(front))
    if a.plot:
        out = Path(a.plot)
        report.plot(df, out)
        print(f"\nplot: {out}")
    if a.html:
        from trtsweep import html_report

        paths = html_report.write_report(replace(data, table=df), a.out)
        print(f"\nreport: {paths[0]} (summary: {paths[1]})")
        if a.log:
            try:
                run = html_report.log_to_parent(data, paths, a.tracking_uri)
            except Exception as e:  # noqa: BLE001 - the files are written; MLflow only gets a copy
                print(f"trtsweep: warning: report not logged to MLflow: {type(e).__name__}: {e}", file=sys.stderr)
            else:
                if run:
                    print(f"logged to the MLflow parent run {run}")
    return 0


def compare_cmd(a: argparse.Namespace) -> int:
    import pandas as pd

    from trtsweep import report

    baseline, current = (report.add_speedup(judged(pd.read_csv(f), a)) for f in (a.baseline, a.current))
    for label, df in (("baseline", baseline), ("current", current)):  # over a bound: never the best
        for line in report.violation_lines(df) + report.best_lines(df):
            print(f"{label}: {line}")
    flagged = report.regressions(baseline, current, a.max_slowdown, a.max_accuracy_loss, a.sigmas)
    if flagged.empty:
        print(f"no regressions (throughput within {a.max_slowdown:.0%} or the noise, {a.sigmas:g}σ of the repeat "
              f"spread; accuracy within {a.max_accuracy_loss})")
        return 0
    print(f"{len(flagged)} regression(s):")
    print(flagged.to_string(index=False))
    return 1


def nightly_cmd(a: argparse.Namespace) -> int:
    from trtsweep import nightly
    from trtsweep.regression import Rule

    return nightly.run(a.overrides, a.history, Rule(floor=a.floor, sigmas=a.sigmas))


def baseline_cmd(a: argparse.Namespace) -> int:
    from trtsweep import baseline
    from trtsweep.identity import machine_id
    from trtsweep.tracking import resolve_uri

    uri = resolve_uri(a.tracking_uri)
    baseline.connect(uri)
    if a.action == "ls":
        runs = baseline.pinned_runs(None if a.all_machines else machine_id())
        print(f"{len(runs)} pinned baseline(s) at {mask_url(uri)}" + ("" if a.all_machines else f" for this machine "
                                                              f"({machine_id()})") + (":" if runs else ""))
        for r in runs:
            print("  " + baseline.describe(r))
        return 0
    if not a.target:
        raise ValueError(f"baseline {a.action} needs a run id or a sweep directory; fix: trtsweep baseline "
                         f"{a.action} <run-id | outputs/multirun/<date>/<time>>")
    done = (baseline.pin if a.action == "pin" else baseline.unpin)(a.target)
    print(f"{a.action}ned {len(done.runs)} configuration(s) at {mask_url(uri)}:")
    for r in done.runs:
        print("  " + baseline.describe(r))
    for r in done.replaced:
        print("  replaces " + baseline.describe(r))
    return 0


def sync_cmd(a: argparse.Namespace) -> int:
    """``trtsweep sync``: log to MLflow what a sweep measured while the tracking server was down
    (:mod:`trtsweep.sync`); exit 1 with one line when it still does not answer."""
    from trtsweep import sync

    for d in a.sweep_dirs or [sync.latest_sweep()]:
        try:
            lines = sync.sync_sweep(Path(d), a.tracking_uri)
        except sync.Unreachable as e:
            pending = len(sync.pending_records(Path(d)))
            print(f"trtsweep: {e}; {pending} trial(s) of {d} still to log; fix: start the tracking server (or "
                  f"--tracking-uri <uri>), then run trtsweep sync {d} again", file=sys.stderr)
            return 1
        print("\n".join(lines), flush=True)
    return 0


def cache_cmd(a: argparse.Namespace) -> int:
    from trtsweep import cache

    root = Path(a.cache_dir)
    if a.action == "ls":
        print(cache.ls(root))
        return 0
    gone = cache.prune(root, everything=a.all, older_than_days=a.older_than, dry_run=a.dry_run)
    verb = "would remove" if a.dry_run else "removed"
    for e in gone:
        print(f"{verb} {e.kind} {e.label}" + (f" ({e.stale})" if e.stale else ""))
    print(f"{verb} {len(gone)} entr{'y' if len(gone) == 1 else 'ies'}, {sum(e.size_mb for e in gone):.1f} MB")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="trtsweep", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    # all that follows `sweep` goes to Hydra as given (-m, --help, --cfg job, key=value...): the
    # subparser has no option of its own ("\0" as prefix: no argument starts with it)
    s = sub.add_parser("sweep", add_help=False, prefix_chars="\0",
                       help="run a sweep, as `python sweep.py ...` does (see `trtsweep sweep --help`)")
    s.add_argument("hydra_args", nargs=argparse.REMAINDER)
    s.set_defaults(fn=sweep_cmd)
    sub.add_parser("doctor", help="which engines can run on this machine, and why not").set_defaults(fn=doctor)
    r = sub.add_parser("report", help="tables, Pareto front, recommendation and an HTML report of a sweep")
    r.add_argument("source", nargs="?", help="a sweep directory, a results.csv, an MLflow experiment name or run id "
                   "(default: the latest sweep under outputs/)")
    r.add_argument("--plot", help="write a latency/accuracy plot (PNG) here")
    r.add_argument("--html", action=argparse.BooleanOptionalAction, default=True,
                   help="write report.html (plots embedded) and report.md (default: on)")
    r.add_argument("--out", metavar="DIR", help="write report.html/report.md here (default: next to the source)")
    r.add_argument("--log", action=argparse.BooleanOptionalAction, default=True,
                   help="log report.html/report.md to the sweep's MLflow parent run, where the store has it "
                        "(default: on)")
    r.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    add_bound_options(r)
    r.set_defaults(fn=report_cmd)
    c = sub.add_parser("compare", help="flag regressions of a results.csv against a baseline (exit 1 if any)")
    c.add_argument("baseline")
    c.add_argument("current")
    c.add_argument("--max-slowdown", type=float, default=0.10, help="allowed throughput loss (fraction)")
    c.add_argument("--max-accuracy-loss", type=float, default=0.005, help="allowed accuracy_drop increase")
    c.add_argument("--sigmas", type=float, default=3.0,
                   help="a slowdown must also exceed this many standard deviations of the two trials' repeat "
                        "spread (latency_cv), as in trtsweep nightly; 0: --max-slowdown alone decides")
    add_bound_options(c)
    c.set_defaults(fn=compare_cmd)
    n = sub.add_parser("nightly", help="the nightly preset (or the overrides given) measured afresh, each "
                       "configuration compared with its MLflow history: exit 0 fine, 1 a regression, 2 an error",
                       description="Options first, then Hydra overrides (e.g. model=mobilenet_v2 engine=tflite).")
    n.add_argument("--history", type=int, default=7, metavar="N",
                   help="compare with the median of the last N successful nightly runs on this machine (7)")
    n.add_argument("--floor", type=float, default=0.05,
                   help="a slowdown smaller than this never counts (fraction; 0.05)")
    n.add_argument("--sigmas", type=float, default=3.0,
                   help="a slowdown must also exceed this many standard deviations of the noise (3)")
    n.add_argument("overrides", nargs="*", help="Hydra overrides of the preset sweeps/nightly.yaml")
    n.set_defaults(fn=nightly_cmd)
    b = sub.add_parser("baseline", help="pin a run or a sweep as the baseline each nightly also compares with")
    b.add_argument("action", choices=("pin", "unpin", "ls"))
    b.add_argument("target", nargs="?", help="a trial run id, a sweep's parent run id, or a sweep directory")
    b.add_argument("--tracking-uri", help="the MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    b.add_argument("--all-machines", action="store_true", help="ls: pinned baselines of every machine")
    b.set_defaults(fn=baseline_cmd)
    y = sub.add_parser("sync", help="log to MLflow the trials a sweep measured while the tracking server was "
                       "down (exit 1 if it still is)")
    y.add_argument("sweep_dirs", nargs="*", metavar="SWEEP_DIR",
                   help="sweep directories (default: the latest under outputs/ or multirun/)")
    y.add_argument("--tracking-uri", help="the MLflow store (default: the sweep's own tracking.uri)")
    y.set_defaults(fn=sync_cmd)
    k = sub.add_parser("cache", help="what the result/conversion cache holds (ls), and cleaning it (prune)")
    k.add_argument("action", choices=("ls", "prune"))
    k.add_argument("--cache-dir", default=os.environ.get("TRTSWEEP_CACHE_DIR", "outputs/cache"))
    k.add_argument("--all", action="store_true", help="prune: everything, not only stale entries")
    k.add_argument("--older-than", type=float, metavar="DAYS", help="prune: also entries older than DAYS")
    k.add_argument("--dry-run", action="store_true", help="prune: only say what would be removed")
    k.set_defaults(fn=cache_cmd)
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except (OSError, ValueError, KeyError, TrtsweepError) as e:
        print(f"trtsweep: error: {mask_text(str(e))}", file=sys.stderr)  # no URL's password
        return 2
    except Exception as e:  # never exit 1 (a regression, to nightly and compare) for a crash
        if a.cmd not in ("nightly", "compare", "baseline", "sync"):
            raise
        import logging

        logging.getLogger("trtsweep").debug("error", exc_info=True)
        print(f"trtsweep: error: {mask_text(one_line(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
