"""hpo.rounds: searches whose proposals and early stops depend on no timing, driven directly (no Ray)."""

from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from hpo.records import NUMBER_KEY, ROUND_KEY, SEARCH_KEY
from hpo.rounds import RoundHalving, RoundSearch

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(trial: optuna.Trial) -> dict:
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_int("width", 8, 64)
    return {"epochs": 3}  # a constant the space returns


def searcher(searches=1, trials=6, batch=2, seed=0) -> RoundSearch:
    studies = [
        optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed + k, n_startup_trials=2))
        for k in range(searches)
    ]
    return RoundSearch(
        studies,
        [space] * searches,
        trials=trials,
        batch=batch,
        metric="acc",
        mode="max",
        full_epochs=3,
        first_points=[[{"lr": 0.01, "width": 32}]] * searches,
    )


def value(config: dict) -> float:
    """A deterministic result of a configuration."""
    return 1.0 - abs(config["lr"] - 0.02) - abs(config["width"] - 40) / 100


def run(search: RoundSearch, order=lambda ids: ids) -> list[dict]:
    """Drive the searcher as Tune does: ask until it has nothing, end the live trials in `order`, repeat."""
    proposed, live, count = [], [], 0
    while True:
        while (config := search.suggest(f"t{count}")) not in (None, Searcher.FINISHED):
            proposed.append(config)
            live.append((f"t{count}", config))
            count += 1
        if config == Searcher.FINISHED or not live:
            return proposed
        for trial_id, config in order(live):
            search.on_trial_result(trial_id, {"acc": value(config), "training_iteration": 3})
            search.on_trial_complete(trial_id, {"acc": value(config), "epoch": 3})
        live = []


def test_a_search_proposes_whole_rounds_with_the_sampled_values_and_its_place():
    search = searcher()
    first = [search.suggest("a"), search.suggest("b")]
    assert search.suggest("c") is None  # the round's trials have not ended: nothing more yet
    assert first[0] == {
        "lr": 0.01,
        "width": 32,
        "epochs": 3,
        SEARCH_KEY: 0,
        NUMBER_KEY: 0,
        ROUND_KEY: 0,
    }  # the reference first
    assert set(first[1]) == {"lr", "width", "epochs", SEARCH_KEY, NUMBER_KEY, ROUND_KEY} and first[1][NUMBER_KEY] == 1
    search.on_trial_complete("a", {"acc": 0.5, "epoch": 3})
    assert search.suggest("c") is None  # one of the round's trials is still running
    search.on_trial_complete("b", {"acc": 0.6, "epoch": 3})
    assert search.suggest("c")[ROUND_KEY] == 1
    proposed = run(searcher())
    assert [c[ROUND_KEY] for c in proposed] == [0, 0, 1, 1, 2, 2] and [c[NUMBER_KEY] for c in proposed] == list(
        range(6)
    )


def test_proposals_do_not_depend_on_the_order_trials_end_in():
    in_order = run(searcher())
    reversed_ = run(searcher(), order=lambda live: list(reversed(live)))
    assert in_order == reversed_
    assert len({(c["lr"], c["width"]) for c in in_order}) == 6  # and they are not all the same point


def test_searches_share_nothing():
    together = run(searcher(searches=3))
    for k in range(3):
        alone = run(searcher(searches=1, seed=k))
        mine = [c for c in together if c[SEARCH_KEY] == k]
        assert [{**c, SEARCH_KEY: 0} for c in mine] == alone


def test_a_stopped_trial_is_pruned_and_a_full_one_complete():
    search = searcher(trials=2)
    search.suggest("a"), search.suggest("b")
    search.on_trial_result("a", {"acc": 0.3, "training_iteration": 1})
    search.on_trial_complete("a", {"acc": 0.3, "epoch": 1})  # stopped after epoch 1 of 3
    search.on_trial_complete("b", {"acc": 0.7, "epoch": 3})
    states = [t.state for t in search.studies[0].trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE]
    assert search.studies[0].trials[0].intermediate_values == {1: 0.3}


def trial(trial_id, search=0, round_index=0):
    return SimpleNamespace(trial_id=trial_id, config={SEARCH_KEY: search, ROUND_KEY: round_index})


def halving() -> RoundHalving:
    return RoundHalving(max_t=5, grace_period=1, reduction_factor=2, metric="acc", mode="max")


def test_a_trial_is_judged_against_the_earlier_rounds_of_its_own_search_only():
    scheduler = halving()
    assert scheduler.milestones == [1, 2, 4]
    result = lambda acc, epoch=1: {"acc": acc, "training_iteration": epoch}  # noqa: E731
    # Round 0 is never stopped, however it compares with its round-mates.
    assert scheduler.on_trial_result(None, trial("a"), result(0.9)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, trial("b"), result(0.1)) == TrialScheduler.CONTINUE
    # Round 1 against round 0's values at the rung (median 0.5): below stops, above goes on.
    assert scheduler.on_trial_result(None, trial("c", round_index=1), result(0.4)) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, trial("d", round_index=1), result(0.6)) == TrialScheduler.CONTINUE
    # Another search's trials are not comparators: its first round goes on at any value.
    assert scheduler.on_trial_result(None, trial("e", search=1), result(0.0)) == TrialScheduler.CONTINUE
    # A hypernetwork still in its warm-up is not judged, and is judged at the next rung it reaches.
    assert (
        scheduler.on_trial_result(None, trial("f", round_index=1), {**result(0.0), "hn_weight": 0.5})
        == TrialScheduler.CONTINUE
    )
    assert (
        scheduler.on_trial_result(None, trial("f", round_index=1), result(0.0, epoch=2)) == TrialScheduler.CONTINUE
    )  # no rung-2 values yet
    assert scheduler.on_trial_result(None, trial("a"), result(0.95, epoch=2)) == TrialScheduler.CONTINUE


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]])
def test_decisions_within_a_round_do_not_depend_on_the_order_its_trials_report_in(order):
    earlier = [("r0a", 0.2), ("r0b", 0.8)]
    current = [("r1a", 0.3), ("r1b", 0.9), ("r1c", 0.5), ("r1d", 0.1)]
    scheduler = halving()
    for trial_id, acc in earlier:
        scheduler.on_trial_result(None, trial(trial_id), {"acc": acc, "training_iteration": 1})
    decisions = {}
    for index in order:
        trial_id, acc = current[index]
        decisions[trial_id] = scheduler.on_trial_result(
            None, trial(trial_id, round_index=1), {"acc": acc, "training_iteration": 1}
        )
    assert decisions == {
        "r1a": TrialScheduler.STOP,
        "r1b": TrialScheduler.CONTINUE,
        "r1c": TrialScheduler.CONTINUE,
        "r1d": TrialScheduler.STOP,
    }


def test_searches_take_turns_so_they_run_side_by_side():
    search = searcher(searches=3)
    assert [search.suggest(f"t{i}")[SEARCH_KEY] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert search.suggest("t6") is None  # every search's first round is out
