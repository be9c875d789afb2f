"""Shared fixtures: the real Omniglot beside the repo (../shared), one decoded-image cache per session, and
one smoke study per session (its store and stdout are read by several test files)."""

import os
from pathlib import Path

import pytest

OMNIGLOT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    if not (OMNIGLOT_ROOT / "images_background.zip").is_file():
        pytest.fail(f"real Omniglot not found at {OMNIGLOT_ROOT} (tests expect ../shared beside the repo)")
    return OMNIGLOT_ROOT


@pytest.fixture(scope="session", autouse=True)
def image_cache(tmp_path_factory) -> Path:
    """One cache for the whole session, also seen by subprocesses (CLI tests) through the env var."""
    cache = Path(os.environ.get("HYPERMAML_TEST_CACHE") or tmp_path_factory.mktemp("image-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERMAML_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def smoke(omniglot_root, tmp_path_factory):
    """(folder, finished process) of `python -m hpo.search --preset smoke --name smoke`, run once."""
    from .studies import run_study, study_cmd  # imports MLflow: only for the tests that run a study

    tmp = tmp_path_factory.mktemp("smoke")
    proc = run_study(study_cmd(omniglot_root, tmp, "smoke"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc
