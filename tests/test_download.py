"""Fetching Omniglot when there is no data root, from a real HTTP server on 127.0.0.1 (our machines have
no internet) serving the zips of the test data. Those zips are repacked, so their checksums differ from
the official ones: to us they are a mirror ($HYPERMAML_DOWNLOAD_URL), checked by their contents, and
the official checksums must reject them."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hypermaml.config import DataError
from hypermaml.datasets import load_split
from hypermaml.download import DOWNLOAD_URL_ENV, OMNIGLOT_MD5, OMNIGLOT_SETS, fetch_omniglot
from tests.helpers import QuietHandler, files_under

REPO = Path(__file__).resolve().parents[1]
ZIPS = [f"{name}.zip" for name in OMNIGLOT_SETS]


class CutOffHandler(QuietHandler):
    """Announces the whole file, sends half of it and hangs up: an interrupted transfer."""

    def do_GET(self):
        data = (Path(self.directory) / Path(self.path).name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def bad_mirror(kind: str, omniglot_root: Path, tmp_path: Path, serve) -> str:
    """The URL of a source that must be refused."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in ZIPS:
        shutil.copy(omniglot_root / name, folder / name)
    if kind == "truncated zip":
        data = (folder / ZIPS[0]).read_bytes()
        (folder / ZIPS[0]).write_bytes(data[: len(data) // 2])
    elif kind == "wrong zip":  # a readable zip, but the other image set's 20 alphabets
        shutil.copy(omniglot_root / ZIPS[1], folder / ZIPS[0])
    elif kind == "missing zip":
        (folder / ZIPS[1]).unlink()
    elif kind == "interrupted transfer":
        return serve(folder, CutOffHandler)
    elif kind == "unreachable":
        return f"http://127.0.0.1:{closed_port()}"
    return serve(folder)


BAD_SOURCES = {
    "truncated zip": "images_background.zip: not a readable zip",
    "wrong zip": "holds 20 alphabets, 659 characters and 13180 drawings, not 30, 964 and 19280",
    "missing zip": "could not fetch http://127.0.0.1",
    "interrupted transfer": "images_background.zip: not a readable zip",
    "unreachable": "Connection refused",
}


# ---- the library: fetch_omniglot and load_split -----------------------------------------------------


def test_a_mirror_is_fetched_whole_checked_by_its_contents_and_said_in_one_line(omniglot_root, tmp_path, serve, capfd):
    url = serve(omniglot_root)
    target = tmp_path / "cache" / "omniglot"
    fetch_omniglot(target, OMNIGLOT_SETS, url, None)
    for name in ZIPS:
        assert (target / name).read_bytes() == (omniglot_root / name).read_bytes()
    assert files_under(tmp_path / "cache") == [
        "omniglot",
        "omniglot/images_background.zip",
        "omniglot/images_evaluation.zip",
    ]
    out, err = capfd.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"fetched Omniglot's images_background.zip and images_evaluation.zip from {url} "
        f"into {target} (checked by their contents)"
    ]


def test_the_official_checksums_refuse_zips_that_are_not_the_official_ones(omniglot_root, tmp_path, serve, capfd):
    url = serve(omniglot_root)  # the same images, repacked: other bytes
    with pytest.raises(DataError) as error:
        fetch_omniglot(tmp_path / "cache" / "omniglot", OMNIGLOT_SETS, url, OMNIGLOT_MD5)
    message = str(error.value)
    assert "\n" not in message
    assert (
        f"{url}/images_background.zip does not have the official md5 checksum {OMNIGLOT_MD5['images_background']}"
        in message
    )
    assert files_under(tmp_path / "cache") == []  # nothing kept
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("kind", BAD_SOURCES)
def test_a_bad_source_is_one_line_and_leaves_nothing(kind, omniglot_root, tmp_path, serve, capfd):
    url = bad_mirror(kind, omniglot_root, tmp_path, serve)
    with pytest.raises(DataError) as error:
        fetch_omniglot(tmp_path / "cache" / "omniglot", OMNIGLOT_SETS, url, None)
    message = str(error.value)
    assert "\n" not in message and BAD_SOURCES[kind] in message, message
    assert "nothing was kept" in message and f"${DOWNLOAD_URL_ENV}" in message
    assert files_under(tmp_path / "cache") == []
    assert capfd.readouterr().err == ""


def test_no_data_root_means_the_fetched_copy_in_the_cache_folder(omniglot_root, tmp_path, serve, monkeypatch, capfd):
    monkeypatch.setenv(DOWNLOAD_URL_ENV, serve(omniglot_root) + "/")  # a trailing slash is fine
    cache = tmp_path / "cache"
    val = load_split("omniglot", "val", "", cache_dir=cache)
    assert val.n_classes == 688
    assert len(capfd.readouterr().err.splitlines()) == 1  # fetched, and said so
    assert files_under(cache / "omniglot") == sorted(ZIPS)
    again = load_split("omniglot", "test", None, cache_dir=cache)  # no data root either way; nothing fetched again
    assert again.n_classes == 1692 and capfd.readouterr().err == ""
    with pytest.raises(DataError, match="only Omniglot is fetched automatically"):
        load_split("cub", "train", "", cache_dir=cache)


def test_download_fills_a_data_root_that_lacks_the_zips(omniglot_root, tmp_path, serve, monkeypatch):
    monkeypatch.setenv(DOWNLOAD_URL_ENV, serve(omniglot_root))
    root = tmp_path / "mine"
    with pytest.raises(DataError, match="pass --download"):
        load_split("omniglot", "val", tmp_path, cache_dir=tmp_path / "cache")
    val = load_split("omniglot", "val", root, cache_dir=tmp_path / "cache", download=True)
    assert val.n_classes == 688
    assert files_under(root) == sorted(ZIPS)


# ---- the study CLI: python -m hpo.search without a data root ---------------------------------------------


def search_env(tmp_path: Path, url: str) -> dict[str, str]:
    """No data root anywhere, an empty cache, the mirror, and this checkout's code."""
    env = {k: v for k, v in os.environ.items() if k != "HYPERMAML_DATA_ROOT"}
    env.update(
        HYPERMAML_CACHE=str(tmp_path / "cache"),
        **{DOWNLOAD_URL_ENV: url},
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    return env


def test_smoke_study_without_a_data_root_fetches_omniglot_and_reaches_its_verdict(omniglot_root, tmp_path, serve):
    url = serve(omniglot_root)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo.search",
            "--preset",
            "smoke",
            "--download",
            "--trials",
            "1",
            "--epochs",
            "1",
            "--scheduler",
            "none",
            "--reference-margin",
            "0",
        ],
        cwd=work,
        env=search_env(tmp_path, url),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    target = tmp_path / "cache" / "omniglot"
    fetched = [line for line in proc.stderr.splitlines() if "Omniglot" in line]
    assert fetched == [
        f"fetched Omniglot's images_background.zip and images_evaluation.zip from {url} "
        f"into {target} (checked by their contents)"
    ]
    for name in ZIPS:
        assert (target / name).read_bytes() == (omniglot_root / name).read_bytes()
    summary = (work / "ray_results" / "hypermaml-vs-maml" / "summary.md").read_text()
    verdict = summary.splitlines()[2]
    assert verdict.startswith("**") and "95% CI" in verdict and verdict.strip("*") in proc.stdout.splitlines()
    assert (work / "mlflow.db").is_file()


@pytest.mark.parametrize("kind", ["truncated zip", "unreachable"])
def test_a_failed_fetch_is_one_line_exit_2_and_nothing_half_written(kind, omniglot_root, tmp_path, serve):
    url = bad_mirror(kind, omniglot_root, tmp_path, serve)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.search", "--preset", "smoke", "--download"],
        cwd=work,
        env=search_env(tmp_path, url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m hpo.search: error: ") and BAD_SOURCES[kind] in lines[0], (
        proc.stderr
    )
    assert proc.stdout == ""
    assert files_under(tmp_path / "cache") == [] and files_under(work) == []  # no zip, no image cache, no study
