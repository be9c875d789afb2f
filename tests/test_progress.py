"""Trials that Tune's time budget stops: Tune tells on_trial_complete nothing of them, yet the terminal
must show how each ended and its MLflow run must end FINISHED like a trial ASHA stopped. A real Tune
experiment (a trainable that only sleeps and reports) with the study's two callbacks, on a real MLflow
SQLite store."""

import re
import time

import ray
from mlflow.tracking import MlflowClient
from ray import tune

from hpo.progress import ProgressLines, ending, stopped_by
from hpo.records import TrialEnd
from hpo.spec import StudySpec
from hpo.tracking import StudyTracker

BUDGET_S, EPOCHS = 6.0, 100  # no trial can finish its epochs within the budget


def test_trials_the_time_budget_stops_end_in_the_terminal_and_in_mlflow(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")  # Tune's engine that stays silent at verbose=0, as in a study
    spec = StudySpec(
        name="budget",
        algorithms=("maml",),
        trials=2,
        epochs=EPOCHS,
        time_budget_s=BUDGET_S,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        storage_path=str(tmp_path / "ray"),
    )
    tracker = StudyTracker(spec)
    tracker.start_study()

    def trainable(config):
        for epoch in range(1, EPOCHS + 1):
            time.sleep(1.0)
            tune.report({"epoch": epoch, "val_acc": epoch / 1000, "best_val_acc": epoch / 1000})

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"x": tune.grid_search([1, 2])},
            tune_config=tune.TuneConfig(time_budget_s=BUDGET_S, max_concurrent_trials=2),
            run_config=tune.RunConfig(
                name="maml",
                storage_path=spec.study_dir,
                verbose=0,
                callbacks=[
                    tracker.trial_callback("maml", EPOCHS, None),
                    ProgressLines("trial", 2, EPOCHS, "asha", BUDGET_S),
                ],
            ),
        ).fit()
    finally:
        ray.shutdown()

    lines = capsys.readouterr().out.splitlines()
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name("budget")
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.role` = 'trial'")
    assert len(trials) == 2
    for run in trials:
        epochs = len(client.get_metric_history(run.info.run_id, "val_acc"))
        assert 0 < epochs < EPOCHS
        ending = f"stopped by the time budget at epoch {epochs}, best val {epochs / 10:.1f}%"
        assert run.info.status == "FINISHED"
        assert run.data.tags["stopped_by"] == "time_budget" and run.data.tags["stopped_at_epoch"] == str(epochs)
        assert run.data.tags["mlflow.note.content"] == ending
        trial_id = run.data.tags["ray.trial_id"]
        assert [line for line in lines if re.match(rf"  {trial_id} (started|stopped)", line)] == [
            f"  {trial_id} started",
            f"  {trial_id} {ending}",
        ]
        assert sum(line.startswith(f"  {trial_id} epoch ") for line in lines) == epochs
    assert not any("│" in line for line in lines)  # no status tables


def test_each_end_of_a_trial_has_its_words_and_its_stopped_by_tag():
    assert ending(3, 3, 0.5, TrialEnd.COMPLETED) == "ran all 3 epochs, best val 50.0%"
    assert ending(2, 3, 0.5, TrialEnd.TIME_CAP) == "reached its training-time cap after epoch 2, best val 50.0%"
    assert ending(1, 3, 0.255, TrialEnd.EARLY_STOPPED) == "stopped by ASHA at epoch 1, best val 25.5%"
    assert (
        ending(1, 3, None, TrialEnd.EARLY_STOPPED, "fifo")
        == "stopped by the scheduler at epoch 1, no validation result"
    )
    assert ending(2, 3, 0.5, TrialEnd.TIME_BUDGET) == "stopped by the time budget at epoch 2, best val 50.0%"
    assert [stopped_by(end, "asha") for end in (TrialEnd.TIME_CAP, TrialEnd.EARLY_STOPPED, TrialEnd.TIME_BUDGET)] == [
        "time_cap",
        "ASHA",
        "time_budget",
    ]
    assert stopped_by(TrialEnd.EARLY_STOPPED, "fifo") == "stopped"
