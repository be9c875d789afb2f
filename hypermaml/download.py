"""Fetching Omniglot's two zips.

The zips come from the official source (checked by md5) or from a mirror named in
$HYPERMAML_DOWNLOAD_URL (checked by their contents), all or nothing.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import shutil
import socket
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from .config import OMNIGLOT_IMAGES_PER_CLASS, DataError  # the drawings per character: one source

OMNIGLOT_SETS = ("images_background", "images_evaluation")
# The official source, and the md5 of its zips (the ones torchvision's datasets.Omniglot checks).
OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OMNIGLOT_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
# A mirror instead: a folder URL holding both zips. A mirror's zips are checked by their contents.
DOWNLOAD_URL_ENV = "HYPERMAML_DOWNLOAD_URL"
# (alphabets, characters) of each image set: 50 alphabets and 1623 characters in all.
OMNIGLOT_CONTENTS = {"images_background": (30, 964), "images_evaluation": (20, 659)}
DOWNLOAD_TIMEOUT_S = 60  # a source that sends nothing for this long is unreachable
OMNIGLOT_DRAWINGS = OMNIGLOT_IMAGES_PER_CLASS


def omniglot_source() -> tuple[str, dict[str, str] | None]:
    """(folder URL, md5 of each zip or None): the official source, or the mirror in $HYPERMAML_DOWNLOAD_URL."""
    mirror = os.environ.get(DOWNLOAD_URL_ENV, "").strip()
    return (mirror.rstrip("/"), None) if mirror else (OMNIGLOT_URL, OMNIGLOT_MD5)


def fetch_omniglot(target: Path, names: Sequence[str], base_url: str, md5: dict[str, str] | None) -> None:
    """Download the zips `names` from the folder URL `base_url` into `target`: checked, all or nothing.

    With `md5` (the official source) each zip must match its checksum; every zip must also open and
    hold its image set's alphabets, characters and drawings. The zips are downloaded into a temporary
    folder beside `target` and moved into `target` only when all of them passed, so a failed or
    interrupted download leaves nothing half-written there. A fetch that worked says so in one line
    on stderr; one that failed is a DataError (one line) and prints nothing.
    """
    # Only needed here, and slow to import: see _decode_and_crop in datasets.py.
    from torchvision.datasets.utils import check_integrity, download_url

    source = (
        f"check the mirror in ${DOWNLOAD_URL_ENV}" if md5 is None else f"set ${DOWNLOAD_URL_ENV} to a mirror folder"
    )
    advice = f"nothing was kept; {source}, or pass --data-root DIR holding the two zips"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-download-"))
    try:
        for name in names:
            url = f"{base_url}/{name}.zip"
            try:
                with _download_quietly():
                    download_url(url, root=str(staging), filename=f"{name}.zip")
            except (OSError, ValueError, RuntimeError, http.client.HTTPException) as error:
                raise DataError(f"could not fetch {url} ({error}); {advice}") from None
            path = staging / f"{name}.zip"
            if md5 is not None and not check_integrity(str(path), md5[name]):
                raise DataError(f"{url} does not have the official md5 checksum {md5[name]}; {advice}")
            problem = _omniglot_zip_problem(path, name)
            if problem is not None:
                raise DataError(f"{url} is not Omniglot's {name}.zip: {problem}; {advice}")
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.replace(staging / f"{name}.zip", target / f"{name}.zip")  # each a complete, checked file
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    check = "the official checksums" if md5 is not None else "their contents"
    files = " and ".join(f"{name}.zip" for name in names)
    print(f"fetched Omniglot's {files} from {base_url} into {target} (checked by {check})", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _download_quietly() -> Iterator[None]:
    """A timeout for a silent source, and no progress bar (torchvision draws one on stderr)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        socket.setdefaulttimeout(previous)


def _omniglot_zip_problem(path: Path, name: str) -> str | None:
    """What is wrong with a zip that should hold Omniglot's image set `name`, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every entry and checks its CRC
            pngs = [entry.split("/") for entry in archive.namelist() if entry.endswith(".png")]
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        return f"not a readable zip ({error})"
    if damaged is not None:
        return f"{damaged} is damaged"
    characters = {tuple(parts[-3:-1]) for parts in pngs if len(parts) >= 3}
    alphabets = {alphabet for alphabet, _ in characters}
    want_alphabets, want_characters = OMNIGLOT_CONTENTS[name]
    found = (len(alphabets), len(characters), len(pngs))
    if found != (want_alphabets, want_characters, want_characters * OMNIGLOT_DRAWINGS):
        return (
            f"it holds {found[0]} alphabets, {found[1]} characters and {found[2]} drawings, "
            f"not {want_alphabets}, {want_characters} and {want_characters * OMNIGLOT_DRAWINGS}"
        )
    return None
