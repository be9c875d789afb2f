"""Which code a study ran: the commit, and whether the tree had uncommitted changes, taken where the
study is launched.

Run locally, the study reads them from git in its own checkout. A Ray job runs a copy of the working
directory without `.git` (Ray's upload leaves it out), so the launching machine passes them in the
job's environment:

    ray job submit --working-dir . --runtime-env-json "$(python -m hpo.provenance)" -- python -m hpo.search ...

`python -m hpo.provenance` prints that runtime environment: {"env_vars": {"HPO_GIT_COMMIT": ...,
"HPO_GIT_DIRTY": ..., "RAY_JOB_STOP_WAIT_TIME_S": ...}}; the last gives the driver time, after
`ray job stop`'s SIGTERM, to end its MLflow runs KILLED before Ray's SIGKILL (3 s by default).
Every MLflow run of the study carries the commit as
`mlflow.source.git.commit` (MLflow's own tag), `hpo.git_dirty`, and on a cluster the job's
`hpo.job_submission_id`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

COMMIT_ENV, DIRTY_ENV = "HPO_GIT_COMMIT", "HPO_GIT_DIRTY"
COMMIT_TAG, DIRTY_TAG, SUBMISSION_TAG = "mlflow.source.git.commit", "hpo.git_dirty", "hpo.job_submission_id"
UNKNOWN = "unknown"
# Seconds Ray's job supervisor waits after `ray job stop`'s SIGTERM before it kills the driver.
STOP_WAIT_ENV, STOP_WAIT_S = "RAY_JOB_STOP_WAIT_TIME_S", 60
# Set by Ray's job supervisor for a job's driver: the job's config, whose metadata holds its submission id.
RAY_JOB_CONFIG_ENV, SUBMISSION_KEY = "RAY_JOB_CONFIG_JSON_ENV_VAR", "job_submission_id"


@dataclass(frozen=True)
class Provenance:
    commit: str  # 40 hex digits, or "unknown"
    dirty: str  # "true" (tracked files changed since the commit), "false", or "unknown"
    submission_id: str = ""  # the Ray job's, when the study runs as one

    def tags(self) -> dict[str, str]:
        tags = {COMMIT_TAG: self.commit, DIRTY_TAG: self.dirty}
        if self.submission_id:
            tags[SUBMISSION_TAG] = self.submission_id
        return tags

    def env_vars(self) -> dict[str, str]:
        return {COMMIT_ENV: self.commit, DIRTY_ENV: self.dirty}


def from_git(folder: Path) -> Provenance:
    """The checkout holding `folder`: HEAD, and whether tracked files differ from it (untracked files,
    such as a study's own results, do not count: `git describe --dirty`'s rule)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip()
    if not commit:
        return Provenance(UNKNOWN, UNKNOWN)
    status = git("status", "--porcelain", "--untracked-files=no")
    return Provenance(commit, UNKNOWN if status is None else ("true" if status.strip() else "false"))


def current() -> Provenance:
    """What this process runs: the launcher's word when it passed one (a Ray job), else git's."""
    if os.environ.get(COMMIT_ENV):
        found = Provenance(os.environ[COMMIT_ENV], os.environ.get(DIRTY_ENV) or UNKNOWN)
    else:
        found = from_git(Path(__file__).resolve().parent)
    return Provenance(found.commit, found.dirty, _submission_id())


def _submission_id() -> str:
    try:
        return str(json.loads(os.environ.get(RAY_JOB_CONFIG_ENV, "{}")).get("metadata", {}).get(SUBMISSION_KEY, ""))
    except (ValueError, AttributeError):
        return ""


def main() -> int:
    """Print the runtime environment that hands this checkout's commit to a Ray job."""
    print(json.dumps({"env_vars": {**from_git(Path.cwd()).env_vars(), STOP_WAIT_ENV: str(STOP_WAIT_S)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
