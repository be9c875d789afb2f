"""`python -m hpo.search` end to end on real Omniglot: real Ray, a real MLflow SQLite store and a real
Optuna storage. The smoke study runs once for the module; its store is then inspected."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def study_cmd(root, tmp, name, *extra):
    return [sys.executable, "-m", "hpo.search", "--preset", "smoke", "--data-root", str(root),
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--storage-path", str(tmp / "ray"), "--name", name, *extra]


def run_study(cmd, timeout=900):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def runs(tmp, name, role):
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id], filter_string=f"tags.`hpo.role` = '{role}'", max_results=1000)


@pytest.fixture(scope="module")
def smoke(omniglot_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    proc = run_study(study_cmd(omniglot_root, tmp, "smoke"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def test_smoke_study_prints_the_head_to_head(smoke):
    tmp, proc = smoke
    assert "| maml" in proc.stdout and "| hypermaml" in proc.stdout
    summary = (tmp / "ray" / "smoke" / "summary.md").read_text()
    assert "trials per algorithm" in summary and "Wilcoxon" in summary


def test_mlflow_has_parent_nested_trials_and_summary(smoke):
    tmp, _ = smoke
    client, parents = runs(tmp, "smoke", "study")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["preset"] == "smoke" and parent.data.params["trials"] == "4"
    _, trials = runs(tmp, "smoke", "trial")
    by_algorithm = {a: [r for r in trials if r.data.tags["algorithm"] == a] for a in ("maml", "hypermaml")}
    assert {a: len(r) for a, r in by_algorithm.items()} == {"maml": 4, "hypermaml": 4}
    for run in trials:
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"dataset", "way", "shot", "ray.trial_id", "node", "git_commit"} <= set(tags)
        assert tags["dataset"] == "omniglot" and tags["way"] == "5" and tags["shot"] == "1"
        assert params["algorithm"] == tags["algorithm"] and params["epochs"] == "3"  # the full config as params
        # the sampled meta-batch is the one trained with, and an epoch is the same 24 episodes for all
        assert int(params["steps_per_epoch"]) == max(1, 24 // int(params["meta_batch"]))
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert all(0 <= m.value <= 1 for m in history)
        for key in ("train_loss", "train_acc", "val_ci95", "episodes_per_s"):
            assert len(client.get_metric_history(run.info.run_id, key)) == len(history)
        if run.info.status == "FINISHED":
            assert len(history) == 3
        else:
            assert run.info.status == "KILLED" and tags["stopped_by"] == "ASHA" and len(history) < 3
    assert any(r.data.tags.get("stopped_by") == "ASHA" for r in trials), "ASHA stopped no trial"
    assert len({r.data.params["meta_batch"] for r in trials}) > 1  # tuned, not pinned to the study default
    assert "hn_hidden" in by_algorithm["hypermaml"][0].data.params
    assert "inner_lr" in by_algorithm["maml"][0].data.params

    _, summaries = runs(tmp, "smoke", "summary")
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert 0 <= summary.data.metrics["maml.test_acc"] <= 1 and 0 <= summary.data.metrics["hypermaml.test_acc"] <= 1
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"summary.md", "summary.csv", "spec.json", "plots", "best_checkpoints"} <= artifacts
    plots = {Path(a.path).name for a in client.list_artifacts(summary.info.run_id, "plots")}
    assert {"validation_curves.png", "best_vs_best.png"} <= plots
    assert any(p.endswith("param_importances.png") for p in plots) and any(p.endswith("parallel_coordinate.png") for p in plots)
    ckpts = {Path(a.path).name for a in client.list_artifacts(summary.info.run_id, "best_checkpoints")}
    assert ckpts == {"maml_best.pt", "hypermaml_best.pt"}


def test_optuna_storage_holds_the_trials_with_values(smoke):
    tmp, _ = smoke
    storage = f"sqlite:///{tmp / 'ray' / 'smoke' / 'optuna.db'}"
    for algorithm in ("maml", "hypermaml"):
        study = optuna.load_study(study_name=f"smoke-{algorithm}", storage=storage)
        assert len(study.trials) == 4
        finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert finished and all(0 <= t.value <= 1 for t in finished)
        assert all(t.params for t in study.trials)


def test_killed_driver_resumes_without_losing_or_duplicating_runs(omniglot_root, tmp_path):
    cmd = study_cmd(omniglot_root, tmp_path, "killed")
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
    assert counts == {"maml": 4, "hypermaml": 4}  # as many as an uninterrupted study
    assert len({r.data.tags["ray.trial_id"] for r in trials}) == 8
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)), "an epoch was lost or logged twice"
        assert run.info.status in ("FINISHED", "KILLED")
    _, parents = runs(tmp_path, "killed", "study")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    _, summaries = runs(tmp_path, "killed", "summary")
    assert len(summaries) == 1


def test_a_diverging_trial_fails_and_the_study_completes(omniglot_root, tmp_path):
    space = tmp_path / "diverging.yaml"
    space.write_text(
        "params:\n"
        "  inner_lr: {type: categorical, choices: [1.0e36, 0.4]}\n"
        "constants:\n"
        "  inner_steps: 3\n"
        "  inner_params: head\n"
    )
    cmd = study_cmd(omniglot_root, tmp_path, "failing", "--algorithms", "maml", "--trials", "4", "--searcher", "random",
                    "--scheduler", "none", "--space", f"maml={space}", "--max-failures", "1")
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
    cmd = study_cmd(omniglot_root, tmp_path, "offline", "--algorithms", "hypermaml", "--trials", "2", "--epochs", "1",
                    "--scheduler", "none", "--tracking-uri", "http://127.0.0.1:9")
    proc = run_study(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: MLflow at http://127.0.0.1:9 is unavailable" in proc.stderr
    assert (tmp_path / "ray" / "offline" / "summary.md").is_file()  # results kept in Ray's storage


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
