"""hpo.across: studies written to a real MLflow store by the study's own tracker, read back and
compared with the study as the unit."""

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from hpo import across, provenance
from hpo.records import Finalist, ReplicateRecord, StudyComparison
from hpo.spec import resolve
from hpo.stats import compare_search_finalists, compare_searches, compare_seeds
from hpo.tracking import ROLE_TAG, STUDY_TAG, TRIAL_TAG, StudyTracker

EPISODES = 50


def write_study(tmp_path, name, seed, levels, finish=True, preset="smoke", commit="a" * 40, dirty="false", **overrides):
    """A finished study as `hpo.search` logs it: the study run with its spec, 3 replicate runs per
    algorithm with their test accuracy, the final ones tagged, and the summary with the verdict. It
    ran `commit` (as a Ray job's launcher passes it)."""
    spec = resolve(preset, {"name": name, "seed": seed, **overrides}, cwd=tmp_path)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(provenance.COMMIT_ENV, commit)
        env.setenv(provenance.DIRTY_ENV, dirty)
        tracker = StudyTracker(spec)
    tracker.start_study()
    client = MlflowClient(spec.tracking_uri)
    finalists = {}
    for algorithm, level in levels.items():
        records = []
        for k, shift in enumerate((-0.01, 0.0, 0.01)):
            accs = np.full(EPISODES, level + shift)
            trial_id = f"{name}_{algorithm}_{k}"
            records.append(
                ReplicateRecord(
                    algorithm=algorithm,
                    trial_id=trial_id,
                    candidate_rank=1,
                    source_trial="t",
                    seed=1000 + k,
                    tuned={},
                    val_curve=[level],
                    best_val_acc=level,
                    test_acc=float(accs.mean()),
                    test_ci95=0.0,
                    adapt_ms_per_task=1.0,
                    parameters=1,
                    train_seconds=1.0,
                    episode_accs=accs,
                )
            )
            run = client.create_run(
                tracker.ledger.experiment_id,
                tags={STUDY_TAG: name, ROLE_TAG: "replicate", TRIAL_TAG: trial_id, "algorithm": algorithm},
            )
            client.log_metric(run.info.run_id, "test_acc", 100 * float(accs.mean()))
        finalists[algorithm] = Finalist(algorithm, 1, "t", {}, records)
    tracker.mark_finalists(finalists)
    if finish:
        matrices = {a: finalists[a].episode_matrix() for a in ("maml", "hypermaml")}
        seed_level = compare_seeds("maml", matrices["maml"], "hypermaml", matrices["hypermaml"], unit="config")
        comparison = StudyComparison(
            compare_search_finalists("maml", [matrices["maml"]], "hypermaml", [matrices["hypermaml"]]), {0: seed_level}
        )
        summary, plots = tmp_path / f"{name}.md", tmp_path / f"{name}-plots"
        summary.write_text(comparison.headline.verdict.sentence)
        plots.mkdir()
        (plots / "x.txt").write_text("x")
        tracker.log_summary(comparison, [], [summary, plots], [], {})
    return spec.tracking_uri


def run(capsys, *argv):
    capsys.readouterr()  # what writing the studies printed (MLflow creating its tables) is not ours
    code = across.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_three_reruns_are_compared_with_the_study_as_the_unit(tmp_path, capsys):
    # hypermaml leads by 1, 2 and 4 points in the three studies
    gaps = {"a": (0, 0.01), "b": (1, 0.02), "c": (2, 0.04)}
    for name, (seed, gap) in gaps.items():
        uri = write_study(tmp_path, name, seed, {"maml": 0.80, "hypermaml": 0.80 + gap})
    code, out, err = run(capsys, "a", "b", "c", "--tracking-uri", uri)
    assert (code, err) == (0, "")
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2] in "abc"]
    cells = [row.split(" | ") for row in rows]  # study, seed, commit, maml, hypermaml, effect, verdict
    assert [[c[1], c[3], c[4], c[5]] for c in cells] == [
        ["0", "80.00%", "81.00%", "+1.00"],
        ["1", "80.00%", "82.00%", "+2.00"],
        ["2", "80.00%", "84.00%", "+4.00"],
    ]
    # each study: seeds 1 point apart around the gap, so only the 4-point gap is decided within its study
    assert [c[6] for c in cells] == ["config_inconclusive |", "config_inconclusive |", "config_hypermaml_better |"]
    # mean 7/3, sd sqrt(7/3): a t interval with 2 degrees of freedom
    half = stats.t.ppf(0.975, 2) * np.sqrt(7 / 3 / 3)
    low, high = 7 / 3 - half, 7 / 3 + half
    assert f"(95% CI {low:+.2f} to {high:+.2f}".replace("-", "−") in out
    assert out.splitlines()[-1].startswith("inconclusive: hypermaml − maml = +2.33 points")
    assert "3 studies (searcher seeds) as the unit" in out and "studies would be needed" in out


def test_a_clear_winner_over_studies(tmp_path, capsys):
    for name, seed, gap in (("a", 0, 0.050), ("b", 1, 0.052), ("c", 2, 0.048)):
        uri = write_study(tmp_path, name, seed, {"maml": 0.85, "hypermaml": 0.85 - gap})
    code, out, _ = run(capsys, "a", "b", "c", "--tracking-uri", uri)
    assert code == 0
    assert out.splitlines()[-1].startswith("maml is better than hypermaml by 5.00 points (95% CI 4.50 to 5.50")
    assert [line.split(" | ")[5] for line in out.splitlines() if line.startswith("| ") and line[2] in "abc"] == [
        "−5.00",
        "−5.20",
        "−4.80",
    ]  # the sentence's minus sign


@pytest.mark.parametrize(
    "second, message",
    [
        ({"name": "b", "seed": 0}, "studies 'a' and 'b' both used --seed 0: the same search twice is not a rerun"),
        (
            {"name": "b", "seed": 1, "trials": 5},
            "studies 'a' and 'b' differ in trials (4 vs 5): not reruns of one procedure",
        ),
        (
            {"name": "b", "seed": 1, "finish": False},
            "study 'b' has no verdict: it has not finished, or had too few replicates",
        ),
    ],
)
def test_studies_that_are_not_reruns_of_one_finished_procedure_are_refused(tmp_path, capsys, second, message):
    uri = write_study(tmp_path, "a", 0, {"maml": 0.8, "hypermaml": 0.82})
    write_study(tmp_path, second.pop("name"), second.pop("seed"), {"maml": 0.8, "hypermaml": 0.82}, **second)
    code, out, err = run(capsys, "a", "b", "--tracking-uri", uri)
    assert (code, out) == (2, "")
    assert err.startswith(f"python -m hpo.across: error: {message}") and err.count("\n") == 1


def test_a_missing_store_or_study_is_one_line_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "none.db"
    code, _, err = run(capsys, "a", "b", "--tracking-uri", f"sqlite:///{missing}")
    assert code == 2 and err == f"python -m hpo.across: error: no MLflow store at sqlite:///{missing}\n"
    assert not missing.exists()
    uri = write_study(tmp_path, "a", 0, {"maml": 0.8, "hypermaml": 0.82})
    assert (
        run(capsys, "a", "zz", "--tracking-uri", uri)[2]
        == "python -m hpo.across: error: no study named 'zz' in this MLflow store\n"
    )
    assert run(capsys, "a", "a", "--tracking-uri", uri)[2].endswith(
        "give at least two different studies: the unit here is the study\n"
    )


def test_compare_searches_needs_two_studies_and_matches_scipy():
    with pytest.raises(ValueError, match="at least 2 studies"):
        compare_searches("maml", "hypermaml", [1.0])
    effects = [0.11, 5.29, 6.37, -5.74, -0.59]
    result = compare_searches("maml", "hypermaml", effects)
    interval = stats.ttest_1samp(effects, 0).confidence_interval(0.95)
    assert (result.verdict.ci_low, result.verdict.ci_high) == pytest.approx((interval.low, interval.high))
    assert result.verdict.kind == "inconclusive" and result.studies_needed > 5
    assert compare_searches("maml", "hypermaml", [0.1, -0.1, 0.05, -0.05]).verdict.kind == "equivalent"


def test_studies_of_different_or_uncommitted_code_are_compared_with_a_warning(tmp_path, capsys):
    write_study(tmp_path, "a", 0, {"maml": 0.80, "hypermaml": 0.81}, commit="1" * 40)
    write_study(tmp_path, "b", 1, {"maml": 0.80, "hypermaml": 0.82}, commit="2" * 40, dirty="true")
    uri = write_study(tmp_path, "c", 2, {"maml": 0.80, "hypermaml": 0.83}, commit="2" * 40)
    code, out, err = run(capsys, "a", "b", "c", "--tracking-uri", uri)
    assert code == 0 and "| a | 0 | 1111111 |" in out and "| b | 1 | 2222222 |" in out
    assert err.splitlines() == [
        "warning: the studies ran different commits (1111111, 2222222); a change of the search spaces or the training "
        "between them is part of what this interval averages over",
        "warning: b ran with uncommitted changes, or from a tree whose state is unknown: their code is not fully named "
        "by their commit",
    ]
