"""Fuzzing the config surface (issue 11): any set of overrides — keys of the real config and junk keys,
values from integers (0, negative, huge), floats, junk text and the empty string — is either accepted
by the plan or refused with one line (a ConfigError, or Hydra's override/composition error as
:func:`trtsweep.errors.config_error_line` shows it), never an unhandled exception.

In-process: Hydra's compose API and :func:`trtsweep.app.plan_sweep` without resolving models (no engine
work, no worker), the same path as ``python sweep.py -m ...`` up to the first trial."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtsweep.entry import CONF_DIR, is_config_error
from trtsweep.errors import config_error_line

GROUPS = {"model": ["digits_cnn", "mobilenet_v2", "resnet50", "saved_model", "unsupported_op", "nope"],
          "engine": ["tf", "tflite", "onnx", "tftrt", "bogus"],
          "precision": ["fp32", "fp16", "int8", "int8_dynamic", "x"],
          "data": ["auto", "digits", "random", "sample_images", "file", "zz"], "tracking": ["none", "sqlite", "server"]}
JUNK_KEYS = ["bogus", "+bogus", "measure.bogus", "+measure.bogus", "+engine.bogus", "engine.num_threads",
             "+precision.extra", "+model.input_shapes.image", "model.nope", "+tracking.tags.team", "~measure"]


@pytest.fixture(scope="module")
def compose():
    """``compose(overrides)``: Hydra's compose API for the config-group choices (each composed once, then
    copied: composing reads every YAML file again), Hydra's own parser and override code for the values
    (what ``compose`` applies after the defaults list)."""
    import copy
    import functools

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        composed = functools.lru_cache(maxsize=None)(lambda groups: hydra_compose("config", overrides=list(groups)))

        def compose_(ovs: list[str]):
            groups = tuple(o for o in ovs if o.split("=")[0] in GROUPS)
            cfg = copy.deepcopy(composed(groups))
            ConfigLoaderImpl._apply_overrides_to_config(
                parser.parse_overrides([o for o in ovs if o.split("=")[0] not in GROUPS]), cfg)
            return cfg

        yield compose_, sorted(_leaves(OmegaConf.to_container(composed(()), resolve=False)))
    GlobalHydra.instance().clear()


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


VALUES = st.one_of(
    st.sampled_from([0, -1, -10**9, 1, 2, 10**12, 10**30]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "''", "null", "true", "abc", "[1,2]", "[", "{a: 1}", "${oc.env:NOPE}", "${nope}", "'x y'",
                     "/nonexistent/path", "ftp://nowhere", "sqlite:///x.db", "http://", "-", "1e400", "nan"]),
    st.text(alphabet="abc019_-.:/=,[]{}$'\" ", max_size=12),
)


@st.composite
def overrides(draw, leaves: list[str]) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["leaf", "leaf", "leaf", "group", "junk"]))
        if kind == "group" and not any(o.split("=")[0] in GROUPS for o in out):  # one choice per example
            group = draw(st.sampled_from(sorted(GROUPS)))
            out.append(f"{group}={draw(st.sampled_from(GROUPS[group]))}")
            continue
        key = draw(st.sampled_from(leaves if kind == "leaf" else JUNK_KEYS))
        value = draw(VALUES)
        out.append(key if key.startswith("~") else f"{key}={value}")
    return out


def test_any_overrides_are_accepted_or_refused_in_one_line(compose, tmp_path_factory):
    compose_, leaves = compose
    cache = tmp_path_factory.mktemp("fuzz-cache")

    @settings(max_examples=int(os.environ.get("TRTSWEEP_FUZZ_EXAMPLES", "150")), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(overrides(leaves))
    def check(ovs):
        from trtsweep.app import plan_sweep

        try:
            cfg = compose_([*ovs, f"cache_dir={cache}"])
            plan_sweep([cfg], resolve_models=False)
        except Exception as e:  # noqa: BLE001 - what the test is about
            assert is_config_error(e), f"{ovs}: unhandled {type(e).__name__}: {e}"
            line = config_error_line(e)
            assert line and "\n" not in line and len(line) <= 500, (ovs, line)

    check()
