"""Security (issue 11 §4): no shell, file names from user values stay in their directory, no credentials
in what trtsweep logs, prints and records (docs/security.md)."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest

from trtsweep.errors import ConfigError
from trtsweep.redact import mask_config, mask_logs, mask_text, mask_url
from trtsweep.safe_names import inside, safe_component

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["src", "hydra_plugins", "benchmarks", "docker", ".ci", "sweep.py"]


# ---------------------------------------------------------------------------
# 1. nothing reaches a shell
def shell_uses(source: str, name: str = "<src>") -> list[str]:
    """Calls that run a shell: ``shell=True``, ``os.system``/``os.popen``/``os.exec*p*``-style spawners given a
    string, ``subprocess.getoutput``/``getstatusoutput``, and a ``subprocess`` call whose command is a string."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        dotted = ast.unparse(func)
        where = f"{name}:{node.lineno}: {dotted}"
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            found.append(where + " shell=")
        if dotted in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                      "system", "popen", "getoutput", "getstatusoutput"):
            found.append(where)
        if dotted.split(".")[-1] in ("run", "Popen", "call", "check_call", "check_output") and \
                dotted.startswith(("subprocess.", "Popen", "check_")) and node.args and \
                isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
            found.append(where + " with a command string")
    return found


def test_the_shell_scanner_finds_each_kind_of_shell_use():
    planted = ("import os, subprocess\nos.system('ls ' + x)\nos.popen(x)\nsubprocess.run(cmd, shell=True)\n"
               "subprocess.Popen(f'ls {x}')\nsubprocess.getoutput(x)\nsubprocess.run(['ls', x])\n")
    found = shell_uses(planted)
    assert [f.split(":")[1] for f in found] == ["2", "3", "4", "5", "6"], found  # not line 7: an argv list


def test_no_source_file_runs_a_shell():
    files = [p for top in SCANNED for p in ([ROOT / top] if (ROOT / top).is_file() else (ROOT / top).rglob("*.py"))]
    assert len(files) > 50
    found = [f for p in files for f in shell_uses(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "a shell is run (use an argv list, never shell=True / os.system):\n" + "\n".join(found)


def test_the_dockerfile_default_command_is_exec_form():
    """A Dockerfile's shell-form CMD runs under /bin/sh -c; the exec form (a JSON list) does not."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    cmd = [ln for ln in text.splitlines() if ln.startswith(("CMD", "ENTRYPOINT"))]
    assert cmd and all(ln.split(None, 1)[1].lstrip().startswith("[") for ln in cmd), cmd


# ---------------------------------------------------------------------------
# 2. names from user values
@pytest.mark.parametrize("value,problem", [
    ("../x", "'/'"), ("/etc/passwd", "'/'"), ("a\x00b", "control character"), ("", "empty"), ("  ", "empty"),
    ("..", "relative directory"), (".", "relative directory"), ("a\\..\\b", "'\\'"), ("x\ny", "control character"),
    ("n" * 200, "longer than"), (None, "empty"),
])
def test_unsafe_names_are_refused_naming_the_value_and_the_fix(value, problem):
    with pytest.raises(ConfigError) as e:
        safe_component(value, "model.name")
    msg = str(e.value)
    assert msg.startswith(f"model.name={value!r} ") and problem in msg and "; fix: model.name=" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("value", ["digits_cnn", "resnet50-v1.5", "MobileNetV2", "a b", "модель", ".hidden"])
def test_plain_names_pass_unchanged(value):
    assert safe_component(value) == value


def test_inside_joins_safe_parts_and_refuses_an_escape(tmp_path):
    assert inside(tmp_path, "tflite", "abc123") == tmp_path / "tflite" / "abc123"
    for bad in ("../../etc", "/etc/passwd", "a\x00b", ".."):
        with pytest.raises(ConfigError, match="engine"):
            inside(tmp_path, bad, what="engine")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a\x00b"])
def test_a_model_name_that_is_a_path_fails_config_validation(name):
    from trtsweep.config import ModelConfig
    from trtsweep.validation import typed

    with pytest.raises(ConfigError, match=r"^model\.name=.*cannot be used as a file name.*; fix: model\.name="):
        typed(ModelConfig, {"name": name, "source": "digits_cnn"}, "model")


def test_the_generated_model_directory_stays_in_the_cache(tmp_path):
    """Where config validation is bypassed (a spec from an old cache), the path is still checked."""
    from trtsweep import models
    from trtsweep.config import ModelConfig

    cfg = ModelConfig(name="ok", source="digits_cnn")
    cfg.name = "../../escaped"
    with pytest.raises(ConfigError, match="model.name"):
        models._build_cached(cfg, tmp_path / "cache")
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.rglob("*escaped*"))


# ---------------------------------------------------------------------------
# 3. credentials masked
@pytest.mark.parametrize("url,expected", [
    ("postgresql://trt:s3cret@db.example:5432/optuna", "postgresql://trt:***@db.example:5432/optuna"),
    ("postgresql+psycopg2://u:p@ss@h/db", "postgresql+psycopg2://u:***@h/db"),
    ("https://alice:tok-123@mlflow.example/", "https://alice:***@mlflow.example/"),
    ("mysql://u:s3cret@h/db?charset=utf8&password=s3cret", "mysql://u:***@h/db?charset=utf8&password=***"),
    ("sqlite:///x.db?password=s3cret&timeout=5", "sqlite:///x.db?password=***&timeout=5"),
    ("http://h:5000/?api_key=s3cret;auth_token=s3cret", "http://h:5000/?api_key=***;auth_token=***"),
    ("postgresql://postgres@127.0.0.1:5432/db", "postgresql://postgres@127.0.0.1:5432/db"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("journal:/tmp/optuna.log", "journal:/tmp/optuna.log"),
    ("", ""), (None, None),
])
def test_mask_url(url, expected):
    assert mask_url(url) == expected
    if url:
        assert "s3cret" not in mask_url(url) and "tok-123" not in mask_url(url) and "p@ss" not in mask_url(url)


def test_mask_text_masks_every_url_of_a_line_and_nothing_else():
    line = ("#0 : engine=tflite tracking.uri='postgresql://u:s3cret@h/db' "
            "hydra.sweeper.storage=\"sqlite:///o.db?password=s3cret\" name=a@b trial_key=abc")
    out = mask_text(line)
    assert "s3cret" not in out
    assert out == ("#0 : engine=tflite tracking.uri='postgresql://u:***@h/db' "
                   "hydra.sweeper.storage=\"sqlite:///o.db?password=***\" name=a@b trial_key=abc")


def test_mask_config_masks_nested_urls_and_secret_named_keys():
    cfg = {"tracking": {"uri": "https://u:s3cret@mlflow.example", "experiment": "trtsweep/x",
                        "tags": {"db_password": "s3cret", "owner": "me"}},
           "overrides": ["tracking.uri=postgresql://u:s3cret@h/db", "batch_size=8"], "batch_size": 8,
           "trial_key": "abc", "path": None}
    out = mask_config(cfg)
    assert "s3cret" not in repr(out)
    assert out["tracking"]["tags"] == {"db_password": "***", "owner": "me"}
    assert out["overrides"][1] == "batch_size=8" and out["batch_size"] == 8 and out["trial_key"] == "abc"
    assert "s3cret" in repr(cfg), "the caller's config must stay as it was (it is still used to connect)"


def test_log_records_are_masked_even_after_logging_is_configured_again():
    """Hydra configures logging again (dictConfig: new handlers) for each job it launches."""
    import logging.config

    installed = logging.getLogRecordFactory()
    before = getattr(installed, "inner", installed)  # another test of this process may have masked logs already
    logging.setLogRecordFactory(before)
    stream = io.StringIO()
    try:
        mask_logs()
        mask_logs()  # once
        assert logging.getLogRecordFactory() is not before and \
            logging.getLogRecordFactory().inner is before  # type: ignore[attr-defined]
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                                   "handlers": {"s": {"class": "logging.StreamHandler", "stream": stream}},
                                   "loggers": {"trtsweep_test_masking": {"handlers": ["s"], "level": "INFO"}}})
        log = logging.getLogger("trtsweep_test_masking.hydra")
        log.info("study in %s", "postgresql://u:s3cret@h/db")
        log.info("plain %d", 3)
    finally:
        logging.setLogRecordFactory(installed)
        logging.getLogger("trtsweep_test_masking").handlers.clear()
    assert stream.getvalue() == "study in postgresql://u:***@h/db\nplain 3\n"


def test_the_optuna_storage_and_the_mlflow_link_are_masked():
    from hydra_plugins.trtsweep_sweepers._study import masked
    from trtsweep.mlflow_view import ui_link

    assert masked("postgresql://u:s3cret@h/db?sslpassword=s3cret") == "postgresql://u:***@h/db?sslpassword=***"
    for uri in ("https://u:s3cret@mlflow.example", "sqlite:////tmp/m.db?password=s3cret"):
        link = ui_link(uri, "1", "abc")
        assert "s3cret" not in link and "***" in link


def test_a_fatal_error_line_is_masked(capsys):
    from trtsweep.session import fail

    with pytest.raises(SystemExit) as e:
        fail("MLflow at https://u:s3cret@mlflow.example is unavailable; fix: start it")
    assert e.value.code == 2
    assert capsys.readouterr().err == "trtsweep: error: MLflow at https://u:***@mlflow.example is unavailable; " \
                                      "fix: start it\n"


# ---------------------------------------------------------------------------
# 4. docs
_SERVER_CMD = re.compile(r"(?<!install )(?:mlflow (?:server|ui)|optuna-dashboard) [^`\n#]*[^`\n#\s]")


def _doc_commands() -> list[tuple[str, str]]:
    """Every ``mlflow server`` / ``mlflow ui`` / ``optuna-dashboard`` command with arguments in the docs."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "docker" / "README.md"]
    return [(p.name, m[0]) for p in docs for m in _SERVER_CMD.finditer(p.read_text())]


def test_every_documented_server_command_binds_to_localhost():
    cmds = _doc_commands()
    assert any("mlflow" in c for _, c in cmds) and any("optuna-dashboard" in c for _, c in cmds)
    loose = [f"{f}: {c}" for f, c in cmds if "--host 127.0.0.1" not in c]
    assert not loose, "a server command without --host 127.0.0.1:\n" + "\n".join(loose)


def test_the_security_page_covers_shell_paths_masking_auth_and_untrusted_models():
    text = (ROOT / "docs" / "security.md").read_text()
    for needle in ("shell", "../", "***", "basic-auth", "reverse proxy", "untrusted", "tf.saved_model.load",
                   "safe_mode", "127.0.0.1"):
        assert needle in text, needle


@pytest.mark.slow  # MLflow creates its SQLite schema (10-20 s here)
def test_a_parent_run_named_after_the_overrides_gets_no_password(tmp_path):
    """The grid's parent run is named after its overrides (a trial's params and config.yaml artifact:
    tests/integration/test_security_sweep.py)."""
    from mlflow.tracking import MlflowClient

    from trtsweep.config import TrackingConfig
    from trtsweep.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(TrackingConfig(uri=uri, experiment="sec", log_models=False))
    parent = tracker.parent_run("key", "sec: engine=tflite tracking.uri='postgresql://u:s3cret@h/db'")
    run = MlflowClient(tracking_uri=uri).get_run(parent)
    assert run.info.run_name == "sec: engine=tflite tracking.uri='postgresql://u:***@h/db'"
