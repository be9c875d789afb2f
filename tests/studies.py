"""Running `python -m hpo.search` from the tests, and reading a study's MLflow store."""

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from .readme_commands import readme_commands

REPO = Path(__file__).resolve().parents[1]
# The README's smoke study: a study named try1, its MLflow store in m.db and its Ray storage in ray/.
SMOKE = next(c for c in readme_commands() if c.startswith("python -m hpo.search --preset smoke"))
SMOKE_NAME, SMOKE_DB = "try1", "m.db"


def study_cmd(root, tmp, name, *extra):
    return [
        sys.executable,
        "-m",
        "hpo.search",
        "--preset",
        "smoke",
        "--data-root",
        str(root),
        "--tracking-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--storage-path",
        str(tmp / "ray"),
        "--name",
        name,
        *extra,
    ]


def run_study(cmd, timeout=900):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def runs(tmp, name, role, db="mlflow.db"):
    client = MlflowClient(f"sqlite:///{tmp / db}")
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`hpo.role` = '{role}'", max_results=1000
    )


def smoke_runs(tmp, role):
    """(client, runs of this role) of the README's smoke study that ran in the folder tmp."""
    return runs(tmp, SMOKE_NAME, role, SMOKE_DB)
