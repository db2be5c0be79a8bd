"""The report of a real small sweep (TF, LiteRT, ONNX Runtime × FP32, INT8 × batch 1, 4; ONNX Runtime
trials made to fail, TF INT8 skipped): report.html has every trial, the speed-ups computed from the metrics
logged to MLflow, the Pareto set and the confirmed recommendation; the same report is made from MLflow;
the page opens in headless Chromium without a console error."""

from __future__ import annotations

import html as htmllib
import io
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

GRID = ["-m", "engine=tf,tflite,onnx", "precision=fp32,int8", "batch_size=1,4"]


@pytest.fixture(scope="module")
def done(module_sweep):
    res = module_sweep(*GRID, env={"TRTSWEEP_TEST_FAULT": "raise@engine=onnx"})
    assert res.returncode == 0, res.stderr[-3000:]
    parents, children = module_sweep.runs()
    assert len(parents) == 1 and len(children) == 12
    sweep_dir = module_sweep.results_csv().parent
    return SimpleNamespace(res=res, run=module_sweep, dir=sweep_dir, parent=parents[0], children=children,
                           html=(sweep_dir / "report.html").read_text())


def trials_table(page: str) -> pd.DataFrame:
    return pd.read_html(io.StringIO(page), attrs={"id": "T_trials"}, converters={"trial": str})[0].set_index("trial")


def _key(c) -> str:
    return c.data.tags["trtsweep.trial_key"]


def test_the_sweep_writes_its_report_and_logs_it_to_the_parent_run(done):
    assert f"report: {done.dir.relative_to(done.run.cwd) / 'report.html'}" in done.res.stdout
    assert (done.dir / "report.md").read_text().startswith("# trtsweep report")
    logged = {a.path for a in done.run.client().list_artifacts(done.parent.info.run_id)}
    assert {"report.html", "report.md", "results.csv"} <= logged


def test_every_trial_with_the_speedup_computed_from_the_logged_metrics(done):
    table = trials_table(done.html)
    assert sorted(table.index) == sorted(_key(c) for c in done.children)
    tf = {c.data.params["batch_size"]: c.data.metrics["throughput_ips"] for c in done.children
          if c.data.params["engine"] == "tf" and c.data.params["precision"] == "fp32"}
    assert set(tf) == {"1", "4"}
    for c in done.children:
        row = table.loc[_key(c)]
        assert row.status == c.data.tags["status"]
        if c.data.tags["status"] == "ok":
            expected = c.data.metrics["throughput_ips"] / tf[c.data.params["batch_size"]]
            assert row["speed-up vs TF FP32"] == f"{expected:.2f}×", (c.data.params, expected)
        else:  # failed (onnx) or skipped (tf int8): nothing measured
            assert row["speed-up vs TF FP32"] == "–" and isinstance(row.reason, str) and row.reason


def test_the_pareto_set_is_what_no_other_trial_beats(done):
    pts = {_key(c): (c.data.metrics["accuracy_drop"], c.data.metrics["throughput_ips"]) for c in done.children
           if c.data.tags["status"] in ("ok", "accuracy_violation")}
    assert len(pts) == 6
    front = {k for k, (d, t) in pts.items()
             if not any(d2 <= d and t2 >= t and (d2, t2) != (d, t) for d2, t2 in pts.values())}
    table = trials_table(done.html)
    assert {k for k, m in table.marks.fillna("").items() if "Pareto" in m} == front
    pareto = pd.read_html(io.StringIO(done.html), attrs={"class": "pareto"}, converters={"trial": str})[0]
    assert set(pareto.trial) == front


def test_the_recommendation_is_the_confirmed_winner_with_its_command(done):
    winners = [c for c in done.children if c.data.tags.get("best") == "true"]
    assert sorted(c.data.params["batch_size"] for c in winners) == ["1", "4"]
    for c in winners:
        p = c.data.params
        assert c.data.tags["status"] == "ok"
        card = done.html[done.html.index(f'data-trial="{_key(c)}"'):]
        card = card[:card.index("</pre>")]
        assert f"{c.data.metrics['confirm_speedup_vs_tf_fp32']:.2f}× TF FP32 (timed in the same rounds)" in card
        command = htmllib.unescape(card[card.index('<pre class="command">') + 21:])
        assert command.startswith(f"python sweep.py model=digits_cnn engine={p['engine']} precision={p['precision']} "
                                  f"batch_size={p['batch_size']} threads={p['threads']}")
        assert "measure.repeats=2" in command and "cache_dir" not in command  # the sweep's own settings


def test_failed_and_skipped_trials_are_listed_with_their_reasons(done):
    listed = done.html[done.html.index('<ul class="reasons not-measured">'):]
    listed = listed[:listed.index("</ul>")]
    missing = [c for c in done.children if c.data.tags["status"] in ("failed", "skipped")]
    assert len(missing) == 6 and listed.count("<li>") == 6
    for c in missing:
        assert htmllib.escape(c.data.tags["reason"], quote=False) in listed


def test_the_report_of_the_mlflow_experiment_has_the_same_table(done, tmp_path):
    from trtsweep.cli import main

    assert main(["report", "trtsweep/digits_cnn", "--out", str(tmp_path), "--no-log",
                 "--tracking-uri", f"sqlite:///{done.run.db}"]) == 0
    from_mlflow = trials_table((tmp_path / "report.html").read_text())
    pd.testing.assert_frame_equal(from_mlflow.sort_index(), trials_table(done.html).sort_index())


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium driven by selenium, or a skip saying what is missing (before the sweep runs)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no headless Chromium here: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=opts)  # this chromedriver: nothing downloaded
    yield chrome
    chrome.quit()


def test_the_page_opens_in_headless_chromium_without_console_errors(chromium, done, tmp_path):
    chromium.get((done.dir / "report.html").as_uri())
    assert chromium.title.startswith("trtsweep report")
    images = chromium.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.src.slice(0, 22)])")
    assert len(images) == 4 and all(ok and width > 300 and src == "data:image/png;base64," for ok, width, src in images)
    fetched = chromium.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched == []  # nothing loaded from anywhere
    height = chromium.execute_script("return document.documentElement.scrollHeight")
    chromium.set_window_size(1400, min(height + 50, 8000))
    shot = tmp_path / "report.png"  # look at it: the page must be readable
    assert chromium.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
    logs = chromium.get_log("browser")
    assert [e for e in logs if e["level"] in ("SEVERE", "WARNING")] == [], logs
