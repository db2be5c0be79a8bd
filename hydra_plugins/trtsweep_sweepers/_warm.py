"""Warm start of a search: what to measure first, and what was measured before.

- :func:`first_configs`: the TF FP32 baseline of every batch size (speed-ups need it anyway) and each
  engine's default configuration, as far as the search space holds them (``study.enqueue_trial``).
- :func:`cached_trials`: results in the result cache (earlier grids, searches and single runs on this
  host) that are provably the configuration this search would measure: the trial key of the values,
  planned now, equals the cached result's key (same model content, library versions, host, settings).
  They become completed trials (``study.add_trial``), so the sampler starts from what is known.
"""

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from trtsweep.results import MEASURED, TrialResult

from ._outcome import Outcome, constraint_kwargs
from ._space import SearchParam, _active, config_key

log = logging.getLogger(__name__)

BASELINE = {"engine": "tf", "precision": "fp32"}
MAX_CACHED = 2000  # newest result files looked at


def contains(distribution: BaseDistribution, value: Any) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError, AttributeError):
        return False


def _fits(space: Sequence[SearchParam], values: Dict[str, Any]) -> bool:
    by_name = {p.name: p for p in space}
    return all(k in by_name and contains(by_name[k].distribution, v) for k, v in values.items())


def first_configs(space: Sequence[SearchParam], defaults: Dict[str, Dict[str, Any]],
                  fixed_engine: Optional[str]) -> List[Dict[str, Any]]:
    """Configurations to measure first: TF FP32 per batch size, then each engine's defaults.

    ``defaults``: engine → {search parameter name → its value in the composed default config}.
    Parameters left out are sampled as usual.
    """
    by_name = {p.name: p for p in space}
    out: List[Dict[str, Any]] = []
    engines = list(defaults)
    if "tf" in engines or fixed_engine == "tf":
        base = {k: v for k, v in BASELINE.items() if k in by_name}
        if all(contains(by_name[k].distribution, v) for k, v in base.items()):
            batch = by_name.get("batch_size")
            sizes = list(getattr(batch.distribution, "choices", ())) if batch is not None else []
            for b in sizes or [None]:
                values = {**base, **({"batch_size": b} if b is not None else {})}
                out.append(_with_defaults(space, values, defaults.get("tf", {})))
    for engine in engines:
        values = {"engine": engine} if "engine" in by_name else {}
        out.append(_with_defaults(space, values, defaults[engine]))
    seen, unique = set(), []
    for values in out:
        k = config_key(values)
        if k not in seen and _fits(space, values):
            seen.add(k)
            unique.append(values)
    return unique


def _with_defaults(space: Sequence[SearchParam], values: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` plus every active parameter's default that the space holds."""
    merged = dict(values)
    for p in space:
        if p.name not in merged and p.name in defaults and contains(p.distribution, defaults[p.name]):
            merged[p.name] = defaults[p.name]
    active = _active(space, {**merged, **({"engine": merged["engine"]} if "engine" in merged else {})})
    return {k: v for k, v in merged.items() if k in active or k not in {p.name for p in space}}


def spec_value(spec: Dict[str, Any], name: str) -> Any:
    """A search parameter's value in a trial spec (``TrialSpec.to_dict``); KeyError if it has none."""
    if name.startswith("engine."):
        return spec["engine_params"][name[len("engine."):]]
    if name in ("model", "data"):
        return spec[name]["name"]
    node: Any = spec
    for part in name.split("."):
        node = node[part]
    return node


def spec_values(space: Sequence[SearchParam], spec: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The search values that describe ``spec`` (only active parameters), or None if it is not in the space."""
    values: Dict[str, Any] = {}
    for p in space:
        if p.engines is not None and spec.get("engine") not in p.engines:
            continue
        try:
            v = spec_value(spec, p.name)
        except (KeyError, TypeError):
            return None
        if not contains(p.distribution, v):
            return None
        values[p.name] = v
    return values


def cached_results(results_dir: Path, limit: int = MAX_CACHED) -> Iterable[TrialResult]:
    """Complete measurements in the result cache, newest first."""
    if not results_dir.is_dir():
        return
    files = sorted(results_dir.glob("*.json"), key=lambda f: f.stat().st_mtime, reverse=True)[:limit]
    for f in files:
        try:
            r = TrialResult.from_dict(json.loads(f.read_text()))
        except (ValueError, TypeError, OSError):
            continue
        if r.status in MEASURED and not r.report.get("fault"):
            yield r


def cached_trials(space: Sequence[SearchParam], results: Iterable[TrialResult],
                  trial_key_of: Callable[[Dict[str, Any]], Optional[str]],
                  outcome_of: Callable[[TrialResult], Outcome]) -> List[FrozenTrial]:
    """Completed trials for the cached results this search would measure identically."""
    distributions = {p.name: p.distribution for p in space}
    out: Dict[str, FrozenTrial] = {}
    keys: Dict[str, Optional[str]] = {}
    for r in results:
        values = spec_values(space, r.spec)
        if values is None:
            continue
        ck = config_key(values)
        if ck in out:
            continue
        if ck not in keys:
            keys[ck] = trial_key_of(values)
        if keys[ck] != r.trial_key:
            continue
        outcome = outcome_of(r)
        if outcome.state != "COMPLETE" or not outcome.values:
            continue
        attrs = {**outcome.attrs, "cached": True, "known_from": "the result cache"}
        out[ck] = create_trial(state=TrialState.COMPLETE, values=outcome.values, params=values,
                               distributions={k: distributions[k] for k in values}, user_attrs=attrs,
                               **constraint_kwargs(outcome))
    return list(out.values())


def default_value(cfg: Any, name: str) -> Any:
    """A search parameter's value in a composed config (a config group: its option's ``name``)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, name, default=None)
    if OmegaConf.is_config(value):
        value = OmegaConf.select(value, "name", default=None)
    return value


def same_conversion(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Whether configuration ``b`` reuses ``a``'s converted model: the same engine, and they differ only in
    runtime settings (threads, batch size, the engine's runtime-stage parameters)."""
    from trtsweep.engines.base import get_engine

    engine = a.get("engine")
    if engine is None or engine != b.get("engine"):
        return False
    try:
        cls = get_engine(str(engine))
    except Exception:  # noqa: BLE001 - an unknown engine: assume nothing is shared
        return False
    import dataclasses

    runtime = {f"engine.{f.name}" for f in dataclasses.fields(cls.Params)
               if f.metadata.get("stage", "convert") != "convert"}
    runtime |= {"threads"} | ({"batch_size"} if engine != "tftrt" else set())  # TF-TRT builds per batch size
    return all(k in runtime for k in set(a) | set(b) if a.get(k) != b.get(k))


class OtherStudies:
    """Trials of the other studies on the same storage, by result identity (``trial_key``): a
    configuration measured there, on this host, with these versions, is not measured again."""

    def __init__(self, storage: Any, study_name: str):
        self.by_key: Dict[str, FrozenTrial] = {}
        self.names: Dict[str, str] = {}
        try:
            summaries = [s for s in storage.get_all_studies() if s.study_name != study_name]
        except Exception as e:  # noqa: BLE001 - an index is an optimisation
            log.warning("optuna: could not list the other studies: %s", e)
            summaries = []
        for s in summaries:  # complete trials, and those the search pruned after a step (partial figures)
            for t in storage.get_all_trials(s._study_id, deepcopy=False,
                                            states=(TrialState.COMPLETE, TrialState.PRUNED)):
                key = t.user_attrs.get("trial_key")
                if t.state == TrialState.PRUNED and t.user_attrs.get("status") != "pruned":
                    continue  # skipped (unsupported): planned again, at no cost
                if key and key not in self.by_key and not t.user_attrs.get("known_from"):
                    self.by_key[key] = t
                    self.names[key] = s.study_name

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def lookup(self, trial_key: Optional[str]) -> Optional[Outcome]:
        t = self.by_key.get(trial_key or "")
        if t is None:
            return None
        from ._search import outcome_of

        outcome = outcome_of(t, f"study {self.names[trial_key or '']} trial #{t.number}")
        outcome.attrs.pop("mlflow_run_id", None)  # a run of another sweep: not this study's to tag
        return outcome
