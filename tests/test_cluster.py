"""Running the study on a Ray cluster.

1. Without starting anything: ray_cluster.yaml validates against the cluster-config schema shipped in the
   installed ray package, and deploy/kuberay-rayjob.yaml against KubeRay v1.7.0's RayJob CRD with unknown
   fields rejected (a misspelled field fails); every command they, deploy/Dockerfile and docs/cluster.md
   give names files, CLI commands, flags, modules, study files, extras and resources that exist.
2. A real 2-node Ray cluster on this machine (a head and a worker node, 1 CPU each, token auth on) plus a
   real `mlflow server`: the smoke study submitted with `ray job submit` runs its trials on both nodes and
   logs everything to the server.
3. The worker node is killed mid-study: its trial is retried on the head and nothing is lost in MLflow.
4. Without the cluster's token, the job API refuses a submission.

Every process the tests start is stopped, also when a test fails: by its process group (each `ray start`
and the MLflow server get their own), and Ray's worker processes, which Ray puts in process groups of
their own, as descendants of our raylets. The module checks that none is left.
"""

import functools
import importlib.metadata
import importlib.util
import json
import operator
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
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import optuna
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from hpo.screenshot import free_ports
from tests.readme_commands import bash_commands, inline_commands

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
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
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


# ---- 1. the KubeRay RayJob --------------------------------------------------------------------------------

# KubeRay v1.7.0's RayJob CRD (ray-operator/config/crd/bases/ray.io_rayjobs.yaml), unchanged, beside the
# repository like the test data.
KUBERAY_CRD = REPO.parent / "shared" / "reference" / "kuberay" / "ray.io_rayjobs.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
PAPER_STUDY = "studies/paper-aws.yaml"  # the cluster's study, on AWS and on Kubernetes


def manifest() -> list[dict]:
    return [d for d in yaml.safe_load_all(RAYJOB_YAML.read_text()) if d]


def rayjob() -> dict:
    return next(d for d in manifest() if d.get("kind") == "RayJob")


@functools.cache
def crd_schema() -> dict:
    """The schema the API server validates a `ray.io/v1` RayJob with, as KubeRay publishes it."""
    assert KUBERAY_CRD.is_file(), f"{KUBERAY_CRD} is missing: KubeRay v1.7.0's RayJob CRD"
    crd = yaml.load(KUBERAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1.4 MB
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def strict(schema: dict) -> dict:
    """The schema as `kubectl apply --validate=strict` applies it: an unknown field is an error. The schema
    alone allows one (the API server drops it without a word, so a misspelled field would silently do
    nothing), so every object schema with properties is closed, unless it keeps unknown fields."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(s) for name, s in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    return out


def validate(job: dict, schema: dict) -> None:
    # A CRD's OpenAPI v3.0 schema uses JSON Schema draft 4's keywords; its x-kubernetes-* ones are ignored.
    jsonschema.validate(job, schema, cls=jsonschema.Draft4Validator)


def head_containers(job: dict) -> dict[str, dict]:
    return {c["name"]: c for c in job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]}


def test_rayjob_manifest_validates_against_kuberays_crd_with_unknown_fields_rejected():
    job = rayjob()
    validate(job, strict(crd_schema()))
    spec = job["spec"]
    # The cluster is deleted an hour after the job ends, whatever its outcome (the header and docs say so).
    assert (spec["shutdownAfterJobFinishes"], spec["ttlSecondsAfterFinished"]) == (True, 3600)
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"} and cluster["rayVersion"] == ray.__version__
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no trials on the head

    # MLflow beside the head, on the pod's loopback, its SQLite store on the claim the manifest creates.
    from mlflow.cli import cli as mlflow_cli

    sidecar = head_containers(job)["mlflow"]
    server = mlflow_cli.commands["server"].make_context("mlflow server", sidecar["command"][2:]).params
    assert sidecar["command"][:2] == ["mlflow", "server"] and server["host"] == "127.0.0.1"
    (mount,) = sidecar["volumeMounts"]
    assert server["backend_store_uri"] == f"sqlite:///{mount['mountPath']}/mlflow.db"
    volume = next(v for v in cluster["headGroupSpec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    claims = [d["metadata"]["name"] for d in manifest() if d["kind"] == "PersistentVolumeClaim"]
    assert claims == [volume["persistentVolumeClaim"]["claimName"]]

    # Every pod runs the one image deploy/Dockerfile builds; the workers have a GPU each, scaled from 0.
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert len({c["image"] for g in groups for c in g["template"]["spec"]["containers"]}) == 1
    for group in cluster["workerGroupSpecs"]:
        (worker,) = group["template"]["spec"]["containers"]
        assert group["minReplicas"] == 0 and worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize(
    "where, field, typo",
    [
        (["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        (
            ["spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 1],
            "volumeMounts",
            "volumeMount",
        ),
    ],
    ids=["spec", "head-pod-container"],
)
def test_a_misspelled_field_fails_the_validation_and_the_error_names_it(where, field, typo):
    job = rayjob()
    parent = functools.reduce(operator.getitem, where, job)
    parent[typo] = parent.pop(field)
    validate(job, crd_schema())  # the schema as published lets it through: the API server would drop it
    with pytest.raises(jsonschema.ValidationError) as error:
        validate(job, strict(crd_schema()))
    assert error.value.message == f"Additional properties are not allowed ('{typo}' was unexpected)"
    assert list(error.value.absolute_path) == where


def test_the_rayjob_runs_the_paper_study_file_in_the_image_of_the_dockerfile():
    dockerfile = DOCKERFILE.read_text()
    # The official image of the Ray version installed here (the one pyproject pins), never ray-ml.
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert re.findall(r"^FROM (\S+)", dockerfile, flags=re.M) == [f"rayproject/ray:{ray.__version__}-{py}-gpu"]
    (checkout,) = re.findall(r"^COPY --chown=ray \. (\S+)$", dockerfile, flags=re.M)
    # The commit the image holds reaches the study the way `python -m hpo.provenance` hands it to a job.
    from hpo.provenance import COMMIT_ENV, DIRTY_ENV

    assert re.findall(r"^ARG (\w+)=", dockerfile, flags=re.M) == [COMMIT_ENV, DIRTY_ENV]
    assert f"ENV {COMMIT_ENV}=${COMMIT_ENV} {DIRTY_ENV}=${DIRTY_ENV}" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".git" in ignored and "**/.venv" in ignored

    # The entrypoint: the paper study file, as it is, from the image's checkout.
    job = rayjob()
    cd, study = job["spec"]["entrypoint"].split(" && ")
    assert cd == f"cd {checkout}"
    words = shlex.split(study)
    assert words[:5] == ["python", "-m", "hpo.search", "--config", PAPER_STUDY]
    spec = study_spec(words[3:])
    assert spec == study_spec(["--config", PAPER_STUDY])
    assert f"mkdir -p {spec.data_root} " in dockerfile  # Omniglot where the study reads it
    server = head_containers(job)["mlflow"]["command"]
    assert spec.tracking_uri == f"http://127.0.0.1:{server[server.index('--port') + 1]}"
    assert spec.storage_path.startswith("s3://") and spec.address == "auto"


# ---- 1. the documented commands ---------------------------------------------------------------------------

# The AWS SDK's variables that name an S3-compatible server and its credentials (tests/test_storage_s3.py).
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
OPERATORS = ("&&", "||", "|", ";", "&")


def command_words(command: str) -> list[list[str]]:
    """The simple commands of a documented shell line, each as its words: a placeholder such as
    `<submission id>` is one word, and a quoted "$(...)" stays one word."""
    command = re.sub(r"<([^<>]+)>", lambda m: "<" + m.group(1).replace(" ", "-") + ">", command)
    found, part = [], []
    for word in [*shlex.split(command), ";"]:
        if word in OPERATORS:
            found += [part] if part else []
            part = []
        else:
            part.append(word)
    return found


def check_command(command: str, complete: bool = True) -> None:
    """Check a documented command against what it names, without starting anything. `complete`: a line of
    a ```bash block, parsed in full; else an inline one, which may name a command without its arguments."""
    for words in command_words(command):
        program, args = words[0], words[1:]
        checks = {
            "ray": check_ray,
            "python": check_python,
            "kubectl": check_kubectl,
            "docker": check_docker,
            "pip": check_pip,
            "export": check_export,
        }
        assert program in checks, f"{command}: no test checks a {program} command"
        checks[program](args, complete)


def check_ray(args: list[str], complete: bool) -> None:
    """The subcommand and its flags exist in the installed ray CLI; a complete command parses in full
    (click's own parser: arguments, option values), its files exist, and its job entrypoint is checked."""
    import click
    from ray.scripts.scripts import cli

    command, rest = cli, list(args)
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    name = f"ray {' '.join(args[: len(args) - len(rest)])}"
    assert not hasattr(command, "commands"), f"ray {' '.join(args)}: not a ray command"
    if not complete:
        assert _flags(rest) <= _click_options(command), f"ray {' '.join(args)}"
        return
    try:
        params = command.make_context(name, rest).params
    except click.ClickException as error:
        pytest.fail(f"ray {' '.join(args)}: {error.format_message()}")
    if params.get("cluster_config_file"):
        assert (REPO / params["cluster_config_file"]).is_file(), params["cluster_config_file"]
    if params.get("working_dir"):  # the checkout: the docs run every command from its root
        assert params["working_dir"] == ".", params["working_dir"]
    if params.get("runtime_env_json"):
        launcher = re.fullmatch(r"\$\((.*)\)", params["runtime_env_json"])
        assert launcher and launcher.group(1) == "python -m hpo.provenance", params["runtime_env_json"]
        provenance_env()
    if params.get("entrypoint"):
        assert params["entrypoint"][0] == "python", params["entrypoint"]
        check_python(list(params["entrypoint"][1:]), complete)


def provenance_env() -> dict:
    """`python -m hpo.provenance`, run in the checkout: the runtime environment that hands its commit to a job."""
    from hpo.provenance import COMMIT_ENV, DIRTY_ENV, STOP_WAIT_ENV

    proc = subprocess.run(
        [sys.executable, "-m", "hpo.provenance"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    env = json.loads(proc.stdout)
    assert set(env) == {"env_vars"} and set(env["env_vars"]) == {COMMIT_ENV, DIRTY_ENV, STOP_WAIT_ENV}
    assert re.fullmatch(r"[0-9a-f]{40}", env["env_vars"][COMMIT_ENV]) and env["env_vars"][DIRTY_ENV] in (
        "true",
        "false",
    )
    return env


def study_spec(args: list[str]):
    """The study `python -m hpo.search ARGS` resolves to, its --config file read from the checkout."""
    from hpo.search import build_parser, resolve_spec

    try:
        parsed = build_parser().parse_args(args)
    except SystemExit:  # argparse's exit on a flag or value it does not take (its message is on stderr)
        pytest.fail(f"python -m hpo.search {shlex.join(args)}: refused by its parser")
    if parsed.config:
        assert (REPO / parsed.config).is_file(), parsed.config
        parsed.config = str(REPO / parsed.config)
    return resolve_spec(parsed)


def check_python(args: list[str], complete: bool) -> None:
    assert args[0] == "-m", args
    module, rest = args[1], args[2:]
    if module == "hpo.search":
        study_spec(rest)
    elif module == "hpo.provenance":
        assert rest == []
        provenance_env()
    else:
        assert importlib.util.find_spec(module), module


def check_kubectl(args: list[str], complete: bool) -> None:
    """kubectl is not installed here: the names it is given must be the manifest's (file, RayJob, the
    submitter Job KubeRay names after it, claim, head container and its mounts, RayJob status fields)."""
    verb, words = args[0], iter(args[1:])
    assert verb in ("apply", "get", "port-forward", "logs", "cp", "delete"), verb
    job = rayjob()
    names = {
        "rayjob": job["metadata"]["name"],
        "job": job["metadata"]["name"],
        "pvc": next(d["metadata"]["name"] for d in manifest() if d["kind"] == "PersistentVolumeClaim"),
    }
    # Options taking a value; `logs -f` and `get -w` follow and watch.
    valued = ("-c", "-o", "-l") if verb == "logs" else ("-f", "-c", "-o", "-l")
    options, positional = {}, []
    for word in words:
        if word in valued:
            options[word] = next(words)
        elif word.startswith("--validate="):
            assert word == "--validate=strict"
        elif word not in ("-w", "-f"):
            positional.append(word)
    if "-f" in options:
        assert options["-f"] == RAYJOB_YAML.relative_to(REPO).as_posix(), f"kubectl {' '.join(args)}: not the manifest"
    kind, _, name = (positional[0] if positional else "").partition("/")
    if kind in names:
        assert (name or positional[1]) == names[kind], args
    if options.get("-o", "").startswith("jsonpath="):
        status = crd_schema()["properties"]["status"]["properties"]
        fields = re.findall(r"\{\.status\.(\w+)\}", options["-o"])
        assert fields and set(fields) <= set(status), options["-o"]
    if "-c" in options:
        assert options["-c"] in head_containers(job), f"kubectl {' '.join(args)}: no such head container"
    if verb == "cp":  # kubectl cp -c CONTAINER POD:PATH ...: a file on a volume the container mounts
        mounts = [m["mountPath"] for m in head_containers(job)[options["-c"]].get("volumeMounts", [])]
        paths = [w.split(":", 1)[1] for w in positional if ":" in w]
        assert paths and all(any(p.startswith(m.rstrip("/") + "/") for m in mounts) for p in paths), (paths, mounts)


def check_docker(args: list[str], complete: bool) -> None:
    """`docker build` of deploy/Dockerfile from the checkout's root, passing its commit: each --build-arg
    is an ARG of the Dockerfile, and its value (run by bash here) is what `python -m hpo.provenance` says."""
    assert args[0] == "build"
    words, options, build_args, context = iter(args[1:]), {}, {}, []
    for word in words:
        if word == "--build-arg":
            name, _, value = next(words).partition("=")
            build_args[name] = subprocess.run(
                ["bash", "-c", f'printf %s "{value}"'], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
            ).stdout
        elif word in ("-f", "-t"):
            options[word] = next(words)
        else:
            context.append(word)
    assert context == ["."] and REPO / options["-f"] == DOCKERFILE, args
    assert set(build_args) <= set(re.findall(r"^ARG (\w+)=", DOCKERFILE.read_text(), flags=re.M)), build_args
    from hpo.provenance import COMMIT_ENV, DIRTY_ENV

    assert build_args == {k: provenance_env()["env_vars"][k] for k in (COMMIT_ENV, DIRTY_ENV)}, build_args


def check_pip(args: list[str], complete: bool) -> None:
    """pip install of this checkout's extras (those pyproject.toml defines) and of packages that exist."""
    assert args[0] == "install"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for word in args[1:]:
        if word == "-e":
            continue
        if match := re.fullmatch(r"\.(?:\[([\w,-]+)\])?", word):
            assert set((match.group(1) or "").split(",")) - {""} <= set(extras), word
        else:
            importlib.metadata.version(word)  # installed here: a real distribution name


def check_export(args: list[str], complete: bool) -> None:
    """Variables the tests set the same way: Ray's token auth of the client, the AWS SDK's S3 endpoint."""
    s3_test = (REPO / "tests" / "test_storage_s3.py").read_text()
    for assignment in args:
        name, _, value = assignment.partition("=")
        if name in AUTH_VARS:
            assert (name, value) == ("RAY_AUTH_MODE", "token"), assignment
        else:
            assert name in S3_ENV and f"{name}=" in s3_test, assignment


def test_every_command_in_the_cluster_doc_names_what_exists():
    text = CLUSTER_DOC.read_text()
    for command in bash_commands(text):
        check_command(command)
    for command in inline_commands(text):
        check_command(command, complete=False)
    # and every file it names
    for path in re.findall(r"`((?:studies|deploy|tests|docs)/[\w./-]+|ray_cluster\.yaml|pyproject\.toml)`", text):
        assert (REPO / path).is_file(), path


@pytest.mark.parametrize("path", [CLUSTER_DOC, RAYJOB_YAML], ids=lambda p: p.name)
def test_documented_study_commands_parse(path):
    text = rayjob()["spec"]["entrypoint"] if path == RAYJOB_YAML else path.read_text()
    commands = _study_commands(text)
    assert commands, f"no python -m hpo.search in {path}"
    paper = study_spec(["--config", PAPER_STUDY])
    assert (paper.preset, paper.address, paper.gpus_per_trial, paper.cpus_per_trial, paper.max_concurrent) == (
        "paper",
        "auto",
        0.25,
        1.0,
        16,
    )
    assert paper.storage_path.startswith("s3://") and paper.tracking_uri == "http://127.0.0.1:5000"
    specs = [study_spec(words) for words in commands]
    # The cluster's study is the study file as it is, on AWS and on Kubernetes.
    assert paper in specs
    assert all(spec == paper or spec.storage_path.startswith("s3://") for spec in specs)  # and the S3 example


# ---- 2-4. a real 2-node cluster on this machine -----------------------------------------------------------


@dataclass
class Cluster:
    root: Path  # temp dirs of both nodes, the token, the MLflow store, Tune's storage
    token: str
    env: dict[str, str]  # what every process of the cluster and every authorized client gets
    dashboard: str
    mlflow_uri: str
    gcs_address: str = ""  # where a node joins
    head_id: str = ""
    worker_id: str = ""
    groups: dict[str, int] = field(default_factory=dict)  # name -> process group id we started
    children: list[subprocess.Popen] = field(default_factory=list)  # to reap once killed


def _node_ports(ports: list[int], worker_ports: str) -> list[str]:
    # Two nodes on one host: every port a node opens must differ from the other node's.
    names = (
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
    )
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


# Every node: 1 CPU, no GPU, a small object store.
NODE_RESOURCES = ["--num-cpus=1", "--num-gpus=0", "--object-store-memory=300000000", "--disable-usage-stats"]


def _join_worker(cluster: Cluster, name: str, ports: list[int], worker_ports: str) -> None:
    """Start a worker node `name` (its temp dir root/name) that joins the cluster's head."""
    _ray_start(
        cluster,
        name,
        [
            f"--address={cluster.gcs_address}",
            f"--temp-dir={cluster.root / name}",
            *NODE_RESOURCES,
            *_node_ports(ports, worker_ports),
        ],
    )


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
    ours = {
        pid: info[2] for pid, info in table.items() if pid != os.getpid() and (info[1] in groups or marker in info[3])
    }
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
    return subprocess.run(
        [str(BIN / "ray"), *args], env=env or cluster.env, capture_output=True, text=True, timeout=timeout
    )


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
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_USAGE_STATS_ENABLED="0",
        HYPERMAML_CACHE=str(image_cache),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    gcs, dash, client, mlflow_port, *ports = free_ports(16)
    c = Cluster(root, token, env, f"http://127.0.0.1:{dash}", f"http://127.0.0.1:{mlflow_port}", f"127.0.0.1:{gcs}")
    try:
        # No --node-ip-address=127.0.0.1: Ray 2.60 replaces a loopback address with this machine's IP anyway
        # (services.resolve_ip_for_localhost), and its GCS and raylets listen on all interfaces, guarded by
        # the token. The dashboard (job API) is bound to loopback.
        _ray_start(
            c,
            "head",
            [
                "--head",
                f"--port={gcs}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--ray-client-server-port={client}",
                f"--temp-dir={root / 'head'}",
                *NODE_RESOURCES,
                *_node_ports(ports[:6], "21000-21499"),
            ],
        )
        _join_worker(c, "worker", ports[6:12], "21500-21999")
        (root / "mlflow").mkdir()
        with open(root / "mlflow" / "server.log", "w") as log:
            _start_group(
                c,
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{root}/mlflow/mlflow.db",
                    "--artifacts-destination",
                    str(root / "mlflow" / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--workers",
                    "1",
                ],
                env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # the lean server: 2 processes
                cwd=root / "mlflow",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
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


SMOKE_STUDY_FILE = "studies/smoke-cluster.yaml"  # relative: it travels with the working dir


def study_args(cluster: Cluster, omniglot_root: Path, name: str, *extra: str) -> list[str]:
    """The cluster's smoke study file, with this machine's paths and the test's name given beside it."""
    return [
        "python",
        "-m",
        "hpo.search",
        "--config",
        SMOKE_STUDY_FILE,
        "--data-root",
        str(omniglot_root),
        "--tracking-uri",
        cluster.mlflow_uri,
        "--storage-path",
        str(cluster.root / "ray"),
        "--name",
        name,
        *extra,
    ]


def submit(cluster: Cluster, submission_id: str, entrypoint: list[str], env=None) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir . --runtime-env-json "$(python -m hpo.provenance)"` from the checkout,
    as docs/cluster.md says. The upload honours .gitignore (no .venv) and leaves .git out; the job's
    `python` is this venv's (PATH), and its image cache the session's."""
    runtime_env = provenance_env()
    runtime_env["env_vars"]["HYPERMAML_CACHE"] = cluster.env["HYPERMAML_CACHE"]
    return subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            cluster.dashboard,
            "--submission-id",
            submission_id,
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--no-wait",
            "--",
            *entrypoint,
        ],
        env=env or cluster.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def wait_job(cluster: Cluster, submission_id: str, timeout: float) -> tuple[str, str]:
    deadline = time.time() + timeout
    while True:
        status, info = api(cluster, f"/api/jobs/{submission_id}")
        assert status == 200, info
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info["status"], api(cluster, f"/api/jobs/{submission_id}/logs")[1]["logs"]
        if time.time() > deadline:
            api(cluster, f"/api/jobs/{submission_id}/stop", method="POST")
            pytest.fail(
                f"job {submission_id} still {info['status']} after {timeout} s: "
                f"{api(cluster, f'/api/jobs/{submission_id}/logs')[1]['logs'][-3000:]}"
            )
        time.sleep(2)


def study_runs(cluster: Cluster, name: str, role: str):
    client = MlflowClient(cluster.mlflow_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client, []
    return client, client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`hpo.role` = '{role}'", max_results=1000
    )


def check_trial_runs(client: MlflowClient, trials, per_algorithm: int = 4) -> None:
    """`per_algorithm` trial runs of each algorithm, one per Ray trial, each with every epoch it ran logged
    exactly once."""
    counts = {a: sum(r.data.tags["algorithm"] == a for r in trials) for a in ("maml", "hypermaml")}
    assert counts == {"maml": per_algorithm, "hypermaml": per_algorithm}
    assert len({r.data.tags["ray.trial_id"] for r in trials}) == 2 * per_algorithm
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
    assert (
        f"MLflow: {cluster.mlflow_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        in logs
    ), logs[-3000:]
    _, trials = study_runs(cluster, "cluster-smoke", "trial")
    check_trial_runs(client, trials, per_algorithm=2)  # the study file's 2 trials
    assert {r.data.tags["node_id"] for r in trials} == {cluster.head_id, cluster.worker_id}  # both nodes ran trials
    # The launching checkout's commit reached every run, though the job's copy of it has no .git.
    commit, dirty = (
        git("rev-parse", "HEAD"),
        "true" if git("status", "--porcelain", "--untracked-files=no") else "false",
    )
    _, replicates = study_runs(cluster, "cluster-smoke", "replicate")
    _, summaries = study_runs(cluster, "cluster-smoke", "summary")
    for run in [*parents, *trials, *replicates, *summaries]:
        tags = run.data.tags
        assert (tags["mlflow.source.git.commit"], tags["hpo.git_dirty"], tags["hpo.job_submission_id"]) == (
            commit,
            dirty,
            job,
        )
    _, summaries = study_runs(cluster, "cluster-smoke", "summary")
    assert len(summaries) == 1 and summaries[0].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(summaries[0].info.run_id)}
    assert {"summary.md", "summary.csv", "spec.json", "plots"} <= artifacts
    _, replicates = study_runs(cluster, "cluster-smoke", "replicate")
    assert {r.data.tags["algorithm"] for r in replicates} == {"maml", "hypermaml"}
    assert all(r.info.status == "FINISHED" and "test_acc" in r.data.metrics for r in replicates)
    # The artifacts went through the server into its artifact store.
    assert list((cluster.root / "mlflow" / "artifacts").rglob("summary.md"))


def test_ray_job_stop_ends_the_study_and_its_running_runs_killed(cluster, omniglot_root):
    job = f"cluster-stop-{secrets.token_hex(3)}"
    proc = submit(cluster, job, study_args(cluster, omniglot_root, "cluster-stop", "--scheduler", "none"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    deadline = time.time() + 180
    while True:  # stop it once a trial is under way: it has reported an epoch and is still running
        assert time.time() < deadline, "no trial got under way"
        status, info = api(cluster, f"/api/jobs/{job}")
        assert info["status"] in ("PENDING", "RUNNING"), api(cluster, f"/api/jobs/{job}/logs")[1]["logs"][-3000:]
        client, trials = study_runs(cluster, "cluster-stop", "trial")
        if any(r.info.status == "RUNNING" and client.get_metric_history(r.info.run_id, "val_acc") for r in trials):
            break
        time.sleep(0.5)
    stopped = ray_cli(cluster, "job", "stop", "--address", cluster.dashboard, job)  # as docs/cluster.md prints it
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    status, logs = wait_job(cluster, job, timeout=120)
    assert status == "STOPPED", logs[-3000:]
    assert "interrupted: cluster-stop stopped" in logs, logs[-3000:]
    _, parents = study_runs(cluster, "cluster-stop", "study")
    assert [p.info.status for p in parents] == ["KILLED"]
    _, trials = study_runs(cluster, "cluster-stop", "trial")
    statuses = [r.info.status for r in trials]
    assert "KILLED" in statuses and set(statuses) <= {"KILLED", "FINISHED"}, statuses  # none left RUNNING


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


def test_three_searches_run_side_by_side_and_survive_a_killed_worker_node(cluster, omniglot_root):
    """Three independent searches per algorithm (1 trial each): their trials run at once on both nodes;
    the worker node is killed mid-study, its trial resumes on the head, and nothing is lost or logged
    twice; each search's Optuna study holds only its own trials. A replacement node that joins afterwards
    runs part of the rest."""
    job = f"cluster-fault-{secrets.token_hex(3)}"
    # No ASHA, so every trial runs all its epochs: a trial caught on the worker is still running when killed.
    proc = submit(
        cluster,
        job,
        study_args(
            cluster,
            omniglot_root,
            "cluster-fault",
            "--max-failures",
            "3",
            "--scheduler",
            "none",
            "--searches",
            "3",
            "--trials",
            "1",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Kill the worker node once a trial on it has reported its first epoch (so it has a checkpoint), with two to go.
    deadline = time.time() + 420
    victim = None
    while victim is None:
        assert time.time() < deadline, "no trial ran on the worker node"
        status, info = api(cluster, f"/api/jobs/{job}")
        assert info["status"] in ("PENDING", "RUNNING"), api(cluster, f"/api/jobs/{job}/logs")[1]["logs"][-3000:]
        client, trials = study_runs(cluster, "cluster-fault", "trial")
        for run in trials:
            # In the second algorithm's phase, so the first one's ran on both nodes throughout.
            if (
                run.data.tags.get("node_id") == cluster.worker_id
                and run.info.status == "RUNNING"
                and run.data.tags["algorithm"] == "hypermaml"
            ):
                if len(client.get_metric_history(run.info.run_id, "val_acc")) == 1:  # 2 epochs to go
                    victim = run.data.tags["ray.trial_id"]
        time.sleep(0.3)
    _kill_node(cluster, "worker", cluster.root / "worker")
    # A replacement node joins, as a cluster's autoscaler would start one, once the killed node's trial has
    # resumed on the head: the rest of the study (its replicates) runs on two nodes again.
    deadline = time.time() + 300
    while not any(
        r.data.tags["ray.trial_id"] == victim and r.data.tags.get("node_id") == cluster.head_id
        for r in study_runs(cluster, "cluster-fault", "trial")[1]
    ):
        assert time.time() < deadline, "the killed node's trial did not resume on the head"
        time.sleep(0.5)
    _join_worker(cluster, "replacement", free_ports(6), "22000-22499")
    deadline = time.time() + 60
    # The killed node can still be listed ALIVE until the head's health checks of it time out: the new
    # node is the one with another id.
    while not (
        joined := [
            n
            for n in nodes(cluster)
            if n["state"] == "ALIVE" and n["node_id"] not in (cluster.head_id, cluster.worker_id)
        ]
    ):
        assert time.time() < deadline, "the replacement node did not join"
        time.sleep(1)
    replacement_id = joined[0]["node_id"]

    status, logs = wait_job(cluster, job, timeout=900)
    assert status == "SUCCEEDED", logs[-4000:]
    client, trials = study_runs(cluster, "cluster-fault", "trial")
    check_trial_runs(client, trials, per_algorithm=3)
    # Searches side by side: trials of different searches ran at the same time, on the two nodes while both
    # were up (the first algorithm's phase), and on what was left after the kill.
    overlapping = [
        (a, b)
        for a in trials
        for b in trials
        if a.data.tags["algorithm"] == b.data.tags["algorithm"]
        and a.data.tags["hpo.search"] < b.data.tags["hpo.search"]
        and a.info.start_time < b.info.end_time
        and b.info.start_time < a.info.end_time
    ]
    assert {a.data.tags["algorithm"] for a, _ in overlapping} == {"maml", "hypermaml"}, "no two searches overlapped"
    assert any(
        a.data.tags["algorithm"] == "maml"
        and {a.data.tags["node_id"], b.data.tags["node_id"]} == {cluster.head_id, cluster.worker_id}
        for a, b in overlapping
    ), "no two searches ran on both nodes at once"
    storage = f"sqlite:///{cluster.root / 'ray' / 'cluster-fault' / 'optuna.db'}"
    for algorithm in ("maml", "hypermaml"):
        for k, name in enumerate(
            (f"cluster-fault-{algorithm}", f"cluster-fault-{algorithm}-search1", f"cluster-fault-{algorithm}-search2")
        ):
            numbers = sorted(t.number for t in optuna.load_study(study_name=name, storage=storage).trials)
            mine = sorted(
                int(r.data.params["hpo_number"])
                for r in trials
                if r.data.tags["algorithm"] == algorithm and r.data.tags["hpo.search"] == str(k)
            )
            assert numbers == mine == [0], (name, numbers, mine)
    _, replicates = study_runs(cluster, "cluster-fault", "replicate")
    assert len(replicates) == len({r.data.tags["ray.trial_id"] for r in replicates})
    for algorithm in (
        "maml",
        "hypermaml",
    ):  # each search's one trial (its published reference), reference margin 0 in the study file, x 2 seeds
        for k in ("0", "1", "2"):
            mine = [r for r in replicates if r.data.tags["algorithm"] == algorithm and r.data.tags["hpo.search"] == k]
            assert len(mine) == 2 and all(r.info.status == "FINISHED" for r in mine), (algorithm, k, len(mine))
    retried = [r for r in trials if int(r.data.tags.get("retries", "0")) >= 1]
    assert victim in {r.data.tags["ray.trial_id"] for r in retried}, f"trial {victim} was not retried"
    for run in retried:  # resumed from its checkpoint on the surviving node, every epoch logged once
        assert run.data.tags["node_id"] == cluster.head_id
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == list(range(1, EPOCHS + 1))
    assert any(r.data.tags["node_id"] == replacement_id for r in replicates)  # the study used the new node
    alive = [n for n in nodes(cluster) if n["state"] == "ALIVE"]
    assert sorted(n["node_id"] for n in alive) == sorted([cluster.head_id, replacement_id])
    _, parents = study_runs(cluster, "cluster-fault", "study")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    _, summaries = study_runs(cluster, "cluster-fault", "summary")
    assert len(summaries) == 1
