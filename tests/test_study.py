"""`python -m hpo.search` end to end on real Omniglot: real Ray, a real MLflow SQLite store and a real
Optuna storage. The smoke study runs once for the session, as the README prints it (conftest.py); its
store is then inspected."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from hpo.spec import PRESETS
from hypermaml import evaluate, load_learner
from hypermaml.fitting import training_precision
from tests.readme_commands import run_as_printed

from .studies import REPO, SMOKE, SMOKE_DB, SMOKE_NAME, run_study, runs, smoke_runs, study_cmd

SMOKE_PRESET = PRESETS["smoke"]


def test_smoke_study_prints_the_verdict_and_writes_the_summary(smoke):
    tmp, proc = smoke
    summary = (tmp / "ray" / SMOKE_NAME / "summary.md").read_text()
    verdict_line = summary.splitlines()[2]
    assert verdict_line.startswith("**") and "95% CI" in verdict_line and "training seeds" in verdict_line
    assert verdict_line.strip("*") in proc.stdout.splitlines()  # the printed verdict is the stored one


def test_stdout_is_short_and_ends_with_the_verdict_the_summary_and_the_link(smoke):
    tmp, proc = smoke
    assert len(proc.stdout.encode()) < 5000, proc.stdout
    assert "│" not in proc.stdout and "Trial status" not in proc.stdout  # no Ray status tables
    client, _ = smoke_runs(tmp, "study")
    experiment_id = client.get_experiment_by_name(SMOKE_NAME).experiment_id
    lines = proc.stdout.splitlines()
    verdict = (tmp / "ray" / SMOKE_NAME / "summary.md").read_text().splitlines()[2].strip("*")
    link = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=hpo-runs"
    assert lines[-4:] == [
        verdict,
        f"Summary: {tmp / 'ray' / SMOKE_NAME / 'summary.md'}",
        f"MLflow: {link}",
        f"  (serve the store first: mlflow ui --backend-store-uri sqlite:///{tmp / SMOKE_DB} --host 127.0.0.1 --port 5000)",
    ]
    assert lines[1] == f"MLflow: {link}"  # also as soon as the study starts
    # one line per trial event: every tuning trial's start and end, every epoch it reported
    _, trials = smoke_runs(tmp, "trial")
    for run in trials:
        trial_id = run.data.tags["ray.trial_id"]
        epochs = len(client.get_metric_history(run.info.run_id, "val_acc"))
        assert sum(line.startswith(f"  {trial_id} started") for line in lines) == 1
        assert sum(line.startswith(f"  {trial_id} epoch ") for line in lines) == epochs
        ending = run.data.tags["mlflow.note.content"].split("; ")[-1]  # as its run description says
        assert sum(bool(re.fullmatch(rf"  {trial_id} {re.escape(ending)} \[[1-4]/4\]", line)) for line in lines) == 1


def test_mlflow_has_the_study_run_its_trials_replicates_and_summary(smoke):
    tmp, _ = smoke
    client, parents = smoke_runs(tmp, "study")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["preset"] == "smoke" and parent.data.params["trials"] == "4"
    assert parent.data.tags["verdict.kind"] in (
        "config_hypermaml_better",
        "config_maml_better",
        "config_equivalent",
        "config_inconclusive",
    )
    assert parent.data.tags["verdict"] in parent.data.tags["mlflow.note.content"]
    _, trials = smoke_runs(tmp, "trial")
    by_algorithm = {a: [r for r in trials if r.data.tags["algorithm"] == a] for a in ("maml", "hypermaml")}
    assert {a: len(r) for a, r in by_algorithm.items()} == {"maml": 4, "hypermaml": 4}
    for run in trials:
        tags, params = run.data.tags, run.data.params
        assert (
            tags["hpo.study"] == SMOKE_NAME and "mlflow.parentRunId" not in tags
        )  # listed, not folded in the study run
        assert {"dataset", "way", "shot", "ray.trial_id", "node", "mlflow.source.git.commit", "hpo.git_dirty"} <= set(
            tags
        )
        assert tags["dataset"] == "omniglot" and tags["way"] == "5" and tags["shot"] == "1"
        assert params["algorithm"] == tags["algorithm"] and params["epochs"] == "3"  # the full config as params
        assert params["seed"] == "0"  # tuning trains with the study seed
        # the sampled meta-batch is the one trained with, and an epoch is the preset's episodes for all
        assert int(params["steps_per_epoch"]) == max(1, SMOKE_PRESET["episodes_per_epoch"] // int(params["meta_batch"]))
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        # accuracies in points: Ray's reported fractions times 100
        progress = tmp / "ray" / SMOKE_NAME / tags["algorithm"] / f"trial_{tags['ray.trial_id']}" / "progress.csv"
        reported = list(csv.DictReader(io.StringIO(progress.read_text())))
        assert [m.value for m in history] == pytest.approx([100 * float(row["val_acc"]) for row in reported], abs=1e-4)
        best = max(m.value for m in history)
        for key in ("train_loss", "train_acc", "val_ci95", "episodes_per_s"):
            assert len(client.get_metric_history(run.info.run_id, key)) == len(history)
        assert run.info.status == "FINISHED"  # stopping early is the search working, not a failure
        note = tags["mlflow.note.content"]  # the run's one-line description
        if "stopped_by" in tags:
            assert tags["stopped_by"] == "ASHA" and int(tags["stopped_at_epoch"]) == len(history) < 3
            assert note.endswith(f"stopped by ASHA at epoch {len(history)}, best val {best:.1f}%")
        else:
            assert len(history) == 3
            assert note.endswith(f"ran all 3 epochs, best val {best:.1f}%")
        assert ("published reference; " in note) == ("hpo.reference" in tags)
    # Early stopping follows its rule (hpo.rounds): a search's first round is never stopped; a trial of the
    # second is stopped at the first rung (epochs 1, 2) where its best validation accuracy is below the
    # median of the first round's there. (MAML: no warm-up exempts its results from being judged.)
    maml = by_algorithm["maml"]
    best_by = {r.info.run_id: [m.value for m in client.get_metric_history(r.info.run_id, "best_val_acc")] for r in maml}
    first, second = ([r for r in maml if r.data.params["hpo_round"] == str(k)] for k in (0, 1))
    assert len(first) == len(second) == 2 and not any("stopped_by" in r.data.tags for r in first)
    for run in second:
        mine = best_by[run.info.run_id]
        stop = next(
            (e for e in (1, 2) if mine[e - 1] < np.percentile([best_by[r.info.run_id][e - 1] for r in first], 50)), None
        )
        assert run.data.tags.get("stopped_at_epoch") == (str(stop) if stop else None), (mine, stop)
    for algorithm, mine in by_algorithm.items():
        best_val = {
            r.info.run_id: max(m.value for m in client.get_metric_history(r.info.run_id, "val_acc")) for r in mine
        }
        described = [r for r in mine if r.data.tags["mlflow.note.content"].startswith(f"best {algorithm} trial; ")]
        assert len(described) == 1 and best_val[described[0].info.run_id] == max(best_val.values())
    assert len({r.data.params["meta_batch"] for r in trials}) > 1  # tuned, not pinned to the study default
    assert "hn_hidden" in by_algorithm["hypermaml"][0].data.params
    assert "inner_lr" in by_algorithm["maml"][0].data.params
    assert all(
        "aggregation" not in r.data.params or r.data.params["aggregation"] == "mean" for r in by_algorithm["hypermaml"]
    )  # not tuned at one shot

    _, summaries = smoke_runs(tmp, "summary")
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary.data.tags["mlflow.parentRunId"] == parent.info.run_id
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"summary.md", "summary.csv", "spec.json", "plots"} <= artifacts
    plots = {Path(a.path).name for a in client.list_artifacts(summary.info.run_id, "plots")}
    assert {"validation_curves.png", "anytime.png", "seed_results.png", "expected_best.png"} <= plots
    for algorithm in ("maml", "hypermaml"):  # interactive, or a note saying why not
        if f"{algorithm}_parallel_coordinate.html" in plots:
            html = Path(client.download_artifacts(summary.info.run_id, f"plots/{algorithm}_parallel_coordinate.html"))
            text = html.read_text()
            assert 'src="https://cdn.plot.ly' not in text and len(text) > 1_000_000  # plotly.js inside: opens offline
            assert "best val acc (%)" in text  # the objective in points
        else:
            assert f"interactive parallel coordinate for {algorithm}: " in summary.data.tags["notes"]
    # the study's numbers live on the study run, each algorithm's on its replicate runs: no per-algorithm
    # metrics of a single run, which the UI would chart as lone bars
    assert set(parent.data.metrics) == {
        "effect_points",
        "ci_low_points",
        "ci_high_points",
        "p_value",
        "p_improvement",
        "expected_best_val_acc.maml",
        "expected_best_val_acc.hypermaml",
    }
    assert (parent.data.tags["verdict.unit"], parent.data.tags["verdict.searches"]) == ("config", "1")
    assert parent.data.tags["verdict.kind"].startswith("config_")
    # Dodge et al.'s curve: at n = 1 the mean of the 4 trials' best validation accuracies, rising to at most the best
    for algorithm in ("maml", "hypermaml"):
        curve = client.get_metric_history(parent.info.run_id, f"expected_best_val_acc.{algorithm}")
        bests = [r.data.metrics["best_val_acc"] for r in by_algorithm[algorithm]]
        assert [m.step for m in curve] == [1, 2, 3, 4]
        assert curve[0].value == pytest.approx(np.mean(bests), abs=1e-3)
        assert all(a.value <= b.value + 1e-9 for a, b in zip(curve, curve[1:])) and curve[-1].value <= max(bests) + 1e-9
    assert summary.data.metrics == {}


def test_the_experiment_description_is_the_verdict_and_the_link(smoke):
    tmp, proc = smoke
    client, parents = smoke_runs(tmp, "study")
    experiment = client.get_experiment_by_name(SMOKE_NAME)
    note = experiment.tags["mlflow.note.content"]
    assert note.startswith(parents[0].data.tags["verdict"] + "\n")  # the experiments list shows it first
    link = next(line for line in proc.stdout.splitlines() if line.startswith("MLflow: ")).removeprefix("MLflow: ")
    assert link in note


def test_each_algorithm_runs_its_published_reference_first(smoke):
    tmp, _ = smoke
    _, trials = smoke_runs(tmp, "trial")
    for algorithm, source in (("maml", "Finn et al."), ("hypermaml", "HyperMAML reference implementation")):
        references = [r for r in trials if r.data.tags["algorithm"] == algorithm and "hpo.reference" in r.data.tags]
        assert len(references) == 1 and references[0].data.tags["hpo.reference"].startswith(source)
        params = references[0].data.params
        first = optuna.load_study(
            study_name=f"{SMOKE_NAME}-{algorithm}", storage=f"sqlite:///{tmp / 'ray' / SMOKE_NAME / 'optuna.db'}"
        ).trials[0]
        assert {k: str(v) for k, v in first.params.items()} == {k: params[k] for k in first.params}  # proposed first
        if algorithm == "maml":
            assert (params["inner_steps"], params["inner_lr"], params["inner_params"], params["meta_batch"]) == (
                "1",
                "0.4",
                "all",
                "32",
            )
        else:
            assert (params["hn_hidden"], params["outer_lr"], params["warmup"]) == ("512", "0.01", "True")


def test_no_warmup_trial_is_stopped_before_its_hypernetwork_is_trained(smoke):
    _, trials = smoke_runs(smoke[0], "trial")
    warmups = [r for r in trials if r.data.params.get("warmup") == "True"]
    assert warmups  # the reference trial at least
    for run in warmups:
        switch_ends = int(run.data.params["warmup_epochs"]) + int(run.data.params["switch_epochs"]) + 1
        if "stopped_at_epoch" in run.data.tags:
            assert int(run.data.tags["stopped_at_epoch"]) >= switch_ends


def test_replicates_retrain_with_fresh_seeds_and_the_final_one_is_chosen_on_validation(smoke):
    tmp, _ = smoke
    client, replicates = smoke_runs(tmp, "replicate")
    rows = list(csv.DictReader(io.StringIO((tmp / "ray" / SMOKE_NAME / "summary.csv").read_text())))
    assert len(rows) == len(replicates)
    by_id = {r.data.tags["ray.trial_id"]: r for r in replicates}
    for algorithm in ("maml", "hypermaml"):
        mine = [r for r in replicates if r.data.tags["algorithm"] == algorithm]
        final = [r for r in mine if r.data.tags.get("hpo.final") == "true"]
        assert len(final) == 2 and len({r.data.tags["seed"] for r in final}) == 2  # smoke: 2 fresh seeds
        assert all(r.data.tags["seed"] != "0" and r.data.params["seed"] == r.data.tags["seed"] for r in mine)
        assert all(r.info.status == "FINISHED" and 0 <= r.data.metrics["test_acc"] <= 100 for r in mine)
        for run in mine:  # described by its result (in points), its source, and whether it is final
            tags, metrics = run.data.tags, run.data.metrics
            assert tags["mlflow.note.content"] == (
                (f"final {algorithm}; " if run.data.tags.get("hpo.final") == "true" else "")
                + f"test {metrics['test_acc']:.1f}% ± {metrics['test_ci95']:.1f}, best val {metrics['best_val_acc']:.1f}%; "
                f"candidate #{tags['hpo.candidate_rank']} (tuning trial {tags['hpo.source_trial']})"
            )
        assert all({"test_ci95", "adapt_ms_per_task", "val_acc"} <= set(r.data.metrics) for r in mine)
        # Each run says the precision it trained in: the default "auto", as it resolves on this CPU, for all.
        bf16 = float(training_precision("auto", torch.device("cpu")) == "bf16")
        assert all(r.data.metrics["bf16_autocast"] == bf16 for r in mine)
        assert all(len(client.get_metric_history(r.info.run_id, "val_acc")) == SMOKE_PRESET["epochs"] for r in mine)
        # The final candidate has the best mean validation accuracy over its seeds, and the reference
        # configuration is always among the candidates: tuning cannot end below it.
        mean_val = {}
        for row in (r for r in rows if r["algorithm"] == algorithm):
            mean_val.setdefault(row["candidate_rank"], []).append(float(row["best_val_acc"]))
        final_rank = final[0].data.tags["hpo.candidate_rank"]
        assert max(mean_val, key=lambda rank: sum(mean_val[rank]) / len(mean_val[rank])) == final_rank
        reference_trial = next(
            r
            for r in smoke_runs(tmp, "trial")[1]
            if r.data.tags["algorithm"] == algorithm and "hpo.reference" in r.data.tags
        )
        assert reference_trial.data.tags["ray.trial_id"] in {r.data.tags["hpo.source_trial"] for r in mine}
        reference_rank = next(
            r.data.tags["hpo.candidate_rank"]
            for r in mine
            if r.data.tags["hpo.source_trial"] == reference_trial.data.tags["ray.trial_id"]
        )
        assert sum(mean_val[final_rank]) / len(mean_val[final_rank]) >= sum(mean_val[reference_rank]) / len(
            mean_val[reference_rank]
        )
    for row in rows:  # the summary table holds the runs' own numbers
        run = next(
            r
            for r in replicates
            if r.data.tags["seed"] == row["seed"]
            and r.data.tags["algorithm"] == row["algorithm"]
            and r.data.tags["hpo.candidate_rank"] == row["candidate_rank"]
        )
        assert 100 * float(row["test_acc"]) == pytest.approx(run.data.metrics["test_acc"], abs=1e-4)  # points in MLflow
    assert len(by_id) == len(replicates)


def test_replicates_test_their_own_best_checkpoint_on_identical_episodes(smoke, omniglot_root):
    tmp, _ = smoke
    _, replicates = smoke_runs(tmp, "replicate")
    tested = {}
    for run in (r for r in replicates if r.data.tags.get("hpo.final") == "true"):
        folder = next(
            (tmp / "ray" / SMOKE_NAME / "replicates").glob(f"trial_{run.data.tags['ray.trial_id']}/checkpoint_*")
        )
        learner = load_learner(folder / "best.pt")
        result = evaluate(learner, "test", SMOKE_PRESET["test_episodes"], seed=0)  # the study's test set, eval seed 0
        stored = np.load(folder / "test_episode_accs.npy")
        assert np.array_equal(result.per_episode.numpy(), stored)
        assert 100 * result.accuracy == pytest.approx(run.data.metrics["test_acc"], abs=1e-4)
        tested[run.data.tags["algorithm"]] = learner.run_config.train
    # the same episodes for both: same split, shape, episode count and eval seed
    shape = {a: (t.way, t.shot, t.query, t.test_episodes, t.eval_seed) for a, t in tested.items()}
    assert shape["maml"] == shape["hypermaml"] == (5, 1, 5, SMOKE_PRESET["test_episodes"], 0)


def test_rerunning_a_name_with_other_settings_exits_2_and_writes_nothing(smoke, omniglot_root):
    tmp, _ = smoke
    before = {p: p.stat().st_mtime_ns for p in tmp.rglob("*")}
    proc = run_as_printed(SMOKE + " --trials 5", tmp, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "trials 4 -> 5" in proc.stderr and "--resume" in proc.stderr and "--name" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp.rglob("*")} == before


def test_the_same_seed_gives_the_same_study_under_load(omniglot_root, tmp_path):
    """A smoke study run twice with the same flags and seed (another folder and store each time), the second
    time with two CPU-bound processes beside it at normal priority: the same trials, proposals, early stops,
    episodes and test accuracies, to the digit (the same CPU and threads). Three trials per search proposed
    one at a time, so that ASHA judges the later ones against the earlier ones at its rung (epoch 1 of 2).
    MAML's space is wide in its learning rates, so that ASHA stops one of them (the built-in spaces' first
    trial, the published reference, learns slowest in a smoke study and stops nothing after it)."""
    space = tmp_path / "maml-wide.yaml"
    space.write_text(
        "params:\n"
        "  outer_lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}\n"
        "  inner_lr: {type: float, low: 1.0e-3, high: 1.0, log: true}\n"
        "constants:\n"
        "  inner_steps: 1\n"
    )
    flags = (
        "--trials",
        "3",
        "--epochs",
        "2",
        "--search-batch",
        "1",
        "--reference-margin",
        "0",
        "--space",
        f"maml={space}",
    )
    idle, loaded = tmp_path / "idle", tmp_path / "loaded"
    idle.mkdir()
    loaded.mkdir()
    first = run_study(study_cmd(omniglot_root, idle, "same", *flags))
    assert first.returncode == 0, first.stderr[-3000:]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(2)]
    try:
        again = run_study(study_cmd(omniglot_root, loaded, "same", *flags))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert again.returncode == 0, again.stderr[-3000:]

    def trials(folder):
        client, runs_ = runs(folder, "same", "trial")
        return {
            (r.data.tags["algorithm"], r.data.params["hpo_number"]): (
                {k: v for k, v in r.data.params.items() if k not in ("data_root", "cache_dir")},
                [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_acc")],
                r.data.tags.get("stopped_at_epoch"),
                [m.value for m in client.get_metric_history(r.info.run_id, "train_episodes")],
            )
            for r in runs_
        }

    def replicates(folder):
        _, runs_ = runs(folder, "same", "replicate")
        return {
            (r.data.tags["algorithm"], r.data.tags["hpo.candidate_rank"], r.data.tags["seed"]): (
                r.data.metrics["test_acc"],
                r.data.metrics["train_episodes"],
            )
            for r in runs_
        }

    before = trials(idle)
    assert len(before) == 6 and trials(loaded) == before
    assert any(stop for _, _, stop, _ in before.values()), "ASHA stopped no trial: no decision was tested"
    assert len(replicates(idle)) == 4 and replicates(loaded) == replicates(idle)
    verdicts = [[p.data.tags["verdict"] for p in runs(folder, "same", "study")[1]] for folder in (idle, loaded)]
    assert verdicts[0] == verdicts[1] and len(verdicts[0]) == 1


def test_killed_driver_resumes_without_losing_or_duplicating_runs(omniglot_root, tmp_path):
    cmd = study_cmd(omniglot_root, tmp_path, "killed", "--trials", "2", "--epochs", "2", "--reference-margin", "0")
    driver = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    maml_dir = tmp_path / "ray" / "killed" / "maml"
    deadline = time.time() + 600
    try:
        # Kill once the study is under way: at least two trials have written a checkpoint.
        while time.time() < deadline and len(list(maml_dir.glob("trial_*/checkpoint_*"))) < 2:
            assert driver.poll() is None, "the study ended before it could be killed"
            time.sleep(0.5)
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        _kill_group(driver.pid)
    assert driver.returncode == -signal.SIGKILL
    assert not (tmp_path / "ray" / "killed" / "summary.md").exists()

    resumed = run_study(cmd)  # re-running the same study name continues it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, trials = runs(tmp_path, "killed", "trial")
    counts = {a: sum(r.data.tags["algorithm"] == a for r in trials) for a in ("maml", "hypermaml")}
    assert counts == {"maml": 2, "hypermaml": 2}  # as many as an uninterrupted study
    assert len({r.data.tags["ray.trial_id"] for r in trials}) == 4
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)), "an epoch was lost or logged twice"
        assert run.info.status == "FINISHED"
    _, parents = runs(tmp_path, "killed", "study")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    _, summaries = runs(tmp_path, "killed", "summary")
    assert len(summaries) == 1


def test_ctrl_c_ends_the_study_and_its_running_trials_killed_not_failed(omniglot_root, tmp_path):
    cmd = study_cmd(omniglot_root, tmp_path, "interrupted", "--scheduler", "none")
    driver = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    maml_dir = tmp_path / "ray" / "interrupted" / "maml"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and not list(maml_dir.glob("trial_*/checkpoint_*")):
            assert driver.poll() is None, "the study ended before it could be interrupted"
            time.sleep(0.5)
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, _ = driver.communicate(timeout=120)
    finally:
        _kill_group(driver.pid)
    assert driver.returncode == 130
    assert (
        out.splitlines()[-1]
        == "interrupted: interrupted stopped; run the same command again (or --resume) to continue it"
    )
    _, parents = runs(tmp_path, "interrupted", "study")
    assert [p.info.status for p in parents] == ["KILLED"] and "error" not in parents[0].data.tags
    _, trials = runs(tmp_path, "interrupted", "trial")
    statuses = [r.info.status for r in trials]
    assert "KILLED" in statuses and set(statuses) <= {"KILLED", "FINISHED"}, statuses  # none FAILED, none left RUNNING
    assert not (tmp_path / "ray" / "interrupted" / "summary.md").exists()


def test_a_crashed_study_ends_failed_with_its_reason(omniglot_root, tmp_path):
    space = tmp_path / "diverging.yaml"
    space.write_text("params:\n  inner_lr: {type: categorical, choices: [1.0e36]}\nconstants:\n  inner_steps: 1\n")
    cmd = study_cmd(
        omniglot_root,
        tmp_path,
        "crashed",
        "--algorithms",
        "maml",
        "--trials",
        "1",
        "--epochs",
        "1",
        "--scheduler",
        "none",
        "--space",
        f"maml={space}",
        "--max-failures",
        "0",
    )
    proc = run_study(cmd)
    assert proc.returncode == 1  # a crash, not a user error (2) or an interruption (130)
    _, parents = runs(tmp_path, "crashed", "study")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert parents[0].data.tags["error"].startswith("RuntimeError: no tuning trial reported a validation accuracy")


def test_a_diverging_trial_fails_and_the_study_completes(omniglot_root, tmp_path):
    space = tmp_path / "diverging.yaml"
    space.write_text(
        "params:\n"
        "  inner_lr: {type: categorical, choices: [1.0e36, 0.4]}\n"
        "constants:\n"
        "  inner_steps: 3\n"
        "  inner_params: head\n"
    )
    cmd = study_cmd(
        omniglot_root,
        tmp_path,
        "failing",
        "--algorithms",
        "maml",
        "--trials",
        "4",
        "--epochs",
        "2",
        "--searcher",
        "random",
        "--scheduler",
        "none",
        "--space",
        f"maml={space}",
        "--max-failures",
        "1",
    )
    proc = run_study(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, trials = runs(tmp_path, "failing", "trial")
    assert len(trials) == 4
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert failed and all(float(r.data.params["inner_lr"]) == 1e36 for r in failed)
    assert all("diverged" in r.data.tags["error"] for r in failed)
    assert all(r.data.tags.get("retries") == "1" for r in failed)  # retried once from its checkpoint
    assert all(r.info.status == "FINISHED" for r in trials if float(r.data.params["inner_lr"]) == 0.4)
    _, summaries = runs(tmp_path, "failing", "summary")
    assert len(summaries) == 1


def test_unreachable_mlflow_warns_and_the_study_still_runs(omniglot_root, tmp_path):
    cmd = study_cmd(
        omniglot_root,
        tmp_path,
        "offline",
        "--algorithms",
        "hypermaml",
        "--trials",
        "1",
        "--epochs",
        "1",
        "--scheduler",
        "none",
        "--tracking-uri",
        "http://127.0.0.1:9",
        "--verbose",
    )
    proc = run_study(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: MLflow at http://127.0.0.1:9 is unavailable" in proc.stderr
    assert (tmp_path / "ray" / "offline" / "summary.md").is_file()  # results kept in Ray's storage
    assert f"MLflow: unavailable; the results are in {tmp_path / 'ray' / 'offline'}" in proc.stdout.splitlines()
    assert "Trial status" in proc.stdout and "│" in proc.stdout  # --verbose: Ray Tune's status tables too


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_training_time_cap_ends_every_network_early_as_its_full_budget(omniglot_root, tmp_path):
    # A cap below one epoch's time: every network, tuning trial or replicate, trains exactly one of its 3 epochs.
    cmd = study_cmd(
        omniglot_root,
        tmp_path,
        "capped",
        "--algorithms",
        "hypermaml",
        "--trials",
        "2",
        "--epochs",
        "3",
        "--scheduler",
        "none",
        "--max-train-seconds",
        "1e-9",
    )
    proc = run_study(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ended = [
        line for line in proc.stdout.splitlines() if "reached its training-time cap after epoch 1, best val" in line
    ]
    assert len(ended) == 2
    client, trials = runs(tmp_path, "capped", "trial")
    assert [(r.info.status, r.data.tags["stopped_by"], r.data.tags["stopped_at_epoch"]) for r in trials] == [
        ("FINISHED", "time_cap", "1")
    ] * 2
    # Optuna learns from them as complete: their value is what their whole (compute) budget reached.
    study = optuna.load_study(
        study_name="capped-hypermaml", storage=f"sqlite:///{tmp_path / 'ray' / 'capped' / 'optuna.db'}"
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(t.value for t in study.trials) == pytest.approx(
        sorted(r.data.metrics["best_val_acc"] / 100 for r in trials), abs=1e-6
    )
    # The replicates stop at the same cap and are tested after that epoch.
    _, replicates = runs(tmp_path, "capped", "replicate")
    assert len(replicates) == 4  # the top trial and the reference (smoke: always retrained) x 2 seeds
    for run in replicates:
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 1
        assert 0 < run.data.metrics["test_acc"] <= 100
    summary = (tmp_path / "ray" / "capped" / "summary.md").read_text()
    assert "| completed / training-time cap / early-stopped / time budget / failed | 0 / 2 / 0 / 0 / 0 |" in summary
    assert "training time per network: at most 1e-09 s" in summary


def test_a_study_grows_by_searches_and_runs_only_the_new_ones(omniglot_root, tmp_path):
    """Two searches per algorithm, then `--resume --searches 3`: exactly one more search per algorithm
    runs (its trials and replicates), nothing already run is repeated, and the verdict is recomputed
    over three searches."""
    cmd = study_cmd(
        omniglot_root,
        tmp_path,
        "grown",
        "--searches",
        "2",
        "--trials",
        "1",
        "--epochs",
        "1",
        "--scheduler",
        "none",
        "--no-references",
        "--replicate-epochs",
        "2",
    )
    first = run_study(cmd)
    assert first.returncode == 0, first.stderr[-3000:]
    client, trials = runs(tmp_path, "grown", "trial")
    # --no-references: every trial is drawn from the space, none is the published configuration.
    assert all("hpo.reference" not in r.data.tags for r in trials) and "published reference" not in first.stdout
    _, replicates = runs(tmp_path, "grown", "replicate")
    # --replicate-epochs 2: the replicates train 2 epochs (the trials 1), every outer step of both.
    assert replicates and all(r.data.params["epochs"] == "2" for r in replicates)
    for run in replicates:
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
        steps, batch = int(run.data.params["steps_per_epoch"]), int(run.data.params["meta_batch"])
        assert run.data.metrics["train_episodes"] == 2 * steps * batch
    before = {r.info.run_id for r in trials + replicates}
    assert sorted((r.data.tags["algorithm"], r.data.tags["hpo.search"]) for r in trials) == sorted(
        (a, s) for a in ("maml", "hypermaml") for s in ("0", "1")
    )
    study = runs(tmp_path, "grown", "study")[1][0]
    assert (study.data.tags["verdict.unit"], study.data.tags["verdict.searches"]) == ("search", "2")
    effect_before = study.data.metrics["effect_points"]

    grown = run_study([*cmd, "--resume", "--searches", "3"])
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert "tune maml search 2: 1 trial of" in grown.stdout and "tune hypermaml search 2: 1 trial of" in grown.stdout
    started = [line for line in grown.stdout.splitlines() if re.search(r" started( \(published reference\))?$", line)]
    _, trials = runs(tmp_path, "grown", "trial")
    _, replicates = runs(tmp_path, "grown", "replicate")
    new = [r for r in trials + replicates if r.info.run_id not in before]
    assert before <= {r.info.run_id for r in trials + replicates}  # nothing redone, nothing lost
    assert {r.data.tags["hpo.search"] for r in new} == {"2"} and len(started) == len(new)  # only search 2 ran
    assert sum(r.data.tags["hpo.role"] == "trial" for r in new) == 2  # its 1 trial per algorithm
    study = runs(tmp_path, "grown", "study")[1][0]
    assert (study.data.tags["verdict.unit"], study.data.tags["verdict.searches"]) == ("search", "3")
    assert re.search(r"\b3 (maml|hypermaml) vs 3 (maml|hypermaml) searches as the unit", study.data.tags["verdict"])
    assert study.data.metrics["effect_points"] != effect_before
    assert json.loads((tmp_path / "ray" / "grown" / "search_blocks.json").read_text()) == [[0, 2], [2, 3]]
    # Each search's own Optuna study holds only its own trials.
    storage = f"sqlite:///{tmp_path / 'ray' / 'grown' / 'optuna.db'}"
    for algorithm in ("maml", "hypermaml"):
        for name in (f"grown-{algorithm}", f"grown-{algorithm}-search1", f"grown-{algorithm}-search2"):
            assert len(optuna.load_study(study_name=name, storage=storage).trials) == 1, name
    # Growing only: fewer searches than the study has is refused in one line.
    shrink = run_study([*cmd, "--resume", "--searches", "1"])
    assert shrink.returncode == 2 and "a study can only grow" in shrink.stderr and shrink.stderr.count("\n") == 1
