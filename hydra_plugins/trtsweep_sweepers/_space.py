"""The Optuna sweeper's search space: Hydra sweep grammar → Optuna distributions.

``a,b`` / ``choice(a,b)`` → categorical, ``range(1,5)`` → integers 1..4, ``interval(0.1,1)`` → float,
``tag(log, interval(...))`` → log scale, ``int(interval(1,64))`` → integers; other overrides are fixed.
``engine.<param>`` is suggested only for the sampled engines that have that parameter, so one search
can span engines.  Every error is a :class:`SearchSpaceError` whose text is one line naming the fix.
"""

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial

ENGINE_PREFIX = "engine."


class SearchSpaceError(ValueError):
    """An invalid search space or sweeper setting; ``str()`` is the one line shown to the user."""


@dataclass
class SearchParam:
    name: str  # Optuna parameter name: the config key (``engine.num_threads``)
    key: str  # the override key as written (may carry ``+``/``++``)
    expr: str  # the override as written, for messages
    distribution: BaseDistribution
    engines: Optional[Tuple[str, ...]] = None  # engine.<p> in a search over engines: only for these


def parse_overrides(lines: Sequence[str], config_loader: Any = None) -> List[Override]:
    """Parse override strings with Hydra's grammar; a syntax error becomes one line with a fix."""
    parser = OverridesParser.create(config_loader=config_loader)
    out = []
    for line in lines:
        try:
            out.extend(parser.parse_overrides([line]))
        except Exception as e:  # noqa: BLE001 - OverrideParseException and friends
            detail = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip() and not ln.startswith("See ")]
            why = re.sub(r"^\w+ while evaluating '[^']*': ", "", detail[0]) if detail else "syntax error"
            fix = ("list at least one value, e.g. precision=choice(fp32,int8)" if "empty choice" in why
                   else "see the sweep grammar in docs/optuna.md (choice(a,b), range(1,5), interval(0.1,1))")
            raise SearchSpaceError(f"cannot parse '{line}': {why}; fix: {fix}") from None
    return out


def split_space(overrides: Sequence[Override]) -> Tuple[List[SearchParam], List[str]]:
    """(search parameters, fixed override strings); a later override of the same key wins."""
    by_key: Dict[str, Override] = {}
    for ov in overrides:
        name = _plain_key(ov.get_key_element())
        by_key.pop(name, None)
        by_key[name] = ov
    space, fixed = [], []
    for name, ov in by_key.items():
        if ov.is_sweep_override():
            space.append(SearchParam(name, ov.get_key_element(), ov.input_line or name, to_distribution(ov)))
        else:
            fixed.append(ov.input_line or f"{ov.get_key_element()}={ov.get_value_element_as_str()}")
    return space, fixed


def _plain_key(key: str) -> str:
    return key.lstrip("+~")


def to_distribution(ov: Override) -> BaseDistribution:
    """The Optuna distribution for one sweep override (raises SearchSpaceError naming the fix)."""
    key, value, expr = ov.get_key_element(), ov.value(), ov.input_line or ov.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(ov.sweep_iterator())
        if not choices:
            raise SearchSpaceError(f"{expr}: empty choice; fix: list at least one value, e.g. {key}=choice(a,b)")
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool))]
        if bad:
            raise SearchSpaceError(f"{expr}: choice value {bad[0]!r} is not a scalar; fix: choose among strings, "
                                   "numbers or booleans (a list or dict cannot be an Optuna choice)")
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(f"{expr}: a value appears twice; fix: list each value once")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(ov.sweep_iterator())
        if not values:
            raise SearchSpaceError(f"{expr}: the range is empty (start={value.start}, stop={value.stop}, "
                                   f"step={value.step}; the stop is excluded); fix: e.g. {key}=range(1,5) for 1..4")
        low, high, step = min(values), max(values), abs(value.step)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(int(low), int(high), step=int(step))
        return FloatDistribution(float(low), float(high), step=float(step))
    if isinstance(value, IntervalSweep):
        start, end, log_scale = value.start, value.end, "log" in value.tags
        if start > end:
            raise SearchSpaceError(f"{expr}: interval({start}, {end}) is reversed: the start must be ≤ the end; "
                                   f"fix: {key}=interval({end}, {start})")
        if log_scale and start <= 0:
            raise SearchSpaceError(f"{expr}: a log interval needs a start > 0 (got {start}); "
                                   f"fix: e.g. {key}=tag(log, interval({end / 1000:g}, {end}))")
        if isinstance(start, int) and isinstance(end, int):
            return IntDistribution(start, end, log=log_scale)
        return FloatDistribution(float(start), float(end), log=log_scale)
    raise SearchSpaceError(f"{expr}: {type(value).__name__} sweeps are not supported by the Optuna sweeper; "
                           "fix: use choice(...), range(...) or interval(...)")


def encode_value(value: Any) -> str:
    """A sampled value as Hydra override text (strings quoted when the grammar needs it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./:@-]+", text) and text.lower() not in ("true", "false", "null"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def params_text(params: Dict[str, Any]) -> str:
    """``key=value ...`` as the user would write the overrides."""
    return " ".join(f"{k}={encode_value(v)}" for k, v in params.items())


def representative_values(distribution: BaseDistribution) -> List[Any]:
    """Values that exercise a distribution for validation: every choice, or both ends."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    low, high = distribution.low, distribution.high  # type: ignore[attr-defined]
    return [low] if low == high else [low, high]


def grid_values(param: SearchParam) -> List[Any]:
    """Every value of a finite distribution (Optuna's GridSampler); a continuous one is an error."""
    d = param.distribution
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution) and not d.log:
        return list(range(d.low, d.high + 1, d.step))
    if isinstance(d, FloatDistribution) and d.step and not d.log:
        n = int(round((d.high - d.low) / d.step))
        return [round(d.low + i * d.step, 12) for i in range(n + 1)]
    raise SearchSpaceError(f"{param.expr}: sampler=grid needs a finite set of values; "
                           f"fix: use choice(...) or range(...) for {param.name}, or another sampler (tpe, random)")


def grid_search_space(space: Sequence[SearchParam]) -> Dict[str, List[Any]]:
    """The ``search_space`` argument of ``optuna.samplers.GridSampler``."""
    return {p.name: grid_values(p) for p in space}


def attach_engine_conditions(space: List[SearchParam], engine_keys: Dict[str, set],
                             fixed_engine: Optional[str]) -> None:
    """Make ``engine.<p>`` conditional on the sampled engine; reject a parameter no engine has.

    ``engine_keys``: engine -> its parameter names (from ``conf/engine/<engine>.yaml``), for every
    engine of the search (or the fixed one).
    """
    for p in space:
        if not p.name.startswith(ENGINE_PREFIX) or p.key.startswith("+"):
            continue
        param = p.name[len(ENGINE_PREFIX):]
        having = tuple(e for e in engine_keys if param in engine_keys[e])
        if fixed_engine is not None:
            if not having:
                known = ", ".join(sorted(engine_keys.get(fixed_engine, ())))
                raise SearchSpaceError(f"{p.expr}: {param} is not a parameter of engine={fixed_engine}; "
                                       f"fix: use one of {known} (conf/engine/{fixed_engine}.yaml)")
            continue
        if not having:
            per_engine = "; ".join(f"{e}: {', '.join(sorted(keys))}" for e, keys in engine_keys.items())
            raise SearchSpaceError(f"{p.expr}: {param} is not a parameter of any engine in the search "
                                   f"({', '.join(engine_keys)}); fix: use a parameter one of them has ({per_engine})")
        p.engines = None if len(having) == len(engine_keys) else having


def _ordered(space: Sequence[SearchParam]) -> List[SearchParam]:
    """Unconditional parameters first (the engine is sampled before its parameters)."""
    return sorted(space, key=lambda p: p.engines is not None)


def _active(space: Sequence[SearchParam], values: Dict[str, Any]) -> Dict[str, Any]:
    engine = values.get("engine")
    return {p.name: values[p.name] for p in _ordered(space)
            if p.name in values and (p.engines is None or engine in p.engines)}


def suggest(trial: Trial, space: Sequence[SearchParam]) -> Dict[str, Any]:
    """Ask the trial for every active parameter (define-by-run: engine first, then its parameters)."""
    values: Dict[str, Any] = {}
    for p in _ordered(space):
        if p.engines is not None and values.get("engine") not in p.engines:
            continue
        d = p.distribution
        if isinstance(d, CategoricalDistribution):
            values[p.name] = trial.suggest_categorical(p.name, d.choices)
        elif isinstance(d, IntDistribution):
            values[p.name] = trial.suggest_int(p.name, d.low, d.high, step=d.step, log=d.log)
        else:
            assert isinstance(d, FloatDistribution)
            values[p.name] = trial.suggest_float(p.name, d.low, d.high, step=d.step, log=d.log)
    return values


def overrides_for(space: Sequence[SearchParam], values: Dict[str, Any], fixed: Sequence[str]) -> List[str]:
    keys = {p.name: p.key for p in space}
    return list(fixed) + [f"{keys[name]}={encode_value(v)}" for name, v in values.items()]


def representative_assignments(space: Sequence[SearchParam]) -> List[Dict[str, Any]]:
    """Every categorical value and both ends of every range at least once, the rest at their first value."""
    firsts = {p.name: representative_values(p.distribution)[0] for p in space}
    engine_choices = next((list(p.distribution.choices) for p in space if p.name == "engine"
                           and isinstance(p.distribution, CategoricalDistribution)), [])
    out: List[Dict[str, Any]] = []
    seen = set()
    for p in [None, *space]:
        for v in representative_values(p.distribution) if p is not None else [None]:
            values = dict(firsts)
            if p is not None:
                values[p.name] = v
                if p.engines is not None and values.get("engine") not in p.engines:
                    values["engine"] = next(e for e in engine_choices if e in p.engines)
            active = _active(space, values)
            ident = json.dumps(active, sort_keys=True, default=str)
            if ident not in seen:
                seen.add(ident)
                out.append(active)
    return out


def config_key(values: Dict[str, Any]) -> str:
    """One spelling of a configuration (the active parameters), for finding it again."""
    return json.dumps({k: values[k] for k in sorted(values)}, sort_keys=True, default=str)


def enumerate_space(space: Sequence[SearchParam], limit: int = 20000) -> Optional[List[Dict[str, Any]]]:
    """Every configuration of a finite space (conditional parameters only with their engines), or None for
    a continuous space or one larger than ``limit``."""
    try:
        grids = {p.name: grid_values(p) for p in space}
    except SearchSpaceError:
        return None
    out: List[Dict[str, Any]] = [{}]
    for p in _ordered(space):
        nxt: List[Dict[str, Any]] = []
        for values in out:
            if p.engines is not None and values.get("engine") not in p.engines:
                nxt.append(values)
                continue
            nxt.extend({**values, p.name: v} for v in grids[p.name])
        out = nxt
        if len(out) > limit:
            return None
    return out


def distance(a: Dict[str, Any], b: Dict[str, Any]) -> int:
    """How many parameters two configurations differ in (a parameter only one of them has counts once)."""
    return sum(1 for k in set(a) | set(b) if a.get(k, object()) != b.get(k, object()))
