"""Shared fixtures: the real Omniglot zips and one decoded-image cache per session.

The zips are taken from $HYPERMAML_DATA_ROOT, else from ../shared/data/omniglot beside the repo. When
a collected test needs them (the `omniglot_root` fixture) and they are not there, the run stops before
any test with one line saying what to set. One smoke study runs per session (its store and stdout are
read by several test files).
"""

import os
from pathlib import Path

import pytest

from tests.helpers import QuietHandler, start_server, url_of

DATA_ROOT_ENV = "HYPERMAML_DATA_ROOT"
BESIDE_REPO = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
ZIPS = ("images_background.zip", "images_evaluation.zip")


def omniglot_folder() -> Path:
    from_env = os.environ.get(DATA_ROOT_ENV)
    return Path(from_env).expanduser() if from_env else BESIDE_REPO


def pytest_collection_modifyitems(config, items):
    root = omniglot_folder()
    if all((root / name).is_file() for name in ZIPS):
        return
    if any("omniglot_root" in item.fixturenames for item in items):
        source = f"${DATA_ROOT_ENV}" if os.environ.get(DATA_ROOT_ENV) else f"beside the repo; ${DATA_ROOT_ENV} is unset"
        raise pytest.UsageError(
            f"the tests need the real Omniglot zips, and {root} ({source}) has none: set ${DATA_ROOT_ENV} to a folder "
            f"holding {' and '.join(ZIPS)} (`python -m hpo.search` without --data-root fetches them into ~/.cache/hypermaml/omniglot)"
        )


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    return omniglot_folder()


@pytest.fixture(scope="session", autouse=True)
def image_cache(tmp_path_factory) -> Path:
    """One cache for the whole session, also seen by subprocesses (CLI tests) through the env var."""
    cache = Path(os.environ.get("HYPERMAML_TEST_CACHE") or tmp_path_factory.mktemp("image-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERMAML_CACHE", str(cache))
        yield cache


@pytest.fixture
def serve():
    """serve(folder, handler=QuietHandler) -> the URL of a real HTTP server on 127.0.0.1 serving the folder;
    every server started stops after the test."""
    servers = []

    def start(folder: Path, handler: type = QuietHandler) -> str:
        servers.append(start_server(folder, handler))
        return url_of(servers[-1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def smoke(omniglot_root, tmp_path_factory):
    """(the folder the README's smoke study ran in, its finished process), run once per session."""
    from .readme_commands import run_as_printed, scratch_checkout
    from .studies import SMOKE, SMOKE_DB, SMOKE_NAME  # imports MLflow: only for the tests that run a study

    assert (
        f"--name {SMOKE_NAME}" in SMOKE and f"sqlite:///$PWD/{SMOKE_DB}" in SMOKE and "--storage-path $PWD/ray" in SMOKE
    )
    checkout = scratch_checkout(tmp_path_factory.mktemp("smoke"), omniglot_root)
    proc = run_as_printed(SMOKE, checkout, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return checkout, proc
