"""`python -m hypermaml.train`: a real run's JSON line, and one-line exit-2 errors for bad input, before
anything is written. Also the one CLI layer both entry points are built with (hypermaml.cli)."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hypermaml import cli
from hypermaml.config import ConfigError, HyperMAMLConfig, TrainConfig, from_flat
from hypermaml.train import main as train_main
from tests.helpers import run_main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "hypermaml.train", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


TINY = [
    "--epochs",
    "1",
    "--steps-per-epoch",
    "2",
    "--meta-batch",
    "2",
    "--query",
    "5",
    "--val-episodes",
    "10",
    "--test-episodes",
    "10",
]


RUN = [
    "--algorithm",
    "hypermaml",
    "--dataset",
    "omniglot",
    "--way",
    "5",
    "--shot",
    "1",
    "--seed",
    "0",
    "--device",
    "cpu",
    "--hn-hidden",
    "64",
    "--aggregation",
    "concat",
    *TINY,
]


@pytest.fixture(scope="module")
def finished_run(omniglot_root, tmp_path_factory):
    """A tiny run's output folder and its process."""
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("--data-root", str(omniglot_root), *RUN, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_cli_run_ends_with_one_json_line(omniglot_root, finished_run):
    out, proc = finished_run
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"algorithm", "val_acc", "test_acc", "test_ci95", "train_episodes_per_s", "adapt_ms_per_task"} <= set(result)
    assert result["algorithm"] == "hypermaml" and 0 <= result["test_acc"] <= 1
    assert "epoch   1" in proc.stderr  # progress
    assert {p.name for p in out.iterdir()} >= {"config.json", "last.pt", "best.pt", "result.json"}
    assert json.loads((out / "config.json").read_text())["aggregation"] == "concat"
    # the same folder again without --resume is refused, with --resume it continues (nothing left to train)
    again = run_cli("--algorithm", "hypermaml", "--data-root", str(omniglot_root), *TINY, "--output", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr
    resumed = run_cli("--data-root", str(omniglot_root), *RUN, "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        (["--hn-hidden", "32"], "hn_hidden 64 -> 32"),
        (["--outer-lr", "0.01", "--seed", "3"], "outer_lr 0.001 -> 0.01, seed 0 -> 3"),
        (["--meta-batch", "4"], "meta_batch 2 -> 4"),
    ],
)
def test_resume_with_other_settings_is_one_line_and_writes_nothing(omniglot_root, finished_run, change, message):
    out, _ = finished_run
    before = files_of(out)
    proc = run_cli("--data-root", str(omniglot_root), *RUN, *change, "--output", str(out), "--resume")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert files_of(out) == before  # config.json and the checkpoints untouched


def cuda_device_this_machine_lacks() -> str:
    import torch

    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def test_a_cuda_device_that_is_not_there_is_one_line_before_anything_is_written(omniglot_root, finished_run, tmp_path):
    device = cuda_device_this_machine_lacks()
    fresh = tmp_path / "never"
    proc = run_cli("--data-root", str(omniglot_root), *TINY, "--device", device, "--output", str(fresh))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"device {device!r} requested" in proc.stderr and not fresh.exists()
    out, _ = finished_run
    before = files_of(out)
    proc = run_cli("--data-root", str(omniglot_root), *RUN, "--device", device, "--output", str(out), "--resume")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"device {device!r} requested" in proc.stderr and "Traceback" not in proc.stderr
    assert files_of(out) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--algorithm", "protonet"], "invalid choice: 'protonet'"),
        (["--way", "700"], "way 700 exceeds the 688 classes"),
        (["--shot", "10", "--query", "15"], "shot + query = 25 exceeds the 20 images per Omniglot class"),
        (["--train-query", "20"], "shot + train_query = 21 exceeds the 20 images per Omniglot class"),
        (["--aggregation", "max", "--algorithm", "hypermaml"], "invalid choice: 'max'"),
        (["--hn-hidden", "64"], "--hn-hidden is not a setting of maml"),
        (["--inner-lr", "-1"], "inner_lr must be a positive number"),
        (["--device", "tpu"], "device must be cpu, cuda or cuda:N"),
        (["--meta-batch", "zero"], "invalid int value"),
    ],
)
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(omniglot_root, tmp_path, capsys, args, message):
    """Run as main(ARGS) in this process (run_main); test_missing_data_root_is_an_error runs the real process."""
    out = tmp_path / "never"
    status, stdout, stderr = run_main(
        train_main, ["--data-root", str(omniglot_root), *TINY, *args, "--output", str(out)], capsys
    )
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    assert stdout == ""
    assert not out.exists()


def test_missing_data_root_is_an_error(tmp_path):
    proc = run_cli("--data-root", str(tmp_path / "nowhere"), *TINY, "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "nowhere" in proc.stderr and not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(
        "--data-root",
        str(empty),
        "--cache-dir",
        str(tmp_path / "fresh-cache"),
        *TINY,
        "--output",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 2 and "--download" in proc.stderr and not (tmp_path / "out").exists()
    assert list(empty.iterdir()) == []


# ---- the one CLI layer ---------------------------------------------------------------------------------


def test_both_entry_points_are_built_by_one_layer_from_the_config_fields():
    from hpo.search import build_parser as search_parser
    from hpo.spec import StudySpec
    from hypermaml.train import build_parser as train_parser

    train, search = train_parser(), search_parser()
    assert type(train) is type(search) is cli.Parser
    # every field is a flag, spelled --field-name unless the field says otherwise
    for parser, classes in ((train, (TrainConfig, HyperMAMLConfig)), (search, (StudySpec,))):
        options = {option for action in parser._actions for option in action.option_strings}
        for cls in classes:
            for field in dataclasses.fields(cls):
                if field.name != "spaces":
                    assert cli.flag(field) in options, field.name
    assert cli.flag(next(f for f in dataclasses.fields(StudySpec) if f.name == "time_budget_s")) == "--time-budget"
    # what was not given is absent: a preset or the dataclass default applies
    args = train.parse_args(["--output", "x", "--no-warmup", "--hn-hidden", "8", "--aggregation", "concat"])
    assert cli.given(args, HyperMAMLConfig) == {"warmup": False, "hn_hidden": 8, "aggregation": "concat"}
    assert cli.given(args, TrainConfig) == {}
    args = search.parse_args(["--algorithms", "maml", "hypermaml", "--time-budget", "60", "--download"])
    assert cli.given(args, StudySpec) == {"algorithms": ("maml", "hypermaml"), "time_budget_s": 60.0, "download": True}


def test_bounds_and_choices_are_checked_where_the_fields_declare_them():
    from hpo.spec import resolve

    for values, message in (
        ({"way": 1}, "way must be at least 2, got 1"),
        ({"task_chunk": -1}, "task_chunk must be at least 0, got -1"),
        ({"outer_lr": 0.0}, "outer_lr must be a positive number, got 0.0"),
        ({"outer_lr": float("nan")}, "outer_lr must be a finite number"),
        ({"algorithm": "hypermaml", "hn_layers": 1}, "hn_layers must be at least 2, got 1"),
        ({"algorithm": "hypermaml", "aggregation": "max"}, "unknown aggregation 'max'; choose one of: mean, concat"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            from_flat(values)
    for overrides, message in (
        ({"trials": 0}, "trials must be at least 1, got 0"),
        ({"replicate_seeds": 1}, "replicate_seeds must be at least 2, got 1 (the seed-to-seed variance needs two)"),
        ({"equivalence_margin": -1.0}, "equivalence_margin must be a positive number"),
        ({"algorithms": ("maml", "protonet")}, "unknown algorithms 'protonet'"),
        ({"epochs": 0}, "epochs must be at least 1, got 0"),  # a run setting: checked by TrainConfig's own bound
        ({"query": 20}, "shot + query = 21 exceeds"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve("smoke", overrides)
