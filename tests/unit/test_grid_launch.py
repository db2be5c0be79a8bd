"""The grid sweeper hands its launcher the configs it composed for the plan instead of composing
every job a second time."""

from __future__ import annotations

from types import SimpleNamespace

from hydra.types import HydraContext

from hydra_plugins.trtsweep_sweepers.grid import planned_configs


class CountingLoader:
    def __init__(self) -> None:
        self.composed: list[list[str]] = []

    def load_sweep_config(self, master, overrides):
        self.composed.append(list(overrides))
        return {"composed": list(overrides)}

    def get_search_path(self):
        return "search path"


def test_the_launcher_gets_each_planned_config_once_and_composes_the_rest():
    loader, master = CountingLoader(), object()
    context = HydraContext(config_loader=loader, callbacks=None)
    launcher = SimpleNamespace(hydra_context=context)
    jobs = [["precision=fp32"], ["precision=int8"]]
    planned = [{"planned": 0}, {"planned": 1}]
    with planned_configs(launcher, master, jobs, planned):
        inner = launcher.hydra_context.config_loader
        assert inner.load_sweep_config(master, ["precision=int8"]) is planned[1]
        assert inner.load_sweep_config(master, ["precision=fp32"]) is planned[0]
        assert loader.composed == []  # nothing composed twice
        # handed out once (the launcher sets the job number on it); a job not planned, another master config
        assert inner.load_sweep_config(master, ["precision=fp32"]) == {"composed": ["precision=fp32"]}
        assert inner.load_sweep_config(master, ["batch_size=8"]) == {"composed": ["batch_size=8"]}
        inner.load_sweep_config(object(), ["precision=int8"])
        assert len(loader.composed) == 3
        assert inner.get_search_path() == "search path" and launcher.hydra_context.callbacks is None
    assert launcher.hydra_context is context


def test_a_launcher_without_a_hydra_context_composes_as_it_always_did():
    launcher = SimpleNamespace()
    with planned_configs(launcher, object(), [["a=1"]], [{}]):
        assert not hasattr(launcher, "hydra_context")
