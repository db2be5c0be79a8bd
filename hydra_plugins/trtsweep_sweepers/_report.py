"""The study's report: best trial and Pareto front, trials table, plots, importances, summary lines.

Selection is Optuna's own: ``study.best_trial`` / ``study.best_trials`` consider only feasible trials
once constraints are recorded (``Trial.set_constraint`` on Optuna ≥ 5, the ``constraints`` system
attribute on Optuna 4, see ``_outcome.tell``).  Table and plots are ``study.trials_dataframe`` and
``optuna.visualization.matplotlib``.
"""

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only, no display (before pyplot is imported by Optuna's plots)

import optuna
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.ticker import MaxNLocator
from optuna.importance import FanovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances, plot_pareto_front

from trtsweep.errors import one_line
from trtsweep.results import TrialStatus

from ._outcome import METRIC_ATTRS, is_infeasible
from ._space import params_text

log = logging.getLogger(__name__)

TABLE_ATTRS = ("number", "state", "values", "params", "user_attrs", "system_attrs", "datetime_start",
               "datetime_complete", "duration")
IMPORTANCE_SEED = 0  # the same fANOVA forest for the JSON and the plot


def best_and_front(study: optuna.Study) -> Tuple[Optional[FrozenTrial], List[FrozenTrial]]:
    """(best feasible trial on the first objective or None, the feasible Pareto front (multi-objective only)).

    Single objective: ``study.best_trial`` (a ValueError means no completed or no feasible trial yet).
    Multi-objective: ``study.best_trials``, and the best is its member with the best first objective
    (the best feasible first objective is always on the front).
    """
    if len(study.directions) == 1:
        try:
            return study.best_trial, []
        except ValueError:
            return None, []
    front = sorted(study.best_trials, key=lambda t: t.number)
    if not front:
        return None, []
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(front, key=lambda t: (sign * t.values[0], -t.number)), front


def best_feasible(study: optuna.Study, k: int) -> List[FrozenTrial]:
    """The ``k`` best feasible completed trials on the first objective, best first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not is_infeasible(t) and t.values]
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(done, key=lambda t: (sign * t.values[0], t.number))[:k]


def study_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial of the study (``study.trials_dataframe``), with a ``feasible`` column for completed trials."""
    df = study.trials_dataframe(attrs=TABLE_ATTRS)
    if not df.empty:
        done = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        df.insert(2, "feasible", [not is_infeasible(done[n]) if n in done else None for n in df["number"]])
    return df


def _target(study: optuna.Study) -> Dict[str, Any]:
    """Plot arguments for the first objective (a multi-objective study needs an explicit target)."""
    name = (study.metric_names or ["objective"])[0]
    if len(study.directions) > 1:
        return {"target": lambda t: t.values[0], "target_name": name}
    return {"target_name": name}


def _save(ax: Any, path: Path) -> Path:
    fig = ax.figure
    fig.set_size_inches(8, 4.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_history(study: optuna.Study, path: Path) -> Path:
    """Optuna's optimisation history (infeasible trials greyed; the best feasible value line if single-objective)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning; "study contains infeasible trials"
        ax = plot_optimization_history(study, **_target(study))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    return _save(ax, path)


def plot_importances(study: optuna.Study, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _save(plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
                                            **_target(study)), path)


def plot_front(study: optuna.Study, path: Path) -> Path:
    """Optuna's Pareto-front plot (multi-objective studies)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _save(plot_pareto_front(study, target_names=study.metric_names), path)


def importances(study: optuna.Study, min_trials: int = 2) -> Tuple[Dict[str, float], Optional[str]]:
    """Parameter importances of the first objective, or ({}, why not)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < min_trials:
        return {}, f"needs ≥ {min_trials} completed trials (have {len(done)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
            return dict(optuna.importance.get_param_importances(
                study, target=target, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED))), None
    except Exception as e:  # noqa: BLE001 - e.g. every parameter took one value
        return {}, one_line(e)


def summary_lines(trials: Sequence[FrozenTrial], best: Optional[FrozenTrial], front: Sequence[FrozenTrial],
                  study_name: str, objective: str, ran_here: int) -> List[str]:
    states: Dict[str, int] = {}
    for t in trials:
        label = TrialStatus.INFEASIBLE.value if is_infeasible(t) else t.state.name.lower()
        states[label] = states.get(label, 0) + 1
    cached = sum(1 for t in trials if t.user_attrs.get("cached"))
    lines = [f"optuna study {study_name}: {len(trials)} trial(s), {ran_here} run by this worker — "
             f"complete={states.get('complete', 0)}, infeasible={states.get('infeasible', 0)}, "
             f"failed={states.get('fail', 0)}, skipped(pruned)={states.get('pruned', 0)}"
             + (f", running elsewhere={states['running']}" if states.get("running") else "")
             + (f", served from the result cache={cached}" if cached else "")]
    if best is None:
        lines.append("optuna best: no feasible trial yet (every completed trial violated the accuracy constraint)"
                     if states.get(TrialStatus.INFEASIBLE.value) else "optuna best: no completed trial")
    else:
        a = best.user_attrs
        metrics = ", ".join(f"{k}={a[k]:.4g}" for k in METRIC_ATTRS if k in a)
        lines.append(f"optuna best: trial #{best.number} {objective}={best.values[0]:.6g} — "
                     f"{params_text(best.params)} ({metrics})")
    if len(front) > 1 or (front and best is not None and front[0].number != best.number):
        lines.append("optuna Pareto front (objective, accuracy_drop): " + "; ".join(
            f"#{t.number} {t.values[0]:.4g}/{t.values[1]:.4g}" for t in front))
    return lines


def write_report(study: optuna.Study, sweep_dir: Path) -> Tuple[List[Path], Dict[str, float]]:
    """Write optuna_trials.csv, the plots and optuna_importance.json; (files written, importances)."""
    files = [sweep_dir / "optuna_trials.csv"]
    study_table(study).to_csv(files[0], index=False)
    plots = [(plot_history, "optuna_history.png")]
    imps, why_not = importances(study)
    if imps:
        (sweep_dir / "optuna_importance.json").write_text(json.dumps(imps, indent=1))
        files.append(sweep_dir / "optuna_importance.json")
        plots.append((plot_importances, "optuna_importance.png"))
    else:
        log.info("optuna: no parameter importances: %s", why_not)
    if len(study.directions) > 1:
        plots.append((plot_front, "optuna_pareto_front.png"))
    for plot, name in plots:
        try:
            files.append(plot(study, sweep_dir / name))
        except Exception as e:  # noqa: BLE001 - a plot is not worth failing the sweep
            log.error("could not plot %s: %s", name, one_line(e))
    return files, imps


def confirmed_lines(df: Any) -> List[str]:
    """The study's final answer: the winner of the interleaved re-measurement of the close candidates
    this process ran (trtsweep.confirm), which may differ from Optuna's best single measurement."""
    if df is None or getattr(df, "empty", True) or "best" not in df:
        return []
    lines = []
    for _, r in df[df["best"].fillna(False).astype(bool)].iterrows():
        tie = " (a statistical tie: the cheapest of the tied)" if r.get("tie") else ""
        lines.append(f"optuna final answer (confirmed by interleaved re-measurement){tie}: {r.model} bs={r.batch_size} "
                     f"engine={r.engine} precision={r.precision} threads={r.threads} — "
                     f"{r.confirm_throughput_ips:.1f} items/s (95% CI {r.confirm_ci_low:.1f}–{r.confirm_ci_high:.1f})")
    return lines
