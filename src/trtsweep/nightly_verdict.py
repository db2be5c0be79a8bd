"""One nightly judged: each configuration against its history and its pinned baseline, and the summary.

Each trial run of the nightly gets one verdict (``kind``):

* ``regressed``: a metric is past the rule of :mod:`trtsweep.regression` against the median of its last N
  nightly runs on this machine, or against its pinned baseline;
* ``newly_failing``: it failed (or could not run) tonight, and it was measured before (history or pin);
* ``ok``: compared, within the noise and the floor; ``new``: measured, nothing to compare with yet;
* ``failing``: it failed and never worked here; ``skipped``: it cannot run here (e.g. TF-TRT without a GPU).

Configurations of the previous nightly of the same suite that are not in this one are ``disappeared``.
Exit code: 1 when any configuration regressed or newly fails, 2 when nothing could be measured at all
(an infrastructure or configuration problem), else 0.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from trtsweep import baseline
from trtsweep.regression import Change, Measurement, Rule, changes
from trtsweep.results import MEASURED
from trtsweep.run_tags import CONFIG_TAG, LABEL_TAG, MACHINE_TAG

ALARMS = ("regressed", "newly_failing")


@dataclass
class ConfigVerdict:
    label: str
    config_id: str
    run_id: str
    status: str
    kind: str
    reason: str = ""
    unstable: bool = False
    history: list[Change] = field(default_factory=list)  # against the history's median
    history_runs: int = 0
    history_span: str = ""  # first … last date of those runs
    pinned: list[Change] = field(default_factory=list)  # against the pinned baseline
    pinned_run: str = ""
    pinned_when: str = ""
    when: str = ""  # when it ran tonight
    throughput_ips: float | None = None  # tonight's
    points: list[tuple[str, float]] = field(default_factory=list)  # (when, throughput) of its reference runs

    def lines(self) -> list[str]:
        """What regressed, by how much and against what: one line each."""
        against = [(c, f"vs the median of {self.history_runs} nightly run(s) ({self.history_span})")
                   for c in self.history] + [(c, f"vs the pinned baseline (run {self.pinned_run}, {self.pinned_when})")
                                             for c in self.pinned]
        return [f"{c.text()} {what}" for c, what in against if c.regressed]

    def last_measured(self) -> str:
        return self.history_span.split(" … ")[-1] if self.history_span else self.pinned_when

    def largest(self) -> Change | None:
        """Its throughput change against the history (else the pin): for the 'within noise' line."""
        return next((c for c in self.history + self.pinned if c.metric == "throughput_ips"), None)


@dataclass
class NightlyVerdict:
    run: str  # the nightly's stamp
    date: str
    machine: str
    parent_run_id: str
    configs: list[ConfigVerdict]
    disappeared: list[str] = field(default_factory=list)  # labels
    previous: str = ""  # when the previous nightly of the suite ran
    history_n: int = 7
    rule: Rule = field(default_factory=Rule)

    def of(self, *kinds: str) -> list[ConfigVerdict]:
        return [c for c in self.configs if c.kind in kinds]

    @property
    def exit_code(self) -> int:
        if not any(c.status in {s.value for s in MEASURED} for c in self.configs):
            return 2
        return 1 if self.of(*ALARMS) else 0

    def history_frame(self) -> Any:
        """Each compared configuration's reference runs and tonight, with tonight's regression band (the
        reference median ± the allowance): the ``history`` of :func:`trtsweep.html_report.write_report`."""
        import pandas as pd

        rows = []
        for c in self.configs:
            change = c.largest()
            if change is None or c.throughput_ips is None:
                continue
            low, high = change.reference * (1 - change.limit), change.reference * (1 + change.limit)
            rows += [{"config_id": c.label, "date": when, "throughput_ips": tput, "band_low": low, "band_high": high}
                     for when, tput in [*c.points, (c.when, c.throughput_ips)]]
        return pd.DataFrame(rows, columns=["config_id", "date", "throughput_ips", "band_low", "band_high"])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code,
                "regressions": {c.run_id: c.lines() for c in self.of("regressed")}}

    def text(self) -> str:
        counts = ", ".join(f"{len(self.of(k))} {k.replace('_', ' ')}" for k in
                           ("regressed", "newly_failing", "ok", "new", "failing", "skipped") if self.of(k))
        out = [f"nightly {self.date} (run {self.run}) on machine {self.machine}: {len(self.configs)} "
               f"configuration(s) — {counts or 'none'}; each compared with the median of its last {self.history_n} "
               f"nightly runs here and its pinned baseline (floor {self.rule.floor:.0%}, noise "
               f"{self.rule.sigmas:g}σ of the spread)"]
        if self.of("regressed"):
            out.append("REGRESSED:")
            for c in self.of("regressed"):
                flag = " [UNSTABLE tonight: its repeats spread widely]" if c.unstable else ""
                out += [f"  {c.label}{flag}: {line}" for line in c.lines()]
        if self.of("newly_failing"):
            out.append("NEWLY FAILING (measured before):")
            out += [f"  {c.label}: {c.status} — {c.reason or '?'} (last measured {c.last_measured()})"
                    for c in self.of("newly_failing")]
        if self.disappeared:
            out.append(f"DISAPPEARED (in the previous nightly of this suite, {self.previous}, not in this one):")
            out += [f"  {label}" for label in self.disappeared]
        if self.of("new"):
            out.append(f"NEW — no baseline yet ({len(self.of('new'))}): the next nightly compares with this one")
            out += [f"  {c.label}" for c in self.of("new")]
        for kind, title in (("failing", "FAILING (never measured here)"), ("skipped", "SKIPPED here")):
            reasons: dict[str, list[str]] = {}
            for c in self.of(kind):
                reasons.setdefault(c.reason or "?", []).append(c.label)
            out += [f"{title}: {len(labels)} — {reason}" for reason, labels in reasons.items()]
        ok = self.of("ok")
        if ok:
            slower = [(c.largest(), c) for c in ok if c.largest() is not None and c.largest().change > 0]
            w, worst = max(slower, key=lambda x: x[0].change) if slower else (None, None)
            out.append(f"within noise: {len(ok)}" + (f" (the largest slowdown: {worst.label} throughput "
                                                      f"{-w.change:+.1%}, allowed {-w.limit:+.1%})" if w else ""))
        code = self.exit_code
        out.append({0: "exit 0: nothing regressed", 1: f"exit 1: {len(self.of(*ALARMS))} configuration(s) regressed "
                    "or newly fail", 2: "exit 2: no configuration could be measured"}[code])
        return "\n".join(out)


def _date(ms: int, fmt: str = "%Y-%m-%d") -> str:
    return time.strftime(fmt, time.localtime(ms / 1000))


def _bound(run: Any) -> float | None:
    value = run.data.params.get("fidelity.max_accuracy_drop")
    try:
        return float(value) if value not in (None, "null") else None
    except ValueError:
        return None


def judge_config(run: Any, history_n: int, rule: Rule) -> ConfigVerdict:
    """One trial run of a nightly against its history and pinned baseline."""
    tags = run.data.tags
    status = tags.get("status", "?")
    verdict = ConfigVerdict(tags.get(LABEL_TAG, run.info.run_name), tags.get(CONFIG_TAG, ""), run.info.run_id,
                            status, "ok", tags.get("reason", ""), tags.get("unstable") == "true")
    if CONFIG_TAG not in tags or MACHINE_TAG not in tags:  # logged without the history tags: nothing to match
        history, pin = [], None
    else:
        history, pin = baseline.history(run, history_n), baseline.pinned(run)
    if history:
        verdict.history_runs = len(history)
        verdict.history_span = f"{_date(history[-1].info.start_time)} … {_date(history[0].info.start_time)}"
    if pin is not None:
        verdict.pinned_run = pin.info.run_id
        verdict.pinned_when = _date(pin.info.start_time)
    if status not in {s.value for s in MEASURED}:
        verdict.kind = "newly_failing" if history or pin else "skipped" if status == "skipped" else "failing"
        return verdict
    now, bound = Measurement.of(run.data.metrics, status), _bound(run)
    verdict.when, verdict.throughput_ips = _date(run.info.start_time, "%Y-%m-%d %H:%M"), now.throughput_ips
    reference = history or ([pin] if pin is not None else [])
    verdict.points = [(_date(r.info.start_time, "%Y-%m-%d %H:%M"), r.data.metrics["throughput_ips"])
                      for r in reversed(reference) if "throughput_ips" in r.data.metrics]
    if history:
        verdict.history = changes(now, [Measurement.of(r.data.metrics, r.data.tags.get("status", "ok"))
                                        for r in history], rule, bound)
    if pin is not None:
        verdict.pinned = changes(now, [Measurement.of(pin.data.metrics, pin.data.tags.get("status", "ok"))], rule,
                                 bound)
    if any(c.regressed for c in verdict.history + verdict.pinned):
        verdict.kind = "regressed"
    elif not history and pin is None:
        verdict.kind = "new"
    return verdict


def judge(parent: Any, history_n: int = 7, rule: Rule | None = None) -> NightlyVerdict:
    """Every configuration of the nightly whose parent run is ``parent``."""
    rule = rule or Rule()
    tags = parent.data.tags
    configs = [judge_config(r, history_n, rule) for r in baseline.children(parent)]
    verdict = NightlyVerdict(tags.get(baseline.RUN_TAG, ""), tags.get(baseline.DATE_TAG, _date(parent.info.start_time)),
                             tags.get(MACHINE_TAG, "?"), parent.info.run_id, configs, history_n=history_n, rule=rule)
    previous = baseline.previous_nightly(parent)
    if previous is not None:
        verdict.previous = previous.data.tags.get(baseline.DATE_TAG, _date(previous.info.start_time))
        now = {c.config_id for c in configs}
        gone: dict[str, str] = {}
        for r in baseline.children(previous):
            cid = r.data.tags.get(CONFIG_TAG)
            if cid and cid not in now:
                gone.setdefault(cid, r.data.tags.get(LABEL_TAG, r.info.run_name))
        verdict.disappeared = list(gone.values())
    return verdict


__all__ = ["ALARMS", "ConfigVerdict", "NightlyVerdict", "judge", "judge_config"]
