"""The Model Registry side of converted models (trtsweep.mlflow_registry) on a real MLflow store: which
confirmed winner becomes a version, when the ``champion`` alias moves, and the fallback when a trial has
no packaged MLflow model."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from mlflow.entities import LoggedModelOutput, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from trtsweep.mlflow_registry import CHAMPION, log_model, register_winners, registered_name
from trtsweep.results import TrialResult, TrialStatus

PARENT = "parent-run"


@pytest.fixture
def client(tmp_path):
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _winner(client: MlflowClient, exp: str, key: str, throughput: float, cpu: str = "cpu-a", cores: str = "0,1",
            bs: int = 1):
    """A confirmed winner as a sweep leaves it: a child run (batch size, confirmed throughput) that produced
    a logged model, its trial record (the host it was measured on) and its verdict."""
    run = client.create_run(exp).info.run_id
    client.log_batch(run, metrics=[Metric("confirm_throughput_ips", throughput, 0, 0)],
                     params=[Param("batch_size", str(bs))], tags=[RunTag("host_id", f"{cpu}/{cores}")])
    model = client.create_logged_model(exp, name=key, source_run_id=run)
    client.log_outputs(run, [LoggedModelOutput(model.model_id, step=0)])
    record = {"trial_key": key, "mlflow_run_ids": {PARENT: run},
              "spec": {"model": {"name": "digits_cnn"}, "engine": "tflite", "precision": "fp32", "batch_size": bs,
                       "threads": len(cores.split(",")), "host": {"cpu_model": cpu, "core_set": cores}}}
    verdict = SimpleNamespace(winner=key, group=f"digits_cnn bs={bs}", text=f"{key} won",
                              stats={key: {"confirm_throughput_ips": throughput}})
    return record, verdict


def _champion(client: MlflowClient) -> int:
    return int(client.get_model_version_by_alias(registered_name("digits_cnn"), CHAMPION).version)


def _versions(client: MlflowClient) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{registered_name('digits_cnn')}'"))


def test_champion_moves_only_to_a_faster_winner_at_the_same_batch_size_on_the_same_machine(client):
    exp = client.create_experiment("registry")

    def confirm(*winners):
        register_winners(client, [v for _, v in winners], [r for r, _ in winners], PARENT)

    first = _winner(client, exp, "first", 1000.0)
    confirm(first)
    assert _versions(client) == [1] and _champion(client) == 1
    confirm(first)  # the same sweep again (its runs reused): no second version of the same model
    assert _versions(client) == [1]

    # on another core set of the same machine (threads=1 vs 2): the same machine, comparable
    confirm(_winner(client, exp, "faster", 1500.0, cores="0"))
    assert _versions(client) == [1, 2] and _champion(client) == 2  # the old version stays

    confirm(_winner(client, exp, "slower", 1200.0))
    assert _versions(client) == [1, 2, 3] and _champion(client) == 2

    # faster, but not comparable: another CPU, or another batch size (items/s grow with the batch)
    confirm(_winner(client, exp, "elsewhere", 9000.0, cpu="cpu-b"), _winner(client, exp, "batched", 9000.0, bs=32))
    assert _versions(client) == [1, 2, 3, 4, 5] and _champion(client) == 2

    tags = client.get_model_version(registered_name("digits_cnn"), "2").tags
    assert tags["trtsweep.trial_key"] == "faster" and float(tags["confirm_throughput_ips"]) == 1500.0


def test_a_winner_without_a_logged_model_is_not_registered(client):
    exp = client.create_experiment("registry")
    record, verdict = _winner(client, exp, "first", 1000.0)
    record["mlflow_run_ids"] = {}  # not logged under this sweep's parent
    register_winners(client, [verdict], [record], PARENT)
    assert client.search_registered_models() == []


def test_a_trial_without_a_packaged_model_logs_its_files_and_says_why(client, tmp_path, caplog):
    exp = client.create_experiment("files")
    run = client.create_run(exp).info.run_id
    artifact = tmp_path / "model.tflite"
    artifact.write_bytes(b"tflite")
    result = TrialResult("key", TrialStatus.OK, {}, artifact=str(artifact),
                         report={"mlflow_model_error": "TrtsweepError: it broke"})
    spec = SimpleNamespace(engine="tflite", label=lambda: "digits_cnn tflite fp32 bs=1")
    with caplog.at_level(logging.ERROR, logger="trtsweep"):
        assert log_model(client, exp, run, result, spec) is None
    assert [a.path for a in client.list_artifacts(run, "model")] == ["model/model.tflite"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["no MLflow model for digits_cnn tflite fp32 bs=1 (TrtsweepError: it broke); "
                      "its converted files are logged under model/"]
