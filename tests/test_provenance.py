"""Which code a study ran: the launching checkout's commit and state, and a Ray job's submission id."""

import json
import subprocess
import sys

from hpo import provenance
from tests.studies import REPO


def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def test_the_launcher_prints_the_runtime_env_with_this_checkouts_commit():
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.provenance"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr == ""
    dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
    assert json.loads(proc.stdout) == {
        "env_vars": {
            "HPO_GIT_COMMIT": git("rev-parse", "HEAD"),
            "HPO_GIT_DIRTY": dirty,
            "RAY_JOB_STOP_WAIT_TIME_S": "60",
        }
    }


def test_an_uncommitted_change_makes_a_checkout_dirty_and_an_untracked_file_does_not(tmp_path):
    def run(*args):
        subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, check=True)

    run("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    run("add", "code.py")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "results.db").write_text("")  # a study's own output beside the code
    assert provenance.from_git(tmp_path) == provenance.Provenance(head, "false")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.from_git(tmp_path) == provenance.Provenance(head, "true")
    assert provenance.from_git(tmp_path.parent / "nowhere") == provenance.Provenance("unknown", "unknown")


def test_a_ray_job_reads_what_its_launcher_passed_and_its_submission_id(monkeypatch):
    monkeypatch.setenv("HPO_GIT_COMMIT", "f" * 40)
    monkeypatch.setenv("HPO_GIT_DIRTY", "true")
    # What Ray's job supervisor sets for a job's driver (ray.dashboard.modules.job.job_supervisor).
    monkeypatch.setenv(
        "RAY_JOB_CONFIG_JSON_ENV_VAR",
        json.dumps(
            {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc", "job_name": "raysubmit_abc"}}
        ),
    )
    assert provenance.current().tags() == {
        "mlflow.source.git.commit": "f" * 40,
        "hpo.git_dirty": "true",
        "hpo.job_submission_id": "raysubmit_abc",
    }
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.delenv("HPO_GIT_COMMIT")
    local = provenance.current()  # no launcher's word: git, in the package's own checkout
    assert local.commit == git("rev-parse", "HEAD") and local.submission_id == ""
