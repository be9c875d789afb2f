"""Every command in the README and in the docs/ pages is run exactly as printed, by a test here, by another
test module, or by .ci/run; the one GPU command is parsed, and so would be any cluster command (they are in
docs/cluster.md, whose every command tests/test_cluster.py checks). `COVERED` says which: a command of the
README or of a docs/*.md page other than docs/cluster.md that it does not list, or one it lists that no page
has any more, fails the first test. A docs page added later is collected as well.

The default study (`python -m hpo.search`, with or without --data-root; about half an hour here) is run
with one flag added, `--dry-run`: exactly the printed command otherwise, so it resolves the default
preset, fetches or finds the data, loads all three splits and samples and checks both search spaces
— everything it does before Ray starts — and then stops. The smoke study command is run in full.
"""

import importlib.util
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from hpo.screenshot import stop_process
from hpo.search import build_parser as search_parser
from hypermaml.fitting import training_precision
from tests.helpers import files_under
from tests.readme_commands import (
    DOCS,
    README,
    REPO,
    bash_commands,
    command_env,
    documented_pages,
    page_commands,
    run_as_printed,
    scratch_checkout,
)

ZIPS = ["images_background.zip", "images_evaluation.zip"]

# Where the commands are printed. docs/cluster.md's are checked by tests/test_cluster.py
# (test_every_command_in_the_cluster_doc_names_what_exists); every other page's are listed in COVERED.
CLUSTER_DOC = DOCS / "cluster.md"
STUDY_DOC = DOCS / "study.md"  # the study's flags, MLflow, optuna-dashboard
RESULTS_DOC = DOCS / "results.md"  # the training command's results row
PAGES = [page for page in documented_pages() if page != CLUSTER_DOC]

SETUP = "python3.11 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
TESTS = ".venv/bin/python -m pytest -q"
LINT = ".venv/bin/ruff check . && .venv/bin/ruff format --check ."
STUDY_FETCHING = [".venv/bin/python -m hpo.search", "python -m hpo.search"]
STUDY_HERE = [
    ".venv/bin/python -m hpo.search --data-root ../shared/data/omniglot",
    "python -m hpo.search --data-root ../shared/data/omniglot",
]
DRY_RUN = "python -m hpo.search --dry-run --data-root ../shared/data/omniglot"
SMOKE = (
    "python -m hpo.search --preset smoke --data-root ../shared/data/omniglot --tracking-uri sqlite:///$PWD/m.db "
    "--storage-path $PWD/ray --name try1"
)
TRAIN = (
    ".venv/bin/python -m hypermaml.train --algorithm hypermaml --data-root ../shared/data/omniglot --epochs 4 "
    "--steps-per-epoch 25 --meta-batch 8 --hn-hidden 256 --output runs/hypermaml"
)
HELP = ["python -m hpo.search --help", "python -m hypermaml.train --help"]
MLFLOW_UI = ".venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000"
SCREENSHOT = "python -m hpo.screenshot --tracking-uri sqlite:///$PWD/m.db --experiment try1 --out docs"
DASHBOARD_INSTALL = ".venv/bin/pip install -e '.[dashboard]'"
DASHBOARD = ".venv/bin/optuna-dashboard sqlite:///$PWD/ray/try1/optuna.db --host 127.0.0.1 --port 8080"
RERUNS = [
    f".venv/bin/python -m hpo.search --data-root ../shared/data/omniglot --seed {k} --name hvm-s{k}" for k in range(3)
]
ACROSS = ".venv/bin/python -m hpo.across hvm-s0 hvm-s1 hvm-s2"
ACROSS_BARE = "python -m hpo.across"
THROUGHPUT = "python benchmarks/throughput.py --data-root ../shared/data/omniglot --device cuda --task-chunk 0"
# The README's cluster commands (ray, kubectl, ...), checked as docs/cluster.md's are: none today, the README's
# cluster section links docs/cluster.md.
CLUSTER: list[str] = []

COVERED = {
    SETUP: ".ci/run runs it",
    TESTS: ".ci/run runs it; test_the_suite_without_data_stops_with_one_line runs it without data",
    **{c: "test_the_default_study_fetches_omniglot_and_preflights (+ --dry-run)" for c in STUDY_FETCHING},
    **{c: "test_the_default_study_on_the_data_here_preflights (+ --dry-run)" for c in STUDY_HERE},
    DRY_RUN: "test_the_default_study_on_the_data_here_preflights",
    SMOKE: "tests/test_study.py: the module's smoke study",
    TRAIN: "test_the_training_command_gives_the_results_row",
    **{c: "test_help_lists_every_flag" for c in HELP},
    MLFLOW_UI: "test_the_mlflow_ui_command_serves_the_store",
    SCREENSHOT: "tests/test_ui.py: test_the_printed_link_opens_on_the_runs_of_both_algorithms_and_the_verdict (beside the smoke study)",
    DASHBOARD_INSTALL: ".ci/run runs it",
    LINT: ".ci/run runs it",
    DASHBOARD: "tests/test_ui.py: test_optuna_dashboard_serves_the_studys_optuna_storage (beside the smoke study)",
    **{c: "parsed and resolved: test_the_reruns_and_their_comparison" for c in RERUNS},
    ACROSS: "test_the_reruns_and_their_comparison, on studies logged as the reruns would log them",
    ACROSS_BARE: "test_the_reruns_and_their_comparison (no study names: one usage line, exit 2)",
    THROUGHPUT: "parsed: test_cluster_and_gpu_commands_parse (needs a GPU)",
    **{c: "parsed: test_cluster_and_gpu_commands_parse (tests/test_cluster.py's check_command)" for c in CLUSTER},
}


def test_every_readme_command_is_run_or_parsed_by_a_test():
    """The README's and every docs page's commands (docs/cluster.md's: tests/test_cluster.py)."""
    assert {README, STUDY_DOC, RESULTS_DOC} <= set(PAGES) and CLUSTER_DOC.is_file()
    pages = {}  # command -> the pages that print it
    for page in PAGES:
        for command in page_commands(page):
            pages.setdefault(command, []).append(page.relative_to(REPO).as_posix())
    assert {c: p for c, p in pages.items() if c not in COVERED} == {}, "commands no test runs, and their pages"
    assert set(COVERED) - set(pages) == set(), "commands tested here that no page has any more"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_exists():
    """Relative links of the README and the docs pages name files that exist, and headings that exist there."""
    for page in documented_pages():
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^()\s]+)\)", prose):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor:
                headings = re.findall(
                    r"^#+ (.+)$", re.sub(r"```.*?```", "", linked.read_text(), flags=re.DOTALL), flags=re.MULTILINE
                )
                assert anchor in {github_anchor(h) for h in headings}, f"{page.name}: {target}"


def test_ci_runs_the_set_up_and_test_commands_as_printed():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert SETUP in lines and TESTS in lines and DASHBOARD_INSTALL in lines and LINT in lines


@pytest.fixture
def mirror(omniglot_root, serve):
    """A folder URL on 127.0.0.1 serving the test data's zips (our machines have no internet)."""
    return serve(omniglot_root)


def dry_run_of_the_default_study(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["study"]["preset"] == "default" and out["study"]["searches"] == 3 and out["study"]["trials"] == 4
    assert set(out["space_samples"]) == {"maml", "hypermaml"}
    # No published references, so no reference replicates; the replicates train 8 epochs, not 3.
    assert out["compute"]["networks"] == "at most 24 tuning trials and 12 replicates"
    assert out["compute"]["training episodes per network"] == "at most 2592 per trial and 6912 per replicate"
    return out


@pytest.mark.parametrize("command", STUDY_FETCHING)
def test_the_default_study_fetches_omniglot_and_preflights(command, omniglot_root, tmp_path, mirror):
    checkout = scratch_checkout(tmp_path, omniglot_root)
    cache = tmp_path / "fresh-cache"
    env = command_env(HYPERMAML_DATA_ROOT=None, HYPERMAML_CACHE=str(cache), HYPERMAML_DOWNLOAD_URL=mirror)
    proc = run_as_printed(command + " --dry-run", checkout, timeout=300, env=env)
    out = dry_run_of_the_default_study(proc)
    assert out["study"]["data_root"] == ""  # no data root: the fetched copy
    assert proc.stderr.splitlines() == [
        f"fetched Omniglot's images_background.zip and images_evaluation.zip from {mirror} "
        f"into {cache / 'omniglot'} (checked by their contents)"
    ]
    assert files_under(cache / "omniglot") == sorted(ZIPS)
    assert files_under(checkout) == [".venv"]  # a dry run starts nothing: no Ray results, no MLflow store


@pytest.mark.parametrize("command", [*STUDY_HERE, DRY_RUN])
def test_the_default_study_on_the_data_here_preflights(command, omniglot_root, tmp_path):
    checkout = scratch_checkout(tmp_path, omniglot_root)
    proc = run_as_printed(command if "--dry-run" in command else command + " --dry-run", checkout, timeout=300)
    out = dry_run_of_the_default_study(proc)
    assert out["study"]["data_root"] == str(omniglot_root.resolve())
    assert proc.stderr == "" and files_under(checkout) == [".venv"]


def test_the_training_command_gives_the_results_row(omniglot_root, tmp_path):
    checkout = scratch_checkout(tmp_path, omniglot_root)
    proc = run_as_printed(TRAIN, checkout, timeout=1800)  # about a minute on an idle 2-core machine
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["algorithm"] == "hypermaml" and result["test_episodes"] == 600
    assert json.loads((checkout / "runs" / "hypermaml" / "config.json").read_text())["hn_hidden"] == 256
    assert TRAIN in page_commands(RESULTS_DOC)  # printed beside its row
    row = next(
        line
        for line in RESULTS_DOC.read_text().splitlines()
        if line.startswith("| HyperMAML, hidden 256, 3 layers, meta-batch 8, 4×25")
    )
    documented_accuracy = float(row.split("|")[3].split("%")[0])
    print(
        f"docs/results.md {documented_accuracy}%, this run {100 * result['test_acc']:.2f}% ± {100 * result['test_ci95']:.2f}"
    )
    assert abs(100 * result["test_acc"] - documented_accuracy) < 3  # the same seeded run, on another CPU's floats
    assert result["test_ci95"] < 0.02  # 600 test episodes (this also stands in for test_learning's HyperMAML case)
    # The run says what its default precision ("auto") became on this machine: bf16 on a CPU with bf16 instructions.
    assert result["precision"] == training_precision("auto", torch.device("cpu"))


def test_help_lists_every_flag(omniglot_root, tmp_path):
    checkout = scratch_checkout(tmp_path, omniglot_root)
    for command in HELP:
        proc = run_as_printed(command, checkout, timeout=120)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert proc.stdout.startswith(f"usage: {command.removesuffix(' --help')}")
    study_help = run_as_printed(HELP[0], checkout, timeout=120).stdout
    listed = STUDY_DOC.read_text().split("Every flag overrides its preset:")[1].split("\n\n")[0]
    for flag in [*shlex.split(listed.replace("`", " ").replace(",", " ").replace(".", " ")), "--download", "--dry-run"]:
        assert flag in study_help, flag


def test_the_reruns_and_their_comparison(omniglot_root, tmp_path):
    from hpo.search import resolve_spec
    from tests.test_across import write_study

    specs = [resolve_spec(search_parser().parse_args(shlex.split(c)[3:])) for c in RERUNS]
    assert [(s.seed, s.name) for s in specs] == [(k, f"hvm-s{k}") for k in range(3)]
    assert len({json.dumps({k: v for k, v in s.to_dict().items() if k not in ("seed", "name")}) for s in specs}) == 1
    checkout = scratch_checkout(tmp_path, omniglot_root)
    for k, gap in enumerate((0.01, 0.02, 0.04)):  # what the three studies would log (see test_across)
        write_study(
            checkout.parent,
            f"hvm-s{k}",
            k,
            {"maml": 0.80, "hypermaml": 0.80 + gap},
            preset="default",
            tracking_uri=f"sqlite:///{checkout / 'mlflow.db'}",
        )
    proc = run_as_printed(ACROSS, checkout, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert [line.split(" | ")[:2] for line in proc.stdout.splitlines() if line.startswith("| hvm")] == [
        ["| hvm-s0", "0"],
        ["| hvm-s1", "1"],
        ["| hvm-s2", "2"],
    ]
    assert proc.stdout.splitlines()[-1].startswith("inconclusive: hypermaml − maml = +2.33 points")
    bare = run_as_printed(ACROSS_BARE, checkout, timeout=120)
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr == "python -m hpo.across: error: the following arguments are required: NAME\n"


def test_the_mlflow_ui_command_serves_the_store(omniglot_root, tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5000)) == 0:
            pytest.fail("port 5000 is taken on this machine; the `mlflow ui` command of docs/study.md needs it")
    checkout = scratch_checkout(tmp_path, omniglot_root)
    ui = subprocess.Popen(
        ["bash", "-c", MLFLOW_UI],
        cwd=checkout,
        env=command_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(
                    "http://127.0.0.1:5000/api/2.0/mlflow/experiments/search?max_results=10", timeout=5
                ) as r:
                    experiments = json.loads(r.read())["experiments"]
                break
            except OSError:
                assert ui.poll() is None, "mlflow ui exited"
                assert time.time() < deadline, "mlflow ui did not answer within 120 s"
                time.sleep(1)
        assert [e["name"] for e in experiments] == ["Default"]
        assert (checkout / "mlflow.db").is_file()  # the store the command names, in the folder it runs in
    finally:
        stop_process(ui)  # the UI and its workers: the session bash started


def test_the_suite_without_data_stops_with_one_line(tmp_path):
    """The README's test command in a checkout with neither $HYPERMAML_DATA_ROOT nor ../shared."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    shutil.copytree(REPO / "tests", checkout / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, checkout / name)
    proc = run_as_printed(TESTS, checkout, timeout=300, env=command_env(HYPERMAML_DATA_ROOT=None))
    assert proc.returncode == 4  # pytest's usage error: no test ran
    assert proc.stderr.strip().splitlines() == [
        f"ERROR: the tests need the real Omniglot zips, and {tmp_path / 'shared' / 'data' / 'omniglot'} (beside the repo; "
        "$HYPERMAML_DATA_ROOT is unset) has none: set $HYPERMAML_DATA_ROOT to a folder holding images_background.zip and "
        "images_evaluation.zip (`python -m hpo.search` without --data-root fetches them into ~/.cache/hypermaml/omniglot)"
    ]
    assert "passed" not in proc.stdout and "error" not in proc.stdout.lower()


# ---- the cluster commands (and the GPU benchmark): parsed -----------------------------------------------


def test_cluster_and_gpu_commands_parse():
    from tests.test_cluster import CLUSTER_DOC as CHECKED_THERE
    from tests.test_cluster import check_command

    assert CHECKED_THERE == CLUSTER_DOC  # the page whose commands that module checks, not COVERED
    for command in CLUSTER:  # as docs/cluster.md's: against the ray CLI, the manifest, the study's parser, ...
        check_command(command, complete=command in bash_commands(README.read_text()))
    section = README.read_text().split("\n## Run on a cluster\n")[1].split("\n## ")[0]
    assert "](docs/cluster.md)" in section and "](deploy/kuberay-rayjob.yaml)" in section
    assert "```" not in section and len(section.strip().splitlines()) == 3  # the details are in docs/cluster.md

    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    args = throughput.build_parser().parse_args(shlex.split(THROUGHPUT)[2:])
    assert (args.device, args.task_chunk, args.data_root) == ("cuda", 0, "../shared/data/omniglot")
