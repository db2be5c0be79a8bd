"""Tags that let a configuration's history be found in MLflow, on every trial's child run.

* ``trtsweep.config_id``: the configuration (:func:`config_identity`): model, engine, precision, engine
  parameters, batch size, threads and core set, data.  Not the model's content, the library versions or
  the trtsweep version, unlike the trial key: a nightly compares a new model revision or a library
  upgrade with the history of the same configuration — finding what they changed is its point.
* ``trtsweep.config``: the same in words (``TrialSpec.label()``), for summaries;
* ``trtsweep.machine_id``: the hardware (:func:`trtsweep.identity.machine_id`).
* ``model_revision``: the git commit of the repository that holds ``model.path`` (``+dirty`` with
  uncommitted changes under the model), when there is one.

``trtsweep nightly`` and ``trtsweep baseline`` (:mod:`trtsweep.baseline`) look runs up by them.
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from typing import TYPE_CHECKING

from trtsweep.identity import digest, machine_id

if TYPE_CHECKING:
    from trtsweep.config import TrialSpec

CONFIG_TAG = "trtsweep.config_id"
LABEL_TAG = "trtsweep.config"  # the configuration in words (TrialSpec.label), for summaries
MACHINE_TAG = "trtsweep.machine_id"
REVISION_TAG = "model_revision"


def config_identity(spec: TrialSpec) -> dict:
    """What makes two trials the same configuration, whatever their model content and library versions."""
    model = dataclasses.asdict(spec.model)
    if model.get("path"):
        model["path"] = os.path.abspath(os.path.expanduser(model["path"]))
    data = {"name": spec.data.name, "path": os.path.abspath(os.path.expanduser(spec.data.path))
            if spec.data.path else None}
    return {"model": model, "engine": spec.engine, "precision": spec.precision, "params": spec.engine_params,
            "batch_size": spec.batch_size, "threads": spec.threads, "core_set": list(spec.core_set), "data": data}


def trial_tags(spec: TrialSpec) -> dict[str, str]:
    """The tags of a trial's child run (see the module docstring)."""
    tags = {CONFIG_TAG: digest(config_identity(spec), 12), LABEL_TAG: spec.label(), MACHINE_TAG: machine_id()}
    revision = git_revision(spec.model.path) if spec.model.path else None
    if revision:
        tags[REVISION_TAG] = revision
    return tags


@lru_cache(maxsize=16)
def git_revision(path: str) -> str | None:
    """The commit of the git repository holding ``path`` (``<sha>+dirty`` when files under ``path`` have
    uncommitted changes), or None outside a repository."""
    try:
        import git
    except ImportError:  # GitPython comes with MLflow; without it there is no revision to tag
        return None
    try:
        repo = git.Repo(os.path.expanduser(path), search_parent_directories=True)
        sha = repo.head.commit.hexsha
        dirty = repo.is_dirty(untracked_files=True, path=os.path.abspath(os.path.expanduser(path)))
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError, git.GitCommandError):
        return None
    return sha + ("+dirty" if dirty else "")
