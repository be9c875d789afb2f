"""MLflow bookkeeping of a study, done on the driver.

One experiment per study; a study run holding the resolved spec; one run per Ray trial (full config
as params, per-epoch metrics, tags, final status, a one-line description), beside it rather than
nested, so the UI lists them all; a "summary" run, nested in the study run, with the comparison
table and plots. The experiment's description is the verdict and the link to the study's runs
(runs_link). Accuracies are logged in points (percent).

Runs are found again by tags (study, role, Ray trial id), so re-running or resuming a study adds
no duplicates. If MLflow cannot be reached, the study goes on: a one-line warning is printed and
the results stay in Ray's storage.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from hypermaml.fitting import BEST_VAL_ACC, EPOCH

from . import provenance
from .formatting import points
from .progress import budget_spent, ending, error_line, replicate_name, stopped_by, tested
from .records import SEARCH_KEY, TrialEnd, trial_end
from .spaces import is_reference
from .spec import StudySpec, sqlite_path

LOGGED_METRICS = (
    "train_loss",
    "train_acc",
    "val_acc",
    "val_ci95",
    "best_val_acc",
    "episodes_per_s",
    "epoch_s",
    "hn_weight",
    "bf16_autocast",
    "train_episodes",
    "train_flops",
    "test_acc",
    "test_ci95",
    "adapt_ms_per_task",
    "parameters",
)
# Accuracies and their CIs go to MLflow in points (percent), the unit of the verdict and the summary.
POINTS = frozenset({"train_acc", "val_acc", "val_ci95", "best_val_acc", "test_acc", "test_ci95"})
STUDY_TAG, ROLE_TAG, TRIAL_TAG, SEARCH_TAG = "hpo.study", "hpo.role", "ray.trial_id", "hpo.search"
NOTE = "mlflow.note.content"  # a run's or an experiment's description in the MLflow UI
MAX_NOTE = 7500  # MLflow caps tag values at 8000 characters
UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default
# The study's trial and replicate runs: those with an algorithm.
RUNS_FILTER = "tags.algorithm IS NOT NULL"
# The MLflow UI's saved views (its "Views" menu) are experiment tags "mlflow.sharedViewState.<id>";
# a link opens one with viewStateShareKey=<id>. Each study gets two (SAVED_VIEWS).
RUNS_VIEW, FINAL_VIEW = "hpo-runs", "hpo-final"

# A tracking server that disappears mid-study must not stall the driver for minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def reachable(uri: str) -> str | None:
    """None if MLflow at `uri` looks usable, else the reason."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except OSError as error:
            return str(getattr(error, "reason", error))
    if (store := sqlite_path(uri)) is not None:
        folder = store.parent
        return None if folder.is_dir() and os.access(folder, os.W_OK) else f"{folder} is not a writable folder"
    return None


def runs_link(ui_url: str, experiment_id: str, view: str = RUNS_VIEW) -> str:
    """The MLflow UI page of a study's runs in one of its saved views (SAVED_VIEWS), in the classic ML
    mode: MLflow 3.17's UI otherwise opens an experiment in its GenAI overview, by a per-browser
    setting the experiment cannot change."""
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "viewStateShareKey": view})
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


# id -> (name, state) of the study's saved views, in the MLflow 3.17 UI's format. "All of them in the
# charts": the UI's default charts only the first 10 runs.
SAVED_VIEWS = {
    # The printed link: every trial and replicate, newest first (the replicates, then the trials), with
    # their one-line descriptions and accuracies as columns.
    RUNS_VIEW: (
        "hpo: trials and replicates",
        {
            "searchFilter": RUNS_FILTER,
            "orderByKey": "attributes.start_time",
            "orderByAsc": False,
            "selectedColumns": [
                "attributes.`Description`",
                "tags.`hpo.search`",
                "metrics.`test_acc`",
                "metrics.`best_val_acc`",
            ],
            "runsHiddenMode": "SHOW_ALL",
        },
    ),
    # The head-to-head: the final configuration's replicates of each algorithm, grouped by algorithm,
    # so a group's row holds the means over its fresh seeds.
    FINAL_VIEW: (
        "hpo: head-to-head",
        {
            "searchFilter": "tags.`hpo.final` = 'true'",
            "orderByKey": "attributes.start_time",
            "orderByAsc": False,
            "selectedColumns": [
                "tags.`hpo.search`",
                "metrics.`test_acc`",
                "metrics.`test_ci95`",
                "metrics.`best_val_acc`",
                "metrics.`adapt_ms_per_task`",
            ],
            "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "algorithm"}]},
            "runsHiddenMode": "SHOW_ALL",
        },
    ),
}


def saved_view(view: str) -> tuple[str, str]:
    """(experiment tag, value) storing a saved view as the UI does: name, times, and the state as JSON."""
    name, state = SAVED_VIEWS[view]
    now = int(time.time() * 1000)
    value = json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})
    return f"mlflow.sharedViewState.{view}", value


def ui_url(tracking_uri: str) -> str:
    """Where the MLflow UI of a tracking URI is: the server itself, or `mlflow ui` on its default port."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI


def serve_command(tracking_uri: str) -> str | None:
    """The command that serves a store with no server of its own (sqlite:, a folder), else None."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


class _Ledger:
    """The MLflow side of a study, reduced to plain picklable values; the client is made lazily."""

    def __init__(self, tracking_uri: str, study: str, storage_hint: str):
        self.tracking_uri, self.study, self.storage_hint = tracking_uri, study, storage_hint
        self.enabled = True
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: MlflowClient | None = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def disable(self, reason: str) -> None:
        if self.enabled:
            print(
                f"warning: MLflow at {self.tracking_uri} is unavailable ({reason}); the study continues and its "
                f"results stay in Ray's storage at {self.storage_hint}",
                file=sys.stderr,
                flush=True,
            )
        self.enabled = False

    def find_runs(self, **tags: str) -> list:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=10000)


def _guarded(method):
    """MLflow trouble warns once and switches tracking off; it never stops the study."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        ledger: _Ledger = self.ledger
        if not ledger.enabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any tracking failure is reported, then tracking stops
            ledger.disable(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            return None

    return wrapper


class StudyTracker:
    def __init__(self, spec: StudySpec):
        self.spec = spec
        self.ledger = _Ledger(spec.tracking_uri, spec.name, spec.study_dir)
        self.provenance = provenance.current().tags()  # on every run of the study
        reason = reachable(spec.tracking_uri)
        if reason:
            self.ledger.disable(reason)

    @_guarded
    def start_study(self) -> None:
        ledger, client = self.ledger, self.ledger.client
        experiment = client.get_experiment_by_name(self.spec.name)
        if experiment is None:
            ledger.experiment_id = client.create_experiment(
                self.spec.name, artifact_location=_artifact_location(self.spec)
            )
        else:
            ledger.experiment_id = experiment.experiment_id
        # What the experiment is for, in MLflow's own words; MLflow 3.17's UI opens experiments by a
        # per-browser setting instead, hence the link with workflowType (runs_link).
        client.set_experiment_tag(ledger.experiment_id, "mlflow.experimentKind", "custom_model_development")
        for view in SAVED_VIEWS:
            client.set_experiment_tag(ledger.experiment_id, *saved_view(view))
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        client.set_experiment_tag(
            ledger.experiment_id,
            NOTE,
            (
                f"Running since {started}: {' vs '.join(self.spec.algorithms)} on {self.spec.dataset} "
                f"{self.spec.way}-way {self.spec.shot}-shot, {self.spec.trials} tuning trials each, then fresh-seed "
                f"replicates. The verdict replaces this line when the study ends.\n\nTrial and replicate runs: {self.link}"
            ),
        )
        existing = ledger.find_runs(**{STUDY_TAG: self.spec.name, ROLE_TAG: "study"})
        if existing:
            ledger.parent_run_id = existing[0].info.run_id
            client.update_run(ledger.parent_run_id, status="RUNNING")
            return
        run = client.create_run(
            ledger.experiment_id,
            run_name=f"study {self.spec.name}",
            tags={
                STUDY_TAG: self.spec.name,
                ROLE_TAG: "study",
                **self.provenance,
                "dataset": self.spec.dataset,
                "way": str(self.spec.way),
                "shot": str(self.spec.shot),
            },
        )
        ledger.parent_run_id = run.info.run_id
        params = [Param(k, _param_value(v)) for k, v in self.spec.to_dict().items()]
        client.log_batch(ledger.parent_run_id, params=params)

    @property
    def link(self) -> str | None:
        """The study's runs in the MLflow UI (None without MLflow)."""
        return self.view_link(RUNS_VIEW)

    def view_link(self, view: str) -> str | None:
        if not self.ledger.enabled or self.ledger.experiment_id is None:
            return None
        return runs_link(ui_url(self.spec.tracking_uri), self.ledger.experiment_id, view)

    def where(self) -> list[str]:
        """Lines saying where to look in MLflow: the link, and the command serving a local store."""
        if self.link is None:
            return [f"MLflow: unavailable; the results are in {self.spec.study_dir}"]
        command = serve_command(self.spec.tracking_uri)
        return [f"MLflow: {self.link}"] + ([f"  (serve the store first: {command})"] if command else [])

    def trial_callback(self, algorithm: str, epochs: int, reference: tuple[dict, str] | None) -> TrialRuns:
        return TrialRuns(
            self.ledger, "trial", epochs, self.spec, self.provenance, algorithm=algorithm, reference=reference
        )

    def replicate_callback(self, epochs: int) -> TrialRuns:
        return TrialRuns(self.ledger, "replicate", epochs, self.spec, self.provenance)

    @_guarded
    def note_best_trial(self, outcome) -> None:
        """Say on the best tuning trial's run (by best validation accuracy) that it is the best."""
        ranked = [t for t in outcome.trials if t.best_val_acc is not None]
        if not ranked:
            return
        best = max(ranked, key=lambda t: t.best_val_acc)
        for run in self.ledger.find_runs(**{STUDY_TAG: self.spec.name, ROLE_TAG: "trial", TRIAL_TAG: best.trial_id}):
            note = run.data.tags.get(NOTE, "")
            if not note.startswith("best "):
                self.ledger.client.set_tag(run.info.run_id, NOTE, f"best {outcome.algorithm} trial; {note}")

    @_guarded
    def mark_finalists(self, finalists) -> None:
        """Tag the final configuration's replicate runs `hpo.final=true`, and say so in their descriptions."""
        for finalist in finalists.values():
            for record in finalist.replicates:
                for run in self.ledger.find_runs(
                    **{STUDY_TAG: self.spec.name, ROLE_TAG: "replicate", TRIAL_TAG: record.trial_id}
                ):
                    self.ledger.client.set_tag(run.info.run_id, "hpo.final", "true")
                    note = run.data.tags.get(NOTE, "")
                    if not note.startswith("final "):
                        self.ledger.client.set_tag(run.info.run_id, NOTE, f"final {finalist.name}; {note}")

    @_guarded
    def reconcile(self, algorithm: str, results, searches: range) -> None:
        """Trial runs of these searches whose Ray trial no longer exists (created just before a driver
        crash, then replaced on restore) are soft-deleted, so the store holds exactly the study's trials."""
        kept = {trial_id_of(r.path) for r in results if r.path}
        for run in self.ledger.find_runs(**{STUDY_TAG: self.spec.name, ROLE_TAG: "trial", "algorithm": algorithm}):
            if int(run.data.tags.get(SEARCH_TAG, "0")) not in searches:
                continue  # another block's experiment
            if run.data.tags.get(TRIAL_TAG) not in kept:
                self.ledger.client.set_tag(run.info.run_id, "hpo.orphan", "true")
                self.ledger.client.delete_run(run.info.run_id)

    @_guarded
    def log_summary(
        self,
        comparison,
        diagnostics,
        files: list[Path],
        notes: list[str],
        figures: dict,
        expected_best: dict | None = None,
    ) -> None:
        """The summary run (tables, plots, interactive plots) and, on the study run, the verdict, its
        numbers and the diagnostics as tags and metrics; the summary is the run description of both,
        and the verdict with the link is the experiment's description.

        `figures` maps artifact paths ("plots/x.html") to Plotly figures, stored self-contained (they
        open without the internet)."""
        ledger, client = self.ledger, self.ledger.client
        for old in ledger.find_runs(**{STUDY_TAG: self.spec.name, ROLE_TAG: "summary"}):
            client.delete_run(old.info.run_id)  # a re-run of the summary replaces the previous one
        summary_md = files[0].read_text()[:MAX_NOTE]
        tags = {NOTE: summary_md}
        headline = comparison.headline if comparison is not None else None
        if headline is not None:
            searches = dict(zip((headline.baseline, headline.challenger), headline.searches))
            tags.update(
                {
                    "verdict": headline.verdict.sentence[:5000],
                    "verdict.kind": headline.verdict.kind,
                    "verdict.unit": headline.verdict.unit,
                    "verdict.searches": (
                        str(headline.searches[0])
                        if len(set(searches.values())) == 1
                        else ", ".join(f"{a}={k}" for a, k in searches.items())
                    ),
                }
            )
        tags.update({d.key: d.message[:5000] for d in diagnostics})
        if notes:
            tags["notes"] = " | ".join(notes)[:5000]
        run_id = client.create_run(
            ledger.experiment_id,
            run_name="summary: head-to-head",
            tags={
                **tags,
                STUDY_TAG: self.spec.name,
                ROLE_TAG: "summary",
                "mlflow.parentRunId": ledger.parent_run_id,
                **self.provenance,
            },
        ).info.run_id
        for path in files:
            if path.is_dir():
                client.log_artifacts(run_id, str(path), path.name)
            else:
                client.log_artifact(run_id, str(path))
        for artifact, figure in figures.items():
            client.log_figure(run_id, figure, artifact, save_kwargs={"include_plotlyjs": True})
        client.set_terminated(run_id, "FINISHED")
        # The comparison's numbers, in points like every accuracy in MLflow; each algorithm's own results
        # are on its replicate runs (test_acc, ...), the same keys as the trials.
        metrics = []
        if headline is not None:
            now = int(time.time() * 1000)
            values = {
                "effect_points": headline.verdict.effect,
                "ci_low_points": headline.verdict.ci_low,
                "ci_high_points": headline.verdict.ci_high,
                "p_value": headline.p_value,
            }
            if len(comparison.per_search) == 1:  # one search: the seed pairs of its two finalists
                values["p_improvement"] = next(iter(comparison.per_search.values())).p_improvement
            metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
        # Dodge et al.'s curve, a step per number of tuning trials: charted as a curve, not a lone bar.
        now = int(time.time() * 1000)
        metrics += [
            Metric(f"expected_best_val_acc.{algorithm}", round(float(mean), 4), now, n)
            for algorithm, curve in (expected_best or {}).items()
            for n, mean in zip(curve.n, curve.mean)
        ]
        client.log_batch(ledger.parent_run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        client.log_artifact(ledger.parent_run_id, str(files[0]))
        client.log_artifacts(ledger.parent_run_id, str(next(p for p in files if p.is_dir())), "plots")
        verdict = (
            headline.verdict.sentence
            if headline is not None
            else "No verdict: it needs two algorithms with at least 2 successful replicates each."
        )
        client.set_experiment_tag(
            ledger.experiment_id,
            NOTE,
            (
                f"{verdict}\n\nTrial and replicate runs of both algorithms: {self.link}\n\n"
                f"Head-to-head, the final configurations' fresh seeds grouped by algorithm: {self.view_link(FINAL_VIEW)}\n\n"
                f"The full summary is the description of the run `study {self.spec.name}`. "
                f"Accuracies are in points (percent)."
            ),
        )

    @_guarded
    def finish_study(self, status: str, error: str = "") -> None:
        """End the study run: FINISHED; KILLED when interrupted (Ctrl-C, SIGTERM), and then every trial
        and replicate run still RUNNING ends KILLED with it; FAILED with the error's line on a crash."""
        ledger = self.ledger
        if not ledger.parent_run_id:
            return
        if error:
            ledger.client.set_tag(ledger.parent_run_id, "error", error[:5000])
        if status == "KILLED":
            for role in ("trial", "replicate"):
                for run in ledger.find_runs(**{STUDY_TAG: self.spec.name, ROLE_TAG: role}):
                    if run.info.status == "RUNNING":
                        ledger.client.set_terminated(run.info.run_id, "KILLED")
        ledger.client.set_terminated(ledger.parent_run_id, status)


class TrialRuns(tune.Callback):
    """Tune callback: one nested MLflow run per trial (role "trial") or replicate (role "replicate"),
    kept in step with the trial's life."""

    def __init__(
        self,
        ledger: _Ledger,
        role: str,
        epochs: int,
        spec: StudySpec,
        provenance: dict[str, str],
        algorithm: str = "",
        reference: tuple[dict, str] | None = None,
    ):
        self.ledger, self.role, self.epochs, self.provenance = ledger, role, epochs, provenance
        self.algorithm, self.reference = algorithm, reference
        self.scheduler, self.time_budget_s = spec.scheduler, spec.time_budget_s / max(1, len(spec.algorithms))
        self.common_tags = {"dataset": spec.dataset, "way": str(spec.way), "shot": str(spec.shot)}
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_epoch: dict[str, int] = {}
        self._ended: set[str] = set()  # trial ids whose run has ended
        # Made just before its Tune experiment starts (or is restored: __setstate__), so when Tune's time
        # budget is spent, so is this one (budget_spent).
        self._started = time.time()

    def __getstate__(self):
        return {**self.__dict__, "_runs": {}, "_last_epoch": {}, "_ended": set()}

    def __setstate__(self, state):
        self.__dict__.update(state, _started=time.time())  # a restored experiment's time budget starts anew

    def _describe(self, trial) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Run name, tags and params of a trial's run."""
        if self.role == "replicate":
            item = trial.config["replicate"]
            tags = {
                "algorithm": item["algorithm"],
                "seed": str(item["seed"]),
                "hpo.candidate_rank": str(item["candidate_rank"]),
                "hpo.source_trial": item["source_trial"],
                SEARCH_TAG: str(item["search"]),
            }
            return replicate_name(item), tags, item["settings"]
        tags = {"algorithm": self.algorithm, SEARCH_TAG: str(trial.config.get(SEARCH_KEY, 0))}
        if self.reference and is_reference({k: v for k, v in trial.config.items()}, self.reference[0]):
            tags["hpo.reference"] = self.reference[1]
        return f"{self.algorithm} {trial.trial_id}", tags, trial.config

    def _run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        ledger = self.ledger
        found = ledger.find_runs(**{STUDY_TAG: ledger.study, ROLE_TAG: self.role, TRIAL_TAG: trial.trial_id})
        if found:  # a resumed study or a retried trial: keep logging into the same run
            run_id = found[0].info.run_id
            history = ledger.client.get_metric_history(run_id, "val_acc")
            self._last_epoch[trial.trial_id] = max((m.step for m in history), default=0)
            ledger.client.update_run(run_id, status="RUNNING")
        else:
            name, own_tags, config = self._describe(trial)
            # Not nested under the study run: MLflow's UI folds nested runs under their parent, and a study
            # is read by comparing its trials and replicates. The hpo.study tag ties them to their study.
            tags = {
                **self.common_tags,
                **own_tags,
                STUDY_TAG: ledger.study,
                ROLE_TAG: self.role,
                TRIAL_TAG: trial.trial_id,
                **self.provenance,
            }
            run_id = ledger.client.create_run(ledger.experiment_id, run_name=name, tags=tags).info.run_id
            params = [Param(k, _param_value(v)) for k, v in sorted(config.items())]
            ledger.client.log_batch(run_id, params=params)
            self._last_epoch[trial.trial_id] = 0
        self._runs[trial.trial_id] = run_id
        return run_id

    @_guarded
    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_id(trial)

    @_guarded
    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_id(trial)
        epoch = int(result.get(EPOCH, result.get("training_iteration", 0)))
        if epoch <= self._last_epoch.get(trial.trial_id, 0):
            return  # already logged before a restore: no duplicate steps
        self._last_epoch[trial.trial_id] = epoch
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, points(float(result[k])) if k in POINTS else float(result[k]), now, epoch)
            for k in LOGGED_METRICS
            if k in result
        ]
        node_ip, node_id = result.get("node_ip", "unknown"), str(result.get("node_id", "unknown"))
        tags = [
            RunTag("node", f"{node_ip}/{node_id[:12]}"),
            RunTag("node_id", node_id),
            RunTag("hostname", str(result.get("hostname", "unknown"))),
        ]
        self.ledger.client.log_batch(run_id, metrics=metrics, tags=tags)

    @_guarded
    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        retries = int(self.ledger.client.get_run(run_id).data.tags.get("retries", "0")) + 1
        self.ledger.client.set_tag(run_id, "retries", str(retries))
        self.ledger.client.set_tag(run_id, "last_error", error_line(trial))

    @_guarded
    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if self.role == "replicate":
            self._ended.add(trial.trial_id)
            run_id = self._run_id(trial)
            item = trial.config["replicate"]
            source = f"candidate #{item['candidate_rank']} (tuning trial {item['source_trial']})"
            self.ledger.client.set_tag(run_id, NOTE, f"{tested(result)}; {source}" if "test_acc" in result else source)
            self.ledger.client.set_terminated(run_id, "FINISHED")
            return
        self._end(trial, trial_end(result, self.epochs))

    @_guarded
    def on_experiment_end(self, trials, **info):
        """Tune stops the trials still running when the time budget runs out without telling
        on_trial_complete: their runs end here, like the trials ASHA stopped."""
        if self.role == "trial" and budget_spent(self.time_budget_s, self._started):
            for trial in trials:
                if trial.trial_id in self._runs and trial.trial_id not in self._ended:
                    self._end(trial, trial_end(trial.last_result, self.epochs, running=True))

    def _end(self, trial, end: TrialEnd) -> None:
        """End a tuning trial's run FINISHED, its tags and description saying how: stopping a trial early
        is the search working, not a failure (FAILED and KILLED are kept for errors and interruptions)."""
        self._ended.add(trial.trial_id)
        run_id = self._run_id(trial)
        result = trial.last_result or {}
        epoch = int(result.get(EPOCH, 0))
        client = self.ledger.client
        if end is not TrialEnd.COMPLETED:
            client.set_tag(run_id, "stopped_by", stopped_by(end, self.scheduler))
            client.set_tag(run_id, "stopped_at_epoch", str(epoch))
        note = ending(epoch, self.epochs, result.get(BEST_VAL_ACC), end, self.scheduler)
        if self.reference and is_reference(trial.config, self.reference[0]):
            note = f"published reference; {note}"
        client.set_tag(run_id, NOTE, note)
        client.set_terminated(run_id, "FINISHED")

    @_guarded
    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended.add(trial.trial_id)
        run_id = self._run_id(trial)
        error = error_line(trial)
        epoch = int((trial.last_result or {}).get(EPOCH, 0))
        self.ledger.client.set_tag(run_id, "error", error)
        self.ledger.client.set_tag(run_id, NOTE, f"failed at epoch {epoch}: {error}"[:MAX_NOTE])
        if trial.error_file and Path(trial.error_file).is_file():
            self.ledger.client.log_artifact(run_id, trial.error_file)
        self.ledger.client.set_terminated(run_id, "FAILED")


def trial_dirname(trial) -> str:
    """Trial folders named by trial id, so a result's folder tells which trial (and run) it is."""
    return f"trial_{trial.trial_id}"


def trial_id_of(path: str) -> str:
    return Path(path).name.removeprefix("trial_")


def _param_value(value: Any) -> str:
    return str(value)[:6000]


def _artifact_location(spec: StudySpec) -> str | None:
    """Beside the SQLite store (not the cwd of whoever created the experiment); servers choose their own."""
    if (store := sqlite_path(spec.tracking_uri)) is not None:
        return (store.parent / "mlartifacts" / spec.name).as_uri()
    return None
