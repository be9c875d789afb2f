"""Running the study on a Ray cluster.

1. ray_cluster.yaml validates against the cluster-config schema shipped in the installed ray package, and
   every command it (and docs/cluster.md, deploy/kuberay-rayjob.yaml) runs names files, CLI commands,
   flags and modules that exist.
2. A real 2-node Ray cluster on this machine (a head and a worker node, 1 CPU each, token auth on) plus a
   real `mlflow server`: the smoke study submitted with `ray job submit` runs its trials on both nodes and
   logs everything to the server.
3. The worker node is killed mid-study: its trial is retried on the head and nothing is lost in MLflow.
4. Without the cluster's token, the job API refuses a submission.

Every process the tests start is stopped, also when a test fails: by its process group (each `ray start`
and the MLflow server get their own), and Ray's worker processes, which Ray puts in process groups of
their own, as descendants of our raylets. The module checks that none is left.
"""

import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from hpo.screenshot import free_ports

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
CLUSTER_DOC = REPO / "docs" / "cluster.md"
RAYJOB_YAML = REPO / "deploy" / "kuberay-rayjob.yaml"
BIN = Path(sys.executable).parent  # the ray and mlflow CLIs of this environment
AUTH_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
EPOCHS = 3  # the smoke preset's


# ---- 1. the cluster launcher config -------------------------------------------------------------------

def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    commands = [c for key in keys for c in config.get(key, [])]
    for node_type in config["available_node_types"].values():
        commands += node_type.get("initialization_commands", []) + node_type.get("worker_setup_commands", [])
    return commands


def test_cluster_yaml_validates_against_the_schema_in_the_ray_package():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = cluster_config()
    jsonschema.validate(config, schema)

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0  # a CPU head, no trials on it
    gpu_types = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu_types and all(t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 for t in gpu_types)

    # The official image of the Ray version installed here (the one pyproject pins), never ray-ml.
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    docker = config["docker"]
    assert docker["head_image"] == f"rayproject/ray:{ray.__version__}-{py}"
    assert docker["worker_image"] == f"rayproject/ray:{ray.__version__}-{py}-gpu"
    assert not any("ray-ml" in image for image in (docker["head_image"], docker["worker_image"]))


def _click_options(command) -> set[str]:
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


def _segments(commands: list[str], program: str, subcommand: str) -> list[list[str]]:
    """The argument lists of every `program subcommand ...` in the commands (split at shell operators)."""
    found = []
    for command in commands:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        part: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "&", "|"):
                if part[:2] == [program, subcommand]:
                    found.append(part[2:])
                part = []
            elif part or token == program:  # a simple command starts with the program (after VAR=x prefixes)
                part.append(token)
    return found


def _flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def test_cluster_yaml_commands_use_existing_files_commands_and_flags():
    from mlflow.cli import cli as mlflow_cli
    from ray.scripts.scripts import cli as ray_cli

    config = cluster_config()
    commands = all_commands(config)
    mounts = config["file_mounts"]
    # The project is this checkout; the token folder is where `ray get-auth-token --generate` writes.
    assert (REPO / mounts["~/hypermaml-hpo"]).resolve() == REPO
    assert mounts["~/.ray"] == "~/.ray"
    assert config["rsync_filter"] == [".gitignore"] and ".venv/" in (REPO / ".gitignore").read_text()

    for path in re.findall(r"pip install (?:-q )?-e (\S+)", " ".join(commands)):
        assert (REPO / mounts[path] / "pyproject.toml").is_file(), path
    for module in re.findall(r"python -m ([\w.]+)", " ".join(commands)):
        assert importlib.util.find_spec(module), module

    ray_subcommands = {c for c in re.findall(r"\bray (\w[\w-]*)", " ".join(commands))}
    assert ray_subcommands == {"start", "stop"} and ray_subcommands <= set(ray_cli.commands)
    starts = _segments(commands, "ray", "start")
    assert len(starts) == 2
    for args in starts:
        assert _flags(args) <= _click_options(ray_cli.commands["start"]), args
    for command in commands:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command  # token auth on every node
    head_start = next(a for a in starts if "--head" in a)
    assert "--dashboard-host=127.0.0.1" in head_start

    servers = _segments(commands, "mlflow", "server")
    assert len(servers) == 1
    assert _flags(servers[0]) <= _click_options(mlflow_cli.commands["server"]), servers[0]
    server = " ".join(servers[0])
    assert "--host 127.0.0.1" in server and "sqlite:////" in server and "s3://" in server
    assert all((BIN / tool).is_file() for tool in ("ray", "mlflow", "pip"))


def _study_commands(text: str) -> list[list[str]]:
    """Every `python -m hpo.search ...` in a text (in its ```bash blocks if it is Markdown), with shell line
    continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    text = "\n".join(blocks) if blocks else text
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if "python -m hpo.search" in line:
            words = shlex.split(line.split("python -m hpo.search", 1)[1].split(" #")[0].strip().strip('"'))
            found.append(words)
    return found


def rayjob() -> dict:
    return next(d for d in yaml.safe_load_all(RAYJOB_YAML.read_text()) if d and d.get("kind") == "RayJob")


@pytest.mark.parametrize("path", [CLUSTER_DOC, RAYJOB_YAML], ids=lambda p: p.name)
def test_documented_study_commands_parse(path):
    from hpo.search import build_parser

    text = rayjob()["spec"]["entrypoint"] if path == RAYJOB_YAML else path.read_text()
    commands = _study_commands(text)
    assert commands, f"no python -m hpo.search in {path}"
    for words in commands:
        args = build_parser().parse_args(words)  # exits 2 on an unknown flag
        assert args.address == "auto" and args.gpus_per_trial == 0.25, words
        assert "://" in args.storage_path and args.tracking_uri.startswith("http://")


def test_rayjob_manifest_turns_token_auth_on():
    spec = rayjob()["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    images = {c["image"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]] for c in g["template"]["spec"]["containers"]}
    assert images and "ray-ml" not in " ".join(images)


# ---- 2-4. a real 2-node cluster on this machine -----------------------------------------------------------

@dataclass
class Cluster:
    root: Path  # temp dirs of both nodes, the token, the MLflow store, Tune's storage
    token: str
    env: dict[str, str]  # what every process of the cluster and every authorized client gets
    dashboard: str
    mlflow_uri: str
    head_id: str = ""
    worker_id: str = ""
    groups: dict[str, int] = field(default_factory=dict)  # name -> process group id we started
    children: list[subprocess.Popen] = field(default_factory=list)  # to reap once killed


def _node_ports(ports: list[int], worker_ports: str) -> list[str]:
    # Two nodes on one host: every port a node opens must differ from the other node's.
    names = ("--node-manager-port", "--object-manager-port", "--metrics-export-port", "--runtime-env-agent-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")
    low, high = worker_ports.split("-")
    return [f"{n}={p}" for n, p in zip(names, ports)] + [f"--min-worker-port={low}", f"--max-worker-port={high}"]


def _start_group(cluster: Cluster, name: str, cmd: list[str], env=None, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env or cluster.env, start_new_session=True, **kwargs)
    cluster.groups[name] = proc.pid  # a new session: its process group id is its pid
    cluster.children.append(proc)
    return proc


def _ray_start(cluster: Cluster, name: str, args: list[str]) -> None:
    log = cluster.root / f"{name}-start.log"
    with open(log, "w") as out:
        proc = _start_group(cluster, name, [str(BIN / "ray"), "start", *args], stdout=out, stderr=subprocess.STDOUT)
        # `ray start` returns once its daemons run; they stay in its process group.
        assert proc.wait(120) == 0, log.read_text()[-3000:]


def _processes() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (parent pid, process group, start time, command line) of every live (not zombie) process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            continue
        if stat[0] != "Z":  # a zombie is dead already, only not yet reaped by its parent
            table[int(entry.name)] = (int(stat[1]), int(stat[2]), stat[19], cmdline)
    return table


def _started_by(groups: set[int], marker: str) -> dict[int, str]:
    """pid -> start time of the processes in these process groups or with `marker` (a temp dir) in their
    command line, and of all their descendants: Ray gives each worker process its own process group and
    renames it (ray::...), so only its parent, a raylet of ours, tells it is ours."""
    table = _processes()
    ours = {pid: info[2] for pid, info in table.items()
            if pid != os.getpid() and (info[1] in groups or marker in info[3])}
    grown = True
    while grown:
        children = {pid: info[2] for pid, info in table.items() if info[0] in ours and pid not in ours}
        ours.update(children)
        grown = bool(children)
    return ours


def _signal(processes: dict[int, str], groups: set[int], sig) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
    table = _processes()
    for pid, started in processes.items():
        if pid in table and table[pid][2] == started:  # still that process, not a reused pid
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _alive(processes: dict[int, str]) -> list[int]:
    table = _processes()
    return [pid for pid, started in processes.items() if pid in table and table[pid][2] == started]


def _kill_node(cluster: Cluster, name: str, temp_dir: Path) -> None:
    """SIGKILL a node: its daemons (its `ray start` process group) and every worker process they started."""
    group = {cluster.groups[name]}
    _signal(_started_by(group, f"{temp_dir}/"), group, signal.SIGKILL)


def _stop_all(cluster: Cluster) -> list[int]:
    """Stop everything we started (SIGTERM, then SIGKILL); the pids still alive afterwards."""
    groups = set(cluster.groups.values())
    processes = _started_by(groups, f"{cluster.root}/")  # taken first: orphans lose their parent
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal(processes, groups, sig)
        deadline = time.time() + 10
        while _alive(processes) and time.time() < deadline:
            time.sleep(0.5)
    for child in cluster.children:
        child.poll()  # reap
    return _alive(processes) + _alive(_started_by(groups, f"{cluster.root}/"))


def api(cluster: Cluster, path: str, token: str | None = None, method="GET"):
    """(HTTP status, decoded JSON or text) of a dashboard API call: with the cluster's token by default,
    another token, or none at all (token="")."""
    request = urllib.request.Request(cluster.dashboard + path, method=method)
    if token != "":
        request.add_header("Authorization", f"Bearer {cluster.token if token is None else token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body


def ray_cli(cluster: Cluster, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env or cluster.env, capture_output=True, text=True, timeout=timeout)


def nodes(cluster: Cluster) -> list[dict]:
    proc = ray_cli(cluster, "list", "nodes", "--address", cluster.dashboard, "--format", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(image_cache):
    # A short folder in /tmp: Ray's socket paths under it must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_file = root / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    # Our own token for every process we start, by path: the user's ~/.ray/auth_token is neither read nor
    # touched (RAY_AUTH_TOKEN would win over the path, so it is dropped).
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0",
               HYPERMAML_CACHE=str(image_cache), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    gcs, dash, client, mlflow_port, *ports = free_ports(16)
    c = Cluster(root, token, env, f"http://127.0.0.1:{dash}", f"http://127.0.0.1:{mlflow_port}")
    try:
        # No --node-ip-address=127.0.0.1: Ray 2.60 replaces a loopback address with this machine's IP anyway
        # (services.resolve_ip_for_localhost), and its GCS and raylets listen on all interfaces, guarded by
        # the token. The dashboard (job API) is bound to loopback.
        common = ["--num-cpus=1", "--num-gpus=0", "--object-store-memory=300000000", "--disable-usage-stats"]
        _ray_start(c, "head", ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                               f"--ray-client-server-port={client}", f"--temp-dir={root / 'head'}", *common,
                               *_node_ports(ports[:6], "21000-21499")])
        _ray_start(c, "worker", [f"--address=127.0.0.1:{gcs}", f"--temp-dir={root / 'worker'}", *common,
                                 *_node_ports(ports[6:12], "21500-21999")])
        (root / "mlflow").mkdir()
        with open(root / "mlflow" / "server.log", "w") as log:
            _start_group(c, "mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow/mlflow.db",
                                       "--artifacts-destination", str(root / "mlflow" / "artifacts"),
                                       "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
                         env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # the lean server: 2 processes
                         cwd=root / "mlflow", stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while len([n for n in nodes(c) if n["state"] == "ALIVE"]) < 2:
            assert time.time() < deadline, f"the worker node did not join: {nodes(c)}"
            time.sleep(1)
        for node in nodes(c):
            if node["is_head_node"]:
                c.head_id = node["node_id"]
            else:
                c.worker_id = node["node_id"]
        _wait_http(c.mlflow_uri + "/health", 60)
        yield c
    finally:
        left = _stop_all(c)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes left running: {left}"


def study_args(cluster: Cluster, omniglot_root: Path, name: str, *extra: str) -> list[str]:
    return ["python", "-m", "hpo.search", "--preset", "smoke", "--data-root", str(omniglot_root),
            "--tracking-uri", cluster.mlflow_uri, "--storage-path", str(cluster.root / "ray"), "--name", name,
            "--address", "auto", "--max-concurrent", "2", "--cpus-per-trial", "1", *extra]


def submit(cluster: Cluster, submission_id: str, entrypoint: list[str], env=None) -> subprocess.CompletedProcess:
    # The working dir upload honours .gitignore (no .venv); the job's `python` is this venv's (PATH).
    runtime_env = {"env_vars": {"HYPERMAML_CACHE": cluster.env["HYPERMAML_CACHE"]}}
    return ray_cli(cluster, "job", "submit", "--address", cluster.dashboard, "--submission-id", submission_id,
                   "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--no-wait",
                   "--", *entrypoint, env=env)


def wait_job(cluster: Cluster, submission_id: str, timeout: float) -> tuple[str, str]:
    deadline = time.time() + timeout
    while True:
        status, info = api(cluster, f"/api/jobs/{submission_id}")
        assert status == 200, info
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info["status"], api(cluster, f"/api/jobs/{submission_id}/logs")[1]["logs"]
        if time.time() > deadline:
            api(cluster, f"/api/jobs/{submission_id}/stop", method="POST")
            pytest.fail(f"job {submission_id} still {info['status']} after {timeout} s: "
                        f"{api(cluster, f'/api/jobs/{submission_id}/logs')[1]['logs'][-3000:]}")
        time.sleep(2)


def study_runs(cluster: Cluster, name: str, role: str):
    client = MlflowClient(cluster.mlflow_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client, []
    return client, client.search_runs([experiment.experiment_id], filter_string=f"tags.`hpo.role` = '{role}'",
                                      max_results=1000)


def check_trial_runs(client: MlflowClient, trials) -> None:
    """4 + 4 trial runs, one per Ray trial, each with every epoch it ran logged exactly once."""
    counts = {a: sum(r.data.tags["algorithm"] == a for r in trials) for a in ("maml", "hypermaml")}
    assert counts == {"maml": 4, "hypermaml": 4}
    assert len({r.data.tags["ray.trial_id"] for r in trials}) == 8
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)) and steps, f"epochs lost or logged twice: {steps}"
        assert run.info.status == "FINISHED", run.info.status  # ASHA-stopped trials end FINISHED too
        assert run.data.tags["node"].endswith("/" + run.data.tags["node_id"][:12])


def test_smoke_study_as_a_ray_job_uses_both_nodes_and_logs_to_the_mlflow_server(cluster, omniglot_root):
    job = f"cluster-smoke-{secrets.token_hex(3)}"
    proc = submit(cluster, job, study_args(cluster, omniglot_root, "cluster-smoke"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, logs = wait_job(cluster, job, timeout=480)
    assert status == "SUCCEEDED", logs[-4000:]

    client, parents = study_runs(cluster, "cluster-smoke", "study")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # The driver's stdout ends as on a laptop: the verdict, the summary's path and the server's MLflow link.
    experiment_id = parents[0].info.experiment_id
    assert parents[0].data.tags["verdict"] in logs and "Summary: " in logs
    assert f"MLflow: {cluster.mlflow_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning" in logs, logs[-3000:]
    _, trials = study_runs(cluster, "cluster-smoke", "trial")
    check_trial_runs(client, trials)
    assert {r.data.tags["node_id"] for r in trials} == {cluster.head_id, cluster.worker_id}  # both nodes ran trials
    _, summaries = study_runs(cluster, "cluster-smoke", "summary")
    assert len(summaries) == 1 and summaries[0].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(summaries[0].info.run_id)}
    assert {"summary.md", "summary.csv", "spec.json", "plots"} <= artifacts
    _, replicates = study_runs(cluster, "cluster-smoke", "replicate")
    assert {r.data.tags["algorithm"] for r in replicates} == {"maml", "hypermaml"}
    assert all(r.info.status == "FINISHED" and "test_acc" in r.data.metrics for r in replicates)
    # The artifacts went through the server into its artifact store.
    assert list((cluster.root / "mlflow" / "artifacts").rglob("summary.md"))


def test_job_api_refuses_a_submission_without_the_clusters_token(cluster, tmp_path):
    # No token at all: auth off on the client side, and a HOME without ~/.ray/auth_token.
    no_token = {k: v for k, v in cluster.env.items() if k not in AUTH_VARS}
    no_token.update(RAY_AUTH_MODE="disabled", HOME=str(tmp_path))
    # A wrong token: token auth on, but not the cluster's secret.
    wrong_token = {**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # The dashboard answers 401 (missing token) or 403 (invalid token); the CLI turns those into these lines.
    for env, expected in ((no_token, "Missing authentication token"), (wrong_token, "Invalid authentication token")):
        job = f"refused-{secrets.token_hex(3)}"
        proc = submit(cluster, job, ["python", "-c", "print('should not run')"], env=env)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "AuthenticationError" in output and expected in output, output[-2000:]
        assert api(cluster, f"/api/jobs/{job}")[0] == 404  # no job was created
    assert api(cluster, "/api/jobs/", token="")[0] == 401
    assert api(cluster, "/api/jobs/", token="not-the-token")[0] == 403
    status, jobs = api(cluster, "/api/jobs/")
    assert status == 200 and not any(j["submission_id"].startswith("refused-") for j in jobs)


def test_killed_worker_node_trials_are_retried_on_the_head_and_nothing_is_lost(cluster, omniglot_root):
    job = f"cluster-fault-{secrets.token_hex(3)}"
    # No ASHA, so every trial runs all its epochs: a trial caught on the worker is still running when killed.
    proc = submit(cluster, job, study_args(cluster, omniglot_root, "cluster-fault", "--max-failures", "3",
                                           "--scheduler", "none"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Kill the worker node once a trial on it has reported its first epoch (so it has a checkpoint), with two to go.
    deadline = time.time() + 180
    victim = None
    while victim is None:
        assert time.time() < deadline, "no trial ran on the worker node"
        status, info = api(cluster, f"/api/jobs/{job}")
        assert info["status"] in ("PENDING", "RUNNING"), api(cluster, f"/api/jobs/{job}/logs")[1]["logs"][-3000:]
        client, trials = study_runs(cluster, "cluster-fault", "trial")
        for run in trials:
            if run.data.tags.get("node_id") == cluster.worker_id and run.info.status == "RUNNING":
                if len(client.get_metric_history(run.info.run_id, "val_acc")) == 1:  # 2 epochs to go
                    victim = run.data.tags["ray.trial_id"]
        time.sleep(0.3)
    _kill_node(cluster, "worker", cluster.root / "worker")

    status, logs = wait_job(cluster, job, timeout=600)
    assert status == "SUCCEEDED", logs[-4000:]
    client, trials = study_runs(cluster, "cluster-fault", "trial")
    check_trial_runs(client, trials)
    retried = [r for r in trials if int(r.data.tags.get("retries", "0")) >= 1]
    assert victim in {r.data.tags["ray.trial_id"] for r in retried}, f"trial {victim} was not retried"
    for run in retried:  # resumed from its checkpoint on the surviving node, every epoch logged once
        assert run.data.tags["node_id"] == cluster.head_id
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == list(range(1, EPOCHS + 1))
    alive = [n for n in nodes(cluster) if n["state"] == "ALIVE"]
    assert [n["node_id"] for n in alive] == [cluster.head_id]
    _, parents = study_runs(cluster, "cluster-fault", "study")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    _, summaries = study_runs(cluster, "cluster-fault", "summary")
    assert len(summaries) == 1
