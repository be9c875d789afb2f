"""Running `python -m hpo.search` from the tests, and reading a study's MLflow store."""

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def study_cmd(root, tmp, name, *extra):
    return [sys.executable, "-m", "hpo.search", "--preset", "smoke", "--data-root", str(root),
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--storage-path", str(tmp / "ray"), "--name", name, *extra]


def run_study(cmd, timeout=900):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def runs(tmp, name, role):
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id], filter_string=f"tags.`hpo.role` = '{role}'", max_results=1000)
