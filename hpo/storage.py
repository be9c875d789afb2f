"""A study's own files (spec.json, summary.md, summary.csv) beside Ray Tune's results, in a local
folder or at a remote URI (s3://, gs://, ...).

Remote paths go through pyarrow's filesystems, the layer Ray Tune itself stores through, so a study
file lands wherever Tune's checkpoints do, with the same credentials and endpoint: for S3, the AWS
SDK's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL
for an S3-compatible server other than AWS).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs


def is_remote(path: str) -> bool:
    """A URI such as s3://bucket/key, not a folder of this machine."""
    return "://" in path


def _resolve(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    return pyarrow.fs.FileSystem.from_uri(path)


def read_text(path: str) -> str | None:
    """The file's text, or None when there is no such file."""
    if not is_remote(path):
        local = Path(path)
        return local.read_text() if local.is_file() else None
    filesystem, inner = _resolve(path)
    if filesystem.get_file_info(inner).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(inner) as stream:
        return stream.read().decode()


def write_text(path: str, text: str) -> None:
    """Write the file, creating its folder (a remote object is written whole, or not at all)."""
    if not is_remote(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: a killed driver leaves the old file or the new one
        return
    filesystem, inner = _resolve(path)
    filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(inner) as stream:
        stream.write(text.encode())
