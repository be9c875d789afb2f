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

from .spaces import is_reference


def stop_reason(scheduler: str, time_budget_s: float, started: float, result: dict | None = None) -> str:
    """Why a trial ended before its last epoch: "time_cap" when its own training-time cap ended it (its
    last `result` says so), "time_budget" once the phase's budget is spent, else the scheduler ("ASHA")."""
    if result and result.get("capped"):
        return "time_cap"
    if time_budget_s and time.time() - started >= time_budget_s:
        return "time_budget"
    return "ASHA" if scheduler == "asha" else "stopped"


def ending(epoch: int, epochs: int, best_val: float | None, stopped_by: str = "") -> str:
    """A trial's end in a few words: "stopped by ASHA at epoch 1, best val 25.5%" (accuracy a fraction)."""
    best = f"best val {100 * best_val:.1f}%" if best_val is not None else "no validation result"
    if epoch >= epochs:
        return f"ran all {epochs} epochs, {best}"
    if stopped_by == "time_cap":
        return f"reached its training-time cap after epoch {epoch}, {best}"
    by = {"ASHA": "ASHA", "time_budget": "the time budget"}.get(stopped_by, "the scheduler")
    return f"stopped by {by} at epoch {epoch}, {best}"


def replicate_name(item: dict) -> str:
    """A replicate's name (terminal and MLflow run): "maml #1 seed 1000" for candidate rank 1, seed 1000."""
    return f"{item['algorithm']} #{item['candidate_rank']} seed {item['seed']}"


def tested(result: dict) -> str:
    """A replicate's result in a few words: "test 73.6% ± 2.8, best val 75.3%" (accuracies fractions)."""
    return (
        f"test {100 * result['test_acc']:.1f}% ± {100 * result['test_ci95']:.1f}, "
        f"best val {100 * result['best_val_acc']:.1f}%"
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
        if self.role == "trial" and "val_acc" in result:  # replicates: their start and their test only
            say(
                f"  {self._name(trial)} epoch {int(result.get('epoch', 0))}/{self.epochs}: val {100 * result['val_acc']:.1f}%"
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._running.discard(trial.trial_id)
        result = trial.last_result or {}
        epoch = int(result.get("epoch", 0))
        if self.role == "replicate" and "test_acc" in result:
            text = tested(result)
        else:
            stopped_by = (
                "" if epoch >= self.epochs else stop_reason(self.scheduler, self.time_budget_s, self._started, result)
            )
            text = ending(epoch, self.epochs, result.get("best_val_acc"), stopped_by)
        say(f"  {self._name(trial)} {text} {self._done(trials, trial)}")

    def on_experiment_end(self, trials, **info):
        """The trials the time budget stopped (Tune tells on_trial_complete nothing of them)."""
        if stop_reason(self.scheduler, self.time_budget_s, self._started) != "time_budget":
            return
        for trial in trials:
            if trial.trial_id in self._running:
                result = trial.last_result or {}
                epoch = int(result.get("epoch", 0))
                stopped_by = "" if epoch >= self.epochs else "time_budget"
                say(f"  {self._name(trial)} {ending(epoch, self.epochs, result.get('best_val_acc'), stopped_by)}")
        self._running.clear()

    def on_trial_recover(self, iteration, trials, trial, **info):
        say(f"  {self._name(trial)} failed, retrying from its last checkpoint: {error_line(trial)[:200]}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._running.discard(trial.trial_id)
        epoch = int((trial.last_result or {}).get("epoch", 0))
        say(f"  {self._name(trial)} failed at epoch {epoch}: {error_line(trial)[:200]} {self._done(trials, trial)}")
