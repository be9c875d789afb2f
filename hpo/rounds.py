"""Searches whose every decision is independent of timing: proposals in rounds, early stopping
judged against earlier rounds only.

A study runs one or more independent searches per algorithm. Each search proposes its trials in
rounds of `batch` trials, all asked of its own Optuna study at once, and asks for the next round only
when every trial of the current one has ended. So what a search proposes depends only on the
results of its earlier rounds, never on which of its running trials happened to finish first, nor on
how many trials run at once or on which machine. Searches share nothing: each has its own Optuna
study, sampler seed and trials.

The scheduler (`RoundHalving`) is asynchronous successive halving (ASHA's rungs and cutoff: a trial
reaching a rung below the (1 - 1/reduction_factor) quantile of the values recorded there is stopped)
with one change: a trial is compared only with the trials of *earlier rounds of its own search*,
which have all ended before its round was proposed. Ray's ASHA compares with whichever trials
reported first, so a rerun of the same study could stop other trials. The price: the trials of a
search's first round are never stopped early, and a round's trials do not judge one another.

HyperMAML's validation uses the pure hypernetwork, which a MAML warm-up has not trained yet, so a
result whose hypernetwork weight is below 1 is not judged: the trial is judged at the first rung it
reaches after its switch, with the accuracy it has then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from .records import NUMBER_KEY, ROUND_KEY, SEARCH_KEY, TrialEnd, trial_end


class RoundSearch(Searcher):
    """Several independent Optuna searches, each proposing its trials in rounds (module docstring).

    `studies[k]` is search k's Optuna study (its sampler seeded for that search), `spaces[k]` its
    define-by-run function giving a trial's full config, `trials` the trials of each search, and
    `first_points[k]` configurations enqueued first in search k (the published reference).

    Optuna learns only from comparable values: a trial stopped early is PRUNED (its per-epoch values
    stay as intermediate values, which is how TPE ranks pruned trials), and only trials that ran their
    whole budget are COMPLETE.
    """

    def __init__(
        self,
        studies: list[optuna.Study],
        spaces: list[Callable[[optuna.Trial], dict[str, Any]]],
        trials: int,
        batch: int,
        metric: str,
        mode: str,
        full_epochs: int,
        first_points: list[list[dict]] | None = None,
        first_search: int = 0,
    ):
        super().__init__(metric=metric, mode=mode)
        self.first_search = first_search  # the study-wide index of studies[0] (a grown study's new block)
        self.studies, self.spaces, self.trials, self.batch, self.full_epochs = (
            studies,
            spaces,
            trials,
            batch,
            full_epochs,
        )
        for study, points in zip(studies, first_points or [[] for _ in studies]):
            if not study.trials:  # a fresh study; a restored one has them already
                for point in points:
                    study.enqueue_trial(point)
        self.proposed = [0] * len(studies)  # trials proposed per search
        self.queued: list[list[tuple[optuna.Trial, dict]]] = [[] for _ in studies]  # asked, not yet handed out
        self.live: list[set[str]] = [set() for _ in studies]  # handed-out trials of the current round, not ended
        self.ot_trials: dict[str, tuple[int, optuna.Trial]] = {}  # Tune trial id -> (search, Optuna trial)
        self.ended: set[str] = set()
        self.turn = 0  # the search whose turn it is to propose

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is ours (define-by-run); Tune's metric and mode are the same as ours

    def suggest(self, trial_id: str) -> dict | None:
        # The searches take turns (the next one after the last that proposed), so with a few free slots
        # every search has a trial running: side by side, not one after the other. The turns change only
        # what runs when, never what a search proposes.
        count = len(self.studies)
        for k in [(self.turn + i) % count for i in range(count)]:
            if not self.queued[k] and not self.live[k] and self.proposed[k] < self.trials:
                self._open_round(k)
            if self.queued[k]:
                ot_trial, config = self.queued[k].pop(0)
                self.live[k].add(trial_id)
                self.ot_trials[trial_id] = (k, ot_trial)
                self.turn = (k + 1) % count
                return config
        if all(n >= self.trials for n in self.proposed) and not any(self.queued):
            return Searcher.FINISHED
        return None  # every search waits for its round to end

    def _open_round(self, k: int) -> None:
        """Ask search k's Optuna study for its whole next round at once: the round's proposals all come
        from the same history, whatever order its trials later run and end in."""
        count = min(self.batch, self.trials - self.proposed[k])
        round_index = self.proposed[k] // self.batch
        for _ in range(count):
            ot_trial = self.studies[k].ask()
            # The sampled values, then what the define-by-run function returns (constants and the study's
            # settings it did not sample), then the trial's place.
            returned = self.spaces[k](ot_trial)
            config = {
                **ot_trial.params,
                **returned,
                SEARCH_KEY: self.first_search + k,
                NUMBER_KEY: ot_trial.number,
                ROUND_KEY: round_index,
            }
            self.queued[k].append((ot_trial, config))
        self.proposed[k] += count

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.ended or trial_id not in self.ot_trials:
            return
        _, ot_trial = self.ot_trials[trial_id]
        try:
            ot_trial.report(float(result[self.metric]), int(result["training_iteration"]))
        except (KeyError, optuna.exceptions.UpdateFinishedTrialError):
            # No metric in this result; or the driver died after Optuna recorded this trial's end but
            # before Tune's experiment snapshot: the resumed trial repeats epochs Optuna already has.
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.ended or trial_id not in self.ot_trials:
            return
        self.ended.add(trial_id)
        k, ot_trial = self.ot_trials[trial_id]
        self.live[k].discard(trial_id)
        end = trial_end(result, self.full_epochs, failed=error)
        if end is TrialEnd.FAILED:
            state, value = optuna.trial.TrialState.FAIL, None
        elif end.full_budget and result.get(self.metric) is not None:
            state, value = optuna.trial.TrialState.COMPLETE, float(result[self.metric])
        else:
            state, value = optuna.trial.TrialState.PRUNED, None
        try:
            self.studies[k].tell(ot_trial, value, state=state)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # told before a driver crash; the resumed experiment repeats the end

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class RoundHalving(FIFOScheduler):
    """Successive halving whose decisions depend only on earlier rounds (module docstring)."""

    def __init__(
        self,
        max_t: int,
        grace_period: int,
        reduction_factor: int,
        metric: str,
        mode: str,
        time_attr: str = "training_iteration",
    ):
        super().__init__()
        self._metric, self._mode, self.sign, self.time_attr = metric, mode, 1.0 if mode == "max" else -1.0, time_attr
        self.max_t, self.reduction_factor = max_t, reduction_factor
        self.milestones = []
        milestone = grace_period
        while milestone < max_t:
            self.milestones.append(milestone)
            milestone *= reduction_factor
        # (search, milestone) -> [(round, value)] recorded there; trial id -> milestones it was judged at
        self.recorded: dict[tuple[int, int], list[tuple[int, float]]] = {}
        self.judged: dict[str, set[int]] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        if result.get("hn_weight", 1.0) < 1.0:
            return TrialScheduler.CONTINUE  # its hypernetwork is still being warmed up: not judged yet
        epoch, value = int(result[self.time_attr]), self.sign * float(result[self._metric])
        search, round_index = trial.config[SEARCH_KEY], trial.config[ROUND_KEY]
        judged = self.judged.setdefault(trial.trial_id, set())
        for milestone in reversed(self.milestones):  # the highest rung reached and not yet judged at
            if epoch < milestone or milestone in judged:
                continue
            judged.add(milestone)
            recorded = self.recorded.setdefault((search, milestone), [])
            earlier = [v for r, v in recorded if r < round_index]
            recorded.append((round_index, value))
            if earlier and value < float(np.percentile(earlier, (1 - 1 / self.reduction_factor) * 100)):
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"RoundHalving: rungs at epochs {self.milestones}, judged against earlier rounds of the same search"
