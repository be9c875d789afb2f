"""`python -m hpo.search --storage-path s3://...` end to end against a real S3-compatible server (moto's,
on 127.0.0.1, started and stopped here): real Ray Tune storage, spec and summary in the bucket, a real
MLflow SQLite store. The endpoint reaches the study the way a user gives it: the AWS SDK's environment
variables of the study's process."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import optuna
import pytest
from mlflow.entities import Run, ViewType

from .studies import REPO, runs, study_cmd

BUCKET = "hpo-studies"
PREFIX = "team/runs"
STORAGE = f"s3://{BUCKET}/{PREFIX}"
TIMEOUT = 900


@pytest.fixture(scope="module")
def s3():
    """(the environment pointing the AWS SDK at it, a boto3 client) of a moto S3 server on a free port of
    127.0.0.1, with an empty bucket; stopped after the module's tests."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # no profile, token or real endpoint
        env.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
        )
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        yield env, client
    finally:
        server.stop()
        server._server.server_close()  # the listening socket too: nothing left on the port


def unique(name: str) -> str:
    """A study name of its own: the Optuna DB of a remote study is $HYPERMAML_CACHE/optuna/<name>.db, and
    the cache can outlive a test session ($HYPERMAML_TEST_CACHE)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def s3_cmd(root, tmp, name, *extra):
    """The smoke study stored in the bucket; only each search's top configuration retrained (a shorter run)."""
    cmd = study_cmd(root, tmp, name, "--reference-margin", "0", *extra)
    cmd[cmd.index("--storage-path") + 1] = STORAGE
    return cmd


def run(cmd, env, timeout=TIMEOUT):
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def objects(client, prefix="") -> dict[str, tuple]:
    """key -> (ETag, LastModified, Size) of every object of the bucket under `prefix`."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = (item["ETag"], item["LastModified"], item["Size"])
    return found


def text_of(client, key: str) -> str:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def all_runs(tmp, name, view=ViewType.ACTIVE_ONLY):
    client, _ = runs(tmp, name, "study")
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], run_view_type=view, max_results=1000)


@dataclass
class Stop:
    """What the study's driver left when SIGTERM stopped it, seen before the study was resumed."""

    returncode: int
    stdout: str
    left: dict[int, str]  # processes of its session still alive 30 s after it ended
    runs: dict[str, Run]  # its MLflow runs by id
    running: set[str]  # the runs that were RUNNING when the signal came
    signalled_ms: float
    keys: set[str]  # the bucket's keys under the study
    snapshots: dict[str, list[str]]  # algorithm -> its Tune experiment-state files in the bucket
    known: dict[str, set[str]]  # algorithm -> the trial ids its (one) experiment state knows


@pytest.fixture(scope="module")
def finished(s3, omniglot_root, tmp_path_factory):
    """(folder of its MLflow store, name, command, its Stop, the finishing process) of one smoke study
    stored in the bucket: three trials per algorithm (a first round of two, then one proposed after
    them), each search's top configuration retrained; stopped by SIGTERM once under way, then finished
    by the same command."""
    env, client = s3
    tmp, name = tmp_path_factory.mktemp("s3-smoke"), unique("s3smoke")
    cmd = s3_cmd(omniglot_root, tmp, name, "--trials", "3")
    study = f"{PREFIX}/{name}"
    out, err = tmp / "driver.out", tmp / "driver.err"  # files, not pipes: a full pipe would stall it
    with out.open("w") as stdout, err.open("w") as stderr:
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
    deadline, before = time.time() + 600, None
    try:
        # Stop it once the study is under way: at least two trials have a checkpoint in the bucket; and at
        # once when a trial starts after that, when Tune's periodic snapshot in the bucket does not know it
        # yet (only a snapshot written on the signal does).
        while True:
            assert driver.poll() is None, "the study ended before it could be stopped"
            assert time.time() < deadline, "no two maml checkpoints and a trial started after them in 10 minutes"
            started = len(re.findall(r"^  [0-9a-f]{8} started", out.read_text(), flags=re.M))
            if before is None:
                keys = objects(client, f"{study}/maml/")
                if len({k.split("/")[4] for k in keys if "/checkpoint_" in k}) >= 2:
                    before = started
            elif started > before:
                break
            time.sleep(0.1)
        running = {r.info.run_id for r in all_runs(tmp, name) if r.info.status == "RUNNING"}
        signalled_ms = time.time() * 1000
        driver.send_signal(signal.SIGTERM)
        driver.wait(120)
        left, settle = _session(driver.pid), time.time() + 30  # Ray's processes end with it
        while left and time.time() < settle:
            time.sleep(0.5)
            left = _session(driver.pid)
    finally:
        _kill_session(driver.pid)
    assert driver.returncode == 130, err.read_text()[-3000:]
    stopped = {r.info.run_id: r for r in all_runs(tmp, name)}
    snapshots, known = {}, {}
    for algorithm in {r.data.tags["algorithm"] for r in stopped.values() if r.data.tags.get("hpo.role") == "trial"}:
        snapshots[algorithm] = [
            k
            for k in objects(client, f"{study}/{algorithm}/")
            if re.fullmatch(r"[^/]+/experiment_state-[^/]*\.json", k.removeprefix(study + "/"))
        ]
        state = json.loads(text_of(client, snapshots[algorithm][0])) if snapshots[algorithm] else {"trial_data": []}
        known[algorithm] = {json.loads(trial)["trial_id"] for trial, _ in state["trial_data"]}
    stop = Stop(
        driver.returncode,
        out.read_text(),
        left,
        stopped,
        running,
        signalled_ms,
        set(objects(client, study + "/")),
        snapshots,
        known,
    )
    resumed = run(cmd, env)  # the same command continues the study from the bucket
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return tmp, name, cmd, stop, resumed


def test_a_study_on_s3_stores_its_spec_summary_and_tune_results_in_the_bucket(s3, finished):
    env, client = s3
    tmp, name, cmd, _, proc = finished
    study = f"{PREFIX}/{name}"
    keys = objects(client, study + "/")
    dry = run(cmd + ["--dry-run"], env, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert json.loads(text_of(client, f"{study}/spec.json")) == json.loads(dry.stdout)["study"]
    assert json.loads(text_of(client, f"{study}/spec.json"))["storage_path"] == STORAGE
    summary = text_of(client, f"{study}/summary.md")
    verdict = summary.splitlines()[2].strip("*")
    assert "95% CI" in verdict and verdict in proc.stdout.splitlines()
    csv_rows = text_of(client, f"{study}/summary.csv").strip().splitlines()[1:]
    assert f"Summary: {STORAGE}/{name}/summary.md" in proc.stdout.splitlines()
    # Tune's experiments: their state (what a resume restores from) and every trial's checkpoint
    for experiment in ("maml", "hypermaml", "replicates"):
        assert any(k.startswith(f"{study}/{experiment}/experiment_state-") for k in keys), experiment
        assert any(k.startswith(f"{study}/{experiment}/trial_") and "/checkpoint_" in k for k in keys), experiment
    for algorithm in ("maml", "hypermaml"):
        assert len({k.split("/")[4] for k in keys if k.startswith(f"{study}/{algorithm}/trial_")}) == 3

    _, parents = runs(tmp, name, "study")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert parents[0].data.tags["verdict"] == verdict and parents[0].data.tags["verdict.kind"]
    assert parents[0].data.params["storage_path"] == STORAGE
    _, trials = runs(tmp, name, "trial")
    assert sorted(r.data.tags["algorithm"] for r in trials) == ["hypermaml"] * 3 + ["maml"] * 3
    assert all(r.info.status == "FINISHED" for r in trials)
    _, replicates = runs(tmp, name, "replicate")
    assert len(replicates) == len(csv_rows) == 4  # per algorithm its top trial x 2 seeds
    assert all(r.info.status == "FINISHED" and 0 <= r.data.metrics["test_acc"] <= 100 for r in replicates)
    _, summaries = runs(tmp, name, "summary")
    assert len(summaries) == 1 and summaries[0].info.status == "FINISHED"
    # the Optuna studies, kept on the driver's machine (the cache folder) since the results are remote
    db = f"sqlite:///{os.environ['HYPERMAML_CACHE']}/optuna/{name}.db"
    for algorithm in ("maml", "hypermaml"):
        assert len(optuna.load_study(study_name=f"{name}-{algorithm}", storage=db).trials) == 3


def test_rerunning_an_s3_study_with_other_settings_exits_2_and_writes_nothing(s3, finished):
    env, client = s3
    tmp, name, cmd, _, _ = finished
    optuna_db = Path(os.environ["HYPERMAML_CACHE"]) / "optuna" / f"{name}.db"
    bucket_before = objects(client)
    files_before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in [*tmp.rglob("*"), optuna_db]}
    proc = run(cmd + ["--trials", "5"], env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "trials 3 -> 5" in proc.stderr and "--resume" in proc.stderr and "--name" in proc.stderr
    assert objects(client) == bucket_before
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in [*tmp.rglob("*"), optuna_db]} == files_before


def test_resuming_a_name_the_bucket_does_not_have_exits_2_with_one_line(s3, omniglot_root, tmp_path):
    env, client = s3
    bucket_before = objects(client)
    proc = run(s3_cmd(omniglot_root, tmp_path, "never-ran", "--resume"), env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"--resume: no study 'never-ran' in {STORAGE}" in proc.stderr
    assert objects(client) == bucket_before and list(tmp_path.iterdir()) == []


def test_a_driver_stopped_by_sigterm_on_s3_ends_killed_and_resumes_without_losing_or_duplicating_runs(s3, finished):
    _, client = s3
    tmp, name, _, stop, resumed = finished
    study = f"{PREFIX}/{name}"
    assert stop.returncode == 130
    assert not stop.left, stop.left  # Ray's processes (own process groups, the driver's session) ended with it
    assert f"interrupted: {name} stopped" in stop.stdout
    assert f"{study}/summary.md" not in stop.keys
    # Tune's experiment state in the bucket, what the resume restores, knows every trial that had started
    for algorithm, snapshots in stop.snapshots.items():
        assert len(snapshots) == 1, (algorithm, snapshots)
        assert {
            r.data.tags["ray.trial_id"]
            for r in stop.runs.values()
            if r.data.tags.get("hpo.role") == "trial" and r.data.tags["algorithm"] == algorithm
        } <= stop.known[algorithm], algorithm
    assert [r.info.status for r in stop.runs.values() if r.data.tags.get("hpo.role") == "study"] == ["KILLED"]
    assert not [r for r in stop.runs.values() if r.info.status == "RUNNING"]
    trial_runs = [r for r in stop.runs.values() if r.data.tags.get("hpo.role") == "trial"]
    assert any(r.info.status == "KILLED" for r in trial_runs)
    for run_id in stop.running:  # what was running when the signal came ended KILLED (or had just finished)
        run_ = stop.runs[run_id]
        assert run_.info.status == "KILLED" or (
            run_.info.status == "FINISHED" and run_.info.end_time <= stop.signalled_ms + 1000
        )

    client_, trials = runs(tmp, name, "trial")  # after the same command continued the study from the bucket
    assert (
        sorted(r.data.tags["algorithm"] for r in trials) == ["hypermaml"] * 3 + ["maml"] * 3
    )  # as many as uninterrupted
    assert len({r.data.tags["ray.trial_id"] for r in trials}) == 6
    for trial in trials:
        steps = [m.step for m in client_.get_metric_history(trial.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)) and steps, "an epoch was lost or logged twice"
        assert trial.info.status == "FINISHED"
    killed = {r.data.tags["ray.trial_id"] for r in trial_runs if r.info.status == "KILLED"}
    assert killed <= {r.data.tags["ray.trial_id"] for r in trials}  # the stopped trials went on in their own runs
    assert len(all_runs(tmp, name, ViewType.ALL)) == len(all_runs(tmp, name))  # no run dropped as an orphan
    db = f"sqlite:///{os.environ['HYPERMAML_CACHE']}/optuna/{name}.db"
    for algorithm in ("maml", "hypermaml"):  # Optuna saw each trial once, and none is left RUNNING
        states = [t.state for t in optuna.load_study(study_name=f"{name}-{algorithm}", storage=db).trials]
        assert len(states) == 3 and optuna.trial.TrialState.RUNNING not in states, states
    _, parents = runs(tmp, name, "study")
    assert [p.info.status for p in parents] == ["FINISHED"]
    _, summaries = runs(tmp, name, "summary")
    assert len(summaries) == 1
    assert f"Summary: {STORAGE}/{name}/summary.md" in resumed.stdout.splitlines()
    assert text_of(client, f"{study}/summary.md").splitlines()[2].strip("*") in resumed.stdout.splitlines()


def _session(sid: int) -> dict[int, str]:
    """pid -> command line of every live process of the session `sid` (a process started with
    start_new_session=True and everything it started, whatever process group they moved to)."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, _, _, session = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[:4]
            command = open(f"/proc/{entry}/cmdline").read().replace("\0", " ").strip()
        except OSError:  # ended meanwhile
            continue
        if int(session) == sid and state != "Z":
            found[int(entry)] = command[:200]
    return found


def _kill_session(sid: int) -> None:
    for pid in _session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
