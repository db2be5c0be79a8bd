"""A confirmed winner: the close candidates of a sweep re-measured side by side, interleaved.

One measurement per configuration can be ordered by noise (a background job, a frequency change).
So at the end of a sweep, per model and batch size, the best passing trial and every trial whose
throughput confidence interval overlaps its own (at most ``confirm.top_k``) are loaded together and
timed in rounds A B C A B C …, each round one warm-up plus one timed repeat per candidate.  Drift
hits every candidate of a round alike, so each candidate is compared with the leader *per round*
(a paired Student-t interval on the log throughput ratio): where that interval contains 1 the two
are tied, and of tied candidates the cheapest is recommended — fewer threads, then a smaller
model, then a higher precision.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from trtsweep.measure import mean_ci, repeat_cv
from trtsweep.results import MEASURED, TrialStatus

log = logging.getLogger("trtsweep")

#: higher precision first: of tied candidates, the one that changes the model least
PRECISION_RANK = {"fp32": 0, "fp16": 1, "int8_dynamic": 2, "int8": 3}


@dataclass
class Candidate:
    key: str  # trial key
    label: str
    spec: dict  # TrialSpec.to_dict()
    throughput_ips: float  # the sweep's own measurement
    ci_low: float
    ci_high: float
    threads: int = 1
    model_size_mb: float = 0.0
    precision: str = "fp32"
    reference: bool = False  # the TF FP32 baseline, timed in the same rounds for the speed-up; never a winner
    unstable: bool = False  # its sweep measurement stayed above measure.max_cv

    def cost(self) -> tuple:
        return (self.threads, round(self.model_size_mb, 3), PRECISION_RANK.get(self.precision, 9), self.label)


@dataclass
class Verdict:
    group: str  # "<model> bs=<batch_size>"
    winner: str  # trial key of the recommended candidate
    fastest: str  # trial key with the highest confirmed mean throughput
    tied: list[str]  # keys statistically tied with the fastest (the fastest included)
    samples: dict[str, list[float]]  # key -> throughput of each round (items/s)
    stats: dict[str, dict] = field(default_factory=dict)  # key -> mean, CI, ratio to the fastest
    text: str = ""
    time_s: float = 0.0  # wall time of this group's confirmation: loading the candidates and the rounds

    @property
    def is_tie(self) -> bool:
        return len(self.tied) > 1


def select(rows: Sequence[dict], top_k: int) -> list[dict]:
    """The candidates of one group, at most ``top_k``: the best stable passing row (the anchor) first,
    then the rows whose throughput CI reaches the anchor's, fastest first (the runner-up at least: a
    lucky, tight first measurement is no proof).  Unstable rows that come close are candidates too:
    their re-measurement here decides, and a candidate whose confirmation is itself unstable never
    wins over a stable one (:func:`decide`).  Empty when fewer than two rows passed."""
    ok = [r for r in rows if r.get("status") == TrialStatus.OK and _finite(r.get("throughput_ips"))]
    if len(ok) < 2:
        return []
    stable = [r for r in ok if not r.get("unstable")]
    anchor = max(stable or ok, key=lambda r: r["throughput_ips"])
    low = anchor.get("throughput_ci_low", anchor["throughput_ips"])
    low = low if _finite(low) else anchor["throughput_ips"]
    others = sorted((r for r in ok if r is not anchor), key=lambda r: -r["throughput_ips"])
    close = [r for r in others if (r.get("throughput_ci_high") if _finite(r.get("throughput_ci_high"))
                                   else r["throughput_ips"]) >= low]
    return ([anchor] + (close or others[:1]))[:max(top_k, 1)]


def interleave(candidates: Sequence[Candidate], run_round: Callable[[Candidate], float],
               rounds: int, progress: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """``rounds`` rounds; in each, every candidate once, in the same order (A B C A B C …)."""
    samples: dict[str, list[float]] = {c.key: [] for c in candidates}
    for r in range(rounds):
        for c in candidates:
            samples[c.key].append(float(run_round(c)))
        if progress:
            progress(r + 1, rounds)
    return samples


def paired_log_ratio_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """CI of the mean per-round log(a/b); contains 0 when a and b are statistically tied."""
    d = [math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0 and y > 0]
    return mean_ci(d, level)


def decide(candidates: Sequence[Candidate], samples: dict[str, list[float]], group: str = "",
           max_cv: float = float("inf")) -> Verdict:
    """The fastest contender by its confirmation rounds, and who is tied with it (the paired per-round
    comparison absorbs drift).  A candidate that was unstable in the sweep must be stable here (its
    rounds' spread ≤ ``max_cv``) to contend against stable ones: otherwise it has no trustworthy number."""
    by_key = {c.key: c for c in candidates}
    means = {k: float(np.mean(v)) for k, v in samples.items()}
    cvs = {k: repeat_cv(v) for k, v in samples.items()}
    contenders = [c.key for c in candidates if not c.reference] or [c.key for c in candidates]
    contenders = [k for k in contenders if not (by_key[k].unstable and cvs[k] > max_cv)] or contenders
    fastest = max(contenders, key=lambda k: means[k])
    base = next((c.key for c in candidates if c.reference or (c.spec.get("engine") == "tf"
                                                                and c.precision == "fp32")), None)
    tied = [fastest]
    stats: dict[str, dict] = {}
    for k, v in samples.items():
        lo, hi = mean_ci(v)
        st = {"confirm_throughput_ips": means[k], "confirm_ci_low": lo, "confirm_ci_high": hi,
              "confirm_rounds": len(v), "confirm_cv": cvs[k]}
        if base is not None:  # speed-up over TF FP32 timed in the same rounds: drift cancels per round
            ratios = [math.log(x / y) for x, y in zip(v, samples[base], strict=True) if x > 0 and y > 0]
            if ratios:
                st["confirm_speedup_vs_tf_fp32"] = math.exp(float(np.mean(ratios)))
        if k != fastest and k in contenders:
            rlo, rhi = paired_log_ratio_ci(samples[fastest], v)
            st["confirm_ratio_to_fastest"] = means[k] / means[fastest]
            if not (rlo > 0):  # the fastest is not significantly faster: a tie
                tied.append(k)
        stats[k] = st
    winner = min(tied, key=lambda k: by_key[k].cost())
    v = Verdict(group, winner, fastest, tied, samples, stats)
    v.text = _describe(v, by_key)
    return v


def _describe(v: Verdict, by_key: dict[str, Candidate]) -> str:
    w = by_key[v.winner]
    mean = v.stats[v.winner]["confirm_throughput_ips"]
    lo, hi = v.stats[v.winner]["confirm_ci_low"], v.stats[v.winner]["confirm_ci_high"]
    sp = v.stats[v.winner].get("confirm_speedup_vs_tf_fp32")
    rounds = len(v.samples[v.winner])
    head = (f"confirmed for {v.group}: {w.label} — {mean:.1f} items/s (95% CI {lo:.1f}–{hi:.1f}, {rounds} interleaved "
            f"rounds" + (f", {sp:.2f}× TF FP32 in the same rounds)" if sp else ")"))
    if v.is_tie:
        others = ", ".join(by_key[k].label for k in v.tied if k != v.winner)
        head += f"; statistically tied with {others}: recommending the cheapest (fewer threads, smaller model, " \
                f"higher precision)"
    elif any("confirm_ratio_to_fastest" in v.stats[k] for k in v.samples if k != v.winner):
        runner_up = max((k for k in v.samples if k != v.winner and "confirm_ratio_to_fastest" in v.stats[k]),
                        key=lambda k: v.stats[k]["confirm_throughput_ips"])
        head += f"; {1 / v.stats[runner_up]['confirm_ratio_to_fastest']:.2f}× the runner-up {by_key[runner_up].label}"
    return head


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---- running it: candidates loaded in trial workers, rounds timed there ----
def run(records: Sequence[dict], top_k: int, rounds: int) -> list[Verdict]:
    """Confirm the winner of every (model, batch size) group of a sweep's trial records."""
    from trtsweep import report, runner
    from trtsweep.config import TrialSpec

    by_key = {r["trial_key"]: r for r in records}
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        row = report.row(rec)
        groups.setdefault((row["model"], row["batch_size"]), []).append(row)
    verdicts = []
    for (model, bs), rows in groups.items():
        chosen = select(rows, top_k)
        if not chosen:
            continue
        baseline = [r for r in rows if r.get("engine") == "tf" and r.get("precision") == "fp32"  # a reference
                    and r.get("status") in MEASURED and _finite(r.get("throughput_ips"))]  # (infeasible too)
        base = max(baseline, key=lambda r: r["throughput_ips"]) if baseline else None
        reference_keys = set()
        if base is not None and base["trial_key"] not in {r["trial_key"] for r in chosen}:
            chosen = chosen + [base]
            reference_keys.add(base["trial_key"])
        group = f"{model} bs={bs}"
        cands = []
        for r in chosen:
            spec = TrialSpec.from_dict(by_key[r["trial_key"]]["spec"])
            cands.append(Candidate(r["trial_key"], spec.label(), spec.to_dict(), r["throughput_ips"],
                                   r.get("throughput_ci_low", float("nan")), r.get("throughput_ci_high", float("nan")),
                                   spec.threads, float(r.get("model_size_mb") or 0.0), spec.precision,
                                   reference=r["trial_key"] in reference_keys, unstable=bool(r.get("unstable"))))
        log.info("confirming %s: %d candidate(s) × %d interleaved rounds: %s", group, len(cands), rounds,
                 "; ".join(c.label + (" (TF FP32 reference for the speed-up)" if c.reference else "") for c in cands))
        workers = _Workers(runner)
        started = time.perf_counter()
        try:
            for c in cands:
                workers.call(c, "confirm_load", {"spec": c.spec, "key": c.key})
            samples = interleave(cands, lambda c, w=workers: w.call(c, "confirm_run", {"key": c.key}), rounds,
                                 lambda i, n: log.info("  confirmation round %d/%d", i, n))
        except runner.TrialFailure as f:
            log.error("confirmation of %s failed (%s); the sweep's own measurements stand", group, f.reason)
            continue
        finally:
            workers.close()
        v = decide(cands, samples, group, max_cv=float(cands[0].spec["measure"]["max_cv"]))
        v.time_s = time.perf_counter() - started
        log.info(v.text)
        verdicts.append(v)
    return verdicts


class _Workers:
    """The sweep's worker for candidates that need no particular process environment, and one more
    worker per environment a candidate needs (TensorFlow's thread pools are sized at import), so
    candidates of every engine are timed in the same interleaved rounds."""

    def __init__(self, runner: Any):
        self.runner = runner
        self.main = runner.pool()
        self.extra: dict[tuple, Any] = {}

    def _pool(self, spec: dict) -> tuple[Any, dict | None]:
        """The main worker when any environment will do or it already has the one needed (then it is
        never restarted, so what it has loaded stays), else a worker of that environment's own."""
        from trtsweep.config import TrialSpec

        env = self.runner.worker_env(TrialSpec.from_dict(spec))
        if env is None or (self.main.proc is not None and self.main.env == env):
            return self.main, env
        key = tuple(sorted(env.items()))
        if key not in self.extra:
            self.extra[key] = self.runner.WorkerPool()
        return self.extra[key], env

    def call(self, c: Candidate, kind: str, payload: dict) -> Any:
        pool, env = self._pool(c.spec)
        trial = c.spec["trial"]
        return pool.call(kind, payload, env, trial["timeout_s"], trial["max_memory_mb"])

    def close(self) -> None:
        for pool in self.extra.values():
            pool.stop()
        if self.main.proc is not None:
            try:
                self.main.call("confirm_close", None, None, 60, 0)
            except self.runner.TrialFailure:
                self.main.kill()
        self.extra.clear()
