"""What a researcher sees after the smoke study (conftest.py): the printed MLflow link opened by a real
headless Chromium (Debian's, driven by Playwright) on a real `mlflow server`, and a real optuna-dashboard
serving the study's Optuna storage. Screenshots are kept in $HPO_TEST_ARTIFACTS (default test-artifacts/)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpo.screenshot import stop_process
from hpo.tracking import UI

from .readme_commands import command_env, run_as_printed
from .studies import REPO, SMOKE_NAME, smoke_runs
from .test_readme import DASHBOARD, SCREENSHOT

BIN = Path(sys.executable).parent
ARTIFACTS = Path(os.environ.get("HPO_TEST_ARTIFACTS") or REPO / "test-artifacts")


def test_the_printed_link_opens_on_the_runs_of_both_algorithms_and_the_verdict(smoke):
    """The README's screenshot command, as printed beside the smoke study, opens the printed link; what
    each page showed is in the pages file it writes beside the screenshots."""
    checkout, study = smoke
    proc = run_as_printed(SCREENSHOT, checkout, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [checkout / line for line in proc.stdout.splitlines()]  # relative to --out, as given
    assert (
        sorted(p.name for p in printed)
        == sorted(p.name for p in (checkout / "docs").iterdir())
        == ["mlflow-charts.png", "mlflow-experiments.png", "mlflow-final.png", "mlflow-pages.json", "mlflow-runs.png"]
    )
    shots = {
        name: SimpleNamespace(**shot)
        for name, shot in json.loads((checkout / "docs" / "mlflow-pages.json").read_text()).items()
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, shot in shots.items():
        path = checkout / shot.screenshot
        assert path.stat().st_size > 20_000  # a rendered page, not a blank one
        shutil.copy(path, ARTIFACTS / f"smoke-{name}.png")

    link = next(line for line in study.stdout.splitlines() if line.startswith("MLflow: ")).removeprefix("MLflow: ")
    _, trials = smoke_runs(checkout, "trial")
    _, replicates = smoke_runs(checkout, "replicate")
    verdict = smoke_runs(checkout, "study")[1][0].data.tags["verdict"]
    page = shots["runs"]
    assert page.link == link.replace(UI, page.server)  # the printed link, on the screenshot's server
    assert "/runs?" in page.url and "workflowType=machine_learning" in page.url  # not sent to another view
    assert "No data available" not in page.text and "Detect Issues" not in page.text  # not the GenAI overview
    assert "hpo: trials and replicates" in page.text  # the study's saved view
    # what else a first visit shows (the screenshots close the Assistant)
    assert "You're viewing a shared view" in page.text and "MLflow Assistant" in page.text
    for algorithm in ("maml", "hypermaml"):  # tuning trials and replicates of both, without a click
        for role in (trials, replicates):
            assert any(r.info.run_name in page.text for r in role if r.data.tags["algorithm"] == algorithm), page.text
    for run in trials + replicates:  # all of them, with their descriptions (the UI shows 50 characters)
        assert run.info.run_name in page.text and run.data.tags["mlflow.note.content"][:50] in page.text
    # newest first: the replicates, then the trials
    assert max(page.text.index(r.info.run_name) for r in replicates) < min(
        page.text.index(r.info.run_name) for r in trials
    )
    assert "test_acc" in page.text and "best_val_acc" in page.text
    assert verdict in page.text  # the experiment's description, above the table
    assert verdict in shots["experiments"].text  # and in the experiments list

    # The head-to-head view: a group per algorithm whose row is the mean over the final configuration's seeds.
    final = shots["final"]
    averages = [float(value) for value in re.findall(r"(-?[\d.]+) \(average\)", final.text)]
    for algorithm in ("maml", "hypermaml"):
        seeds = [
            r for r in replicates if r.data.tags["algorithm"] == algorithm and r.data.tags.get("hpo.final") == "true"
        ]
        assert f"Group: {algorithm}" in final.text and all(r.info.run_name in final.text for r in seeds)
        for key in ("test_acc", "test_ci95", "best_val_acc", "adapt_ms_per_task"):
            mean = sum(r.data.metrics[key] for r in seeds) / len(seeds)
            assert any(abs(value - mean) < 1e-6 for value in averages), (key, mean, averages)
    charted = shots["charts"].charted  # every run in the charts, not MLflow's default first 10
    assert set(charted["best_val_acc"]) == {r.info.run_name for r in trials + replicates}, charted


def test_optuna_dashboard_serves_the_studys_optuna_storage(smoke):
    """The README's optuna-dashboard command, as printed, beside the smoke study."""
    checkout, _ = smoke
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8080)) == 0:
            pytest.fail("port 8080 is taken on this machine; the README's optuna-dashboard command needs it")
    log = checkout / "optuna-dashboard.log"
    with open(log, "w") as out:
        dashboard = subprocess.Popen(
            ["bash", "-c", DASHBOARD],
            cwd=checkout,
            env=command_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        studies = _get_json("http://127.0.0.1:8080/api/studies", dashboard, log)["study_summaries"]
        assert sorted(s["study_name"] for s in studies) == [f"{SMOKE_NAME}-hypermaml", f"{SMOKE_NAME}-maml"]
        _, trials = smoke_runs(checkout, "trial")
        for study in studies:
            algorithm = study["study_name"].removeprefix(f"{SMOKE_NAME}-")
            detail = _get_json(f"http://127.0.0.1:8080/api/studies/{study['study_id']}", dashboard, log)
            states = sorted(t["state"] for t in detail["trials"])
            mine = [r for r in trials if r.data.tags["algorithm"] == algorithm]
            # the searcher's view of the same trials: those ASHA stopped are pruned, the others complete
            stopped = sum("stopped_by" in r.data.tags for r in mine)
            assert states == sorted(["Pruned"] * stopped + ["Complete"] * (len(mine) - stopped))
    finally:
        stop_process(dashboard)


def _get_json(url: str, server: subprocess.Popen, log: Path, timeout: float = 60):
    deadline = time.time() + timeout
    while True:
        assert server.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except OSError:
            assert time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
