"""What the terminal shows while a study runs: one short line per trial event on stdout.

Ray's own status tables are off unless `--verbose`; instead each phase prints a header line, then
one line when a trial starts, one per epoch with its validation accuracy (tuning trials), and one
when it ends (finished, stopped by ASHA or the time budget, failed; a replicate with its test
accuracy), with how many of the phase's trials are done. The same one-line endings are the trials'
run descriptions in MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray import tune

from hypermaml.fitting import BEST_VAL_ACC, EPOCH, VAL_ACC

from .records import TrialEnd, trial_end
from .spaces import is_reference


def budget_spent(time_budget_s: float, started: float) -> bool:
    """Whether the phase's time budget (0: none) has run out since `started`. Tune's time budget stops the
    trials still running without a word to the callbacks; at the experiment's end this tells that stop
    from an interruption's, which also leaves trials running (TrialEnd.TIME_BUDGET)."""
    return bool(time_budget_s) and time.time() - started >= time_budget_s


def stopped_by(end: TrialEnd, scheduler: str) -> str:
    """What ended a trial before its last epoch, as its MLflow tag `stopped_by` says: "time_cap",
    "time_budget", or the scheduler that stopped it early ("ASHA", else "stopped")."""
    if end is TrialEnd.EARLY_STOPPED:
        return "ASHA" if scheduler == "asha" else "stopped"
    return end.value


def ending(epoch: int, epochs: int, best_val: float | None, end: TrialEnd, scheduler: str = "asha") -> str:
    """A trial's end in a few words: "stopped by ASHA at epoch 1, best val 25.5%" (accuracy a fraction)."""
    best = f"best val {100 * best_val:.1f}%" if best_val is not None else "no validation result"
    if end is TrialEnd.COMPLETED:
        return f"ran all {epochs} epochs, {best}"
    if end is TrialEnd.TIME_CAP:
        return f"reached its training-time cap after epoch {epoch}, {best}"
    by = "the time budget" if end is TrialEnd.TIME_BUDGET else "ASHA" if scheduler == "asha" else "the scheduler"
    return f"stopped by {by} at epoch {epoch}, {best}"


def replicate_name(item: dict) -> str:
    """A replicate's name (terminal and MLflow run): "maml #1 seed 1000" for candidate rank 1, seed 1000."""
    return f"{item['algorithm']} #{item['candidate_rank']} seed {item['seed']}"


def tested(result: dict) -> str:
    """A replicate's result in a few words: "test 73.6% ± 2.8, best val 75.3%" (accuracies fractions)."""
    return (
        f"test {100 * result['test_acc']:.1f}% ± {100 * result['test_ci95']:.1f}, "
        f"best val {100 * result[BEST_VAL_ACC]:.1f}%"
    )


def error_line(trial) -> str:
    """The exception line of a trial's error (the last non-empty line of Tune's error file)."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:5000]
    return "unknown error (no error file)"


def duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


def say(line: str) -> None:
    print(line, flush=True)


class ProgressLines(tune.Callback):
    """Tune callback: the trial events of one phase as short stdout lines.

    A tuning trial is named by its Ray trial id (as its MLflow run is), a replicate by algorithm,
    candidate rank and seed. Picklable: Tune stores it with the experiment, and a resumed study uses it.
    """

    def __init__(
        self,
        role: str,
        total: int,
        epochs: int,
        scheduler: str = "asha",
        time_budget_s: float = 0.0,
        reference: dict | None = None,
    ):
        self.role, self.total, self.epochs = role, total, epochs
        self.scheduler, self.time_budget_s, self.reference = scheduler, time_budget_s, reference
        self._running: set[str] = set()  # ids of the trials started and not ended
        self._started = time.time()  # just before its Tune experiment starts, as in tracking.TrialRuns

    def __setstate__(self, state):
        self.__dict__.update(state, _running=set(), _started=time.time())  # a restored experiment

    def _name(self, trial) -> str:
        return replicate_name(trial.config["replicate"]) if self.role == "replicate" else trial.trial_id

    def _done(self, trials, trial) -> str:
        done = sum(1 for t in trials if t is trial or t.status in ("TERMINATED", "ERROR"))
        return f"[{done}/{self.total}]"

    def on_trial_start(self, iteration, trials, trial, **info):
        self._running.add(trial.trial_id)
        reference = self.role == "trial" and self.reference is not None and is_reference(trial.config, self.reference)
        say(f"  {self._name(trial)} started" + (" (published reference)" if reference else ""))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.role == "trial" and VAL_ACC in result:  # replicates: their start and their test only
            say(
                f"  {self._name(trial)} epoch {int(result.get(EPOCH, 0))}/{self.epochs}: val {100 * result[VAL_ACC]:.1f}%"
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._running.discard(trial.trial_id)
        result = trial.last_result or {}
        if self.role == "replicate" and "test_acc" in result:
            text = tested(result)
        else:
            text = self._ending(result, trial_end(result, self.epochs))
        say(f"  {self._name(trial)} {text} {self._done(trials, trial)}")

    def on_experiment_end(self, trials, **info):
        """The trials the time budget stopped (Tune tells on_trial_complete nothing of them)."""
        if not budget_spent(self.time_budget_s, self._started):
            return
        for trial in trials:
            if trial.trial_id in self._running:
                result = trial.last_result or {}
                say(f"  {self._name(trial)} {self._ending(result, trial_end(result, self.epochs, running=True))}")
        self._running.clear()

    def _ending(self, result: dict, end: TrialEnd) -> str:
        return ending(int(result.get(EPOCH, 0)), self.epochs, result.get(BEST_VAL_ACC), end, self.scheduler)

    def on_trial_recover(self, iteration, trials, trial, **info):
        say(f"  {self._name(trial)} failed, retrying from its last checkpoint: {error_line(trial)[:200]}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._running.discard(trial.trial_id)
        epoch = int((trial.last_result or {}).get(EPOCH, 0))
        say(f"  {self._name(trial)} failed at epoch {epoch}: {error_line(trial)[:200]} {self._done(trials, trial)}")
