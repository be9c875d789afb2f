"""`python -m hypermaml.train`: a real run's JSON line, and one-line exit-2 errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "hypermaml.train", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--meta-batch", "2", "--query", "5", "--val-episodes", "10", "--test-episodes", "10"]


def test_cli_run_ends_with_one_json_line(omniglot_root, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--algorithm", "hypermaml", "--dataset", "omniglot", "--data-root", str(omniglot_root), "--way", "5",
                   "--shot", "1", "--seed", "0", "--device", "cpu", "--hn-hidden", "64", "--aggregation", "concat",
                   *TINY, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"algorithm", "val_acc", "test_acc", "test_ci95", "train_episodes_per_s", "adapt_ms_per_task"} <= set(result)
    assert result["algorithm"] == "hypermaml" and 0 <= result["test_acc"] <= 1
    assert "epoch   1" in proc.stderr  # progress
    assert {p.name for p in out.iterdir()} >= {"config.json", "last.pt", "best.pt", "result.json"}
    assert json.loads((out / "config.json").read_text())["aggregation"] == "concat"
    # the same folder again without --resume is refused, with --resume it continues (nothing left to train)
    again = run_cli("--algorithm", "hypermaml", "--data-root", str(omniglot_root), *TINY, "--output", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr
    resumed = run_cli("--algorithm", "hypermaml", "--data-root", str(omniglot_root), "--hn-hidden", "64",
                      "--aggregation", "concat", *TINY, "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--algorithm", "protonet"], "invalid choice: 'protonet'"),
        (["--way", "700"], "way 700 exceeds the 688 classes"),
        (["--shot", "10", "--query", "15"], "shot + query = 25 exceeds the 20 images per Omniglot class"),
        (["--aggregation", "max", "--algorithm", "hypermaml"], "invalid choice: 'max'"),
        (["--hn-hidden", "64"], "--hn-hidden is not a setting of maml"),
        (["--inner-lr", "-1"], "inner_lr must be a positive number"),
        (["--device", "tpu"], "device must be cpu, cuda or cuda:N"),
        (["--meta-batch", "zero"], "invalid int value"),
    ],
)
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(omniglot_root, tmp_path, args, message):
    out = tmp_path / "never"
    proc = run_cli("--data-root", str(omniglot_root), *TINY, *args, "--output", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()


def test_missing_data_root_is_an_error(tmp_path):
    proc = run_cli("--data-root", str(tmp_path / "nowhere"), *TINY, "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "nowhere" in proc.stderr and not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("--data-root", str(empty), "--cache-dir", str(tmp_path / "fresh-cache"), *TINY, "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and "--download" in proc.stderr and not (tmp_path / "out").exists()
