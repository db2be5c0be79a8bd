"""MLflow children when several workers log the same configuration at once (one study, many sweeps)."""

from __future__ import annotations

import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from trtsweep.app import job_config
from trtsweep.config import TrackingConfig, plan_trial
from trtsweep.entry import CONF_DIR
from trtsweep.results import TrialResult, TrialStatus
from trtsweep.tracking import ROLE_TAG, TRIAL_TAG, Tracker


def test_workers_logging_one_configuration_at_once_converge_on_one_child(tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        spec = plan_trial(job_config(compose("config", overrides=["engine=tf", "precision=int8"])))
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="race", log_models=False))
    parent = tracker.parent_run("sweep", "sweep")
    now = time.time()
    # another worker created this trial's child a moment earlier, after our search found none
    other = tracker.client.create_run(tracker.experiment_id, start_time=int((now - 1) * 1000),
                                      tags={"mlflow.parentRunId": parent, TRIAL_TAG: spec.trial_key(),
                                            ROLE_TAG: "trial"}).info.run_id
    result = TrialResult(spec.trial_key(), TrialStatus.SKIPPED, spec.to_dict(), reason="skip", started_at=now,
                         ended_at=now)
    run_id, params = tracker._create_child(parent, result, spec)
    assert run_id == other and params == {}
    children = tracker._find(f"tags.`{TRIAL_TAG}` = '{spec.trial_key()}' and tags.`mlflow.parentRunId` = '{parent}'")
    assert [c.info.run_id for c in children] == [other]  # ours was deleted, not left as a duplicate
    assert tracker.log_trial(parent, result, spec) == other
