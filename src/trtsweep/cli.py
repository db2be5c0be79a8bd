"""``trtsweep`` command: ``doctor`` (which engines can run here, and why not), ``cache ls|prune``
(what the result and conversion cache holds; removing stale entries), ``report`` (tables,
Pareto front and plots from a results.csv), ``compare`` (flag regressions against a baseline, for
nightly jobs: exit code 1 when any configuration got slower or less accurate than allowed)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


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


def report_cmd(a: argparse.Namespace) -> int:
    import pandas as pd

    from trtsweep import report

    df = report.add_speedup(pd.read_csv(a.results))
    print(report.short_table(df) + "\n\n" + report.summary_text(df))
    front = report.pareto_front(df)
    if not front.empty:
        print("\nPareto front (accuracy_drop ↓, throughput_ips ↑):")
        print(report.short_table(front))
    if a.plot:
        out = Path(a.plot)
        report.plot(df, out)
        print(f"\nplot: {out}")
    return 0


def compare_cmd(a: argparse.Namespace) -> int:
    import pandas as pd

    from trtsweep import report

    flagged = report.regressions(pd.read_csv(a.baseline), pd.read_csv(a.current), a.max_slowdown,
                                 a.max_accuracy_loss)
    if flagged.empty:
        print(f"no regressions (throughput within {a.max_slowdown:.0%}, accuracy within {a.max_accuracy_loss})")
        return 0
    print(f"{len(flagged)} regression(s):")
    print(flagged.to_string(index=False))
    return 1


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
    r = sub.add_parser("report", help="tables, Pareto front and a plot from a results.csv")
    r.add_argument("results")
    r.add_argument("--plot", help="write a latency/accuracy plot (PNG) here")
    r.set_defaults(fn=report_cmd)
    c = sub.add_parser("compare", help="flag regressions of a results.csv against a baseline (exit 1 if any)")
    c.add_argument("baseline")
    c.add_argument("current")
    c.add_argument("--max-slowdown", type=float, default=0.10, help="allowed throughput loss (fraction)")
    c.add_argument("--max-accuracy-loss", type=float, default=0.005, help="allowed accuracy_drop increase")
    c.set_defaults(fn=compare_cmd)
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
    except (OSError, ValueError, KeyError) as e:
        print(f"trtsweep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
