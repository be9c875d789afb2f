"""`python -m hpo.search` input checks: each bad input is one error line and exit 2, before Ray starts."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from hpo.search import build_parser, main
from hpo.spec import PRESETS, Preset, StudySpec
from hypermaml import cli
from tests.helpers import run_main

REPO = Path(__file__).resolve().parents[1]

# Every flag hpo.search had before its flags came from StudySpec's fields, with a value.
FLAGS_BEFORE = {
    "--preset": "smoke",
    "--name": "n",
    "--data-root": "/d",
    "--cache-dir": "/c",
    "--dataset": "cub",
    "--way": "3",
    "--shot": "2",
    "--query": "4",
    "--train-query": "3",
    "--algorithms": "maml",
    "--trials": "3",
    "--epochs": "2",
    "--episodes-per-epoch": "10",
    "--max-train-seconds": "90",
    "--meta-batch": "2",
    "--val-episodes": "5",
    "--test-episodes": "6",
    "--test-repeats": "2",
    "--replicate-top": "1",
    "--replicate-seeds": "4",
    "--equivalence-margin": "0.5",
    "--reference-margin": "5",
    "--time-budget": "60",
    "--searcher": "random",
    "--scheduler": "none",
    "--grace-period": "2",
    "--reduction-factor": "3",
    "--cpus-per-trial": "0.5",
    "--gpus-per-trial": "0.25",
    "--max-concurrent": "3",
    "--max-failures": "0",
    "--seed": "7",
    "--tracking-uri": "sqlite:///x.db",
    "--storage-path": "/s",
    "--address": "auto",
    "--space": "maml=x.py",
}
# Flags added since, with a value.
FLAGS_ADDED = {"--searches": "3", "--search-batch": "4", "--max-train-flops": "1e12", "--replicate-epochs": "6"}


def search(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "hpo.search", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def search_here(capsys, *args) -> tuple[int, str]:
    """(exit status, stderr) of `python -m hpo.search ARGS` run as main(ARGS) in this process (run_main)."""
    status, _, stderr = run_main(main, list(args), capsys)
    return status, stderr


def test_every_flag_keeps_its_spelling_and_sets_its_field():
    flags = {**FLAGS_BEFORE, **FLAGS_ADDED}
    argv = [word for flag, value in flags.items() for word in (flag, value)]
    argv += ["--resume", "--dry-run", "--download", "--no-references"]
    args = build_parser().parse_args(argv)
    given = cli.given(args, StudySpec)
    assert set(given) == {f.name for f in dataclasses.fields(StudySpec)} - {"spaces"}  # every field has its flag
    assert (
        given["preset"],
        given["time_budget_s"],
        given["algorithms"],
        given["gpus_per_trial"],
        given["max_failures"],
        given["max_train_seconds"],
        given["train_query"],
    ) == ("smoke", 60.0, ("maml",), 0.25, 0, 90.0, 3)
    assert (args.space, args.resume, args.dry_run, given["download"]) == (["maml=x.py"], True, True, True)
    assert (given["searches"], given["search_batch"], given["max_train_flops"]) == (3, 4, 1e12)
    assert (given["replicate_epochs"], given["references"]) == (6, False)
    assert set(PRESETS) == set(get_args(Preset))


def test_dry_run_prints_the_resolved_study_and_a_sample_of_each_space(omniglot_root, tmp_path):
    proc = search(
        "--preset",
        "smoke",
        "--data-root",
        str(omniglot_root),
        "--storage-path",
        str(tmp_path / "ray"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--name",
        "dry",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["study"]["trials"] == 4 and out["study"]["name"] == "dry"
    assert out["study"]["algorithms"] == ["maml", "hypermaml"]
    assert "inner_lr" in out["space_samples"]["maml"] and "hn_hidden" in out["space_samples"]["hypermaml"]
    assert out["budget"]["trials per search"] == 4 and out["budget"]["searches per algorithm"].startswith("1 ")
    assert not (tmp_path / "ray").exists() and not (tmp_path / "m.db").exists()  # started nothing, not even a folder


def test_data_root_from_the_environment(omniglot_root, tmp_path):
    import os

    env = {**os.environ, "HYPERMAML_DATA_ROOT": str(omniglot_root)}
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.search", "--preset", "smoke", "--dry-run", "--storage-path", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    # The study stores the resolved path (a ../shared that is a symlink resolves to its target).
    assert json.loads(proc.stdout)["study"]["data_root"] == str(omniglot_root.resolve())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algorithms", "protonet"], "invalid choice: 'protonet'"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--way", "700"], "way 700 exceeds the 688 classes"),
        (["--shot", "10", "--query", "15"], "shot + query = 25 exceeds the 20 images per Omniglot class"),
        (["--space", "maml=/nonexistent/space.py"], "/nonexistent/space.py"),
        (["--space", "typo.yaml"], "say which algorithm"),
        (["--trials", "0"], "trials must be at least 1, got 0"),
        (["--replicate-seeds", "1"], "replicate_seeds must be at least 2, got 1"),
        (["--epochs", "0"], "epochs must be at least 1, got 0"),
        (["--time-budget", "-5"], "time_budget_s must be at least 0, got -5.0"),
        (["--data-root", "/nonexistent/omniglot"], "data root /nonexistent/omniglot does not exist"),
    ],
)
def test_bad_input_fails_fast_with_one_line(omniglot_root, tmp_path, capsys, args, message):
    status, stderr = search_here(
        capsys,
        "--preset",
        "smoke",
        "--data-root",
        str(omniglot_root),
        "--storage-path",
        str(tmp_path / "ray"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        *args,
    )
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    assert not (tmp_path / "ray").exists() or not any((tmp_path / "ray").iterdir())


def test_unreadable_or_malformed_spaces(omniglot_root, tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("params:\n  inner_lr: {type: float, low: 0.5, high: 0.1}\n")
    typo = tmp_path / "typo.py"
    typo.write_text("def space(trial):\n    trial.suggest_int('hn_size', 64, 128)\n")
    for spec, message in ((f"maml={bad_yaml}", "inner_lr"), (f"hypermaml={typo}", "hn_size")):
        status, stderr = search_here(
            capsys,
            "--preset",
            "smoke",
            "--data-root",
            str(omniglot_root),
            "--storage-path",
            str(tmp_path / "ray"),
            "--space",
            spec,
        )
        assert status == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, stderr


def test_missing_data_unwritable_storage_and_nothing_to_resume(omniglot_root, tmp_path):
    proc = search(
        "--preset", "smoke", "--data-root", str(tmp_path / "nowhere"), "--storage-path", str(tmp_path / "ray")
    )
    assert proc.returncode == 2 and "nowhere" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc = search("--preset", "smoke", "--data-root", str(omniglot_root), "--storage-path", str(a_file / "ray"))
    assert proc.returncode == 2 and "not writable" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = search(
        "--preset",
        "smoke",
        "--data-root",
        str(omniglot_root),
        "--storage-path",
        str(tmp_path / "ray"),
        "--name",
        "never-ran",
        "--resume",
    )
    assert proc.returncode == 2 and "no study 'never-ran'" in proc.stderr


# ---- study files (--config) --------------------------------------------------------------------------


def test_a_study_file_of_what_dry_run_printed_resolves_to_the_same_spec(omniglot_root, tmp_path):
    flags = [
        "--preset",
        "smoke",
        "--data-root",
        str(omniglot_root),
        "--storage-path",
        str(tmp_path / "ray"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--name",
        "from-file",
        "--trials",
        "3",
        "--seed",
        "4",
        "--algorithms",
        "hypermaml",
        "maml",
    ]
    printed = search(*flags, "--dry-run")
    assert printed.returncode == 0, printed.stderr
    (tmp_path / "dry.json").write_text(printed.stdout)
    study = json.loads(printed.stdout)["study"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(study))  # spec.json's content, as YAML

    from hpo.search import resolve_spec

    from_flags = resolve_spec(build_parser().parse_args(flags))
    for path in ("dry.json", "spec.yaml"):
        from_file = resolve_spec(build_parser().parse_args(["--config", str(tmp_path / path)]))
        assert from_file == from_flags
    assert (from_flags.trials, from_flags.seed, from_flags.algorithms, from_flags.epochs) == (
        3,
        4,
        ("hypermaml", "maml"),
        3,
    )
    # Through the command as well: --dry-run of the file prints what it read.
    again = search("--config", str(tmp_path / "dry.json"), "--dry-run")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["study"] == study


def test_flags_beside_a_study_file_override_it_and_the_preset_fills_the_rest(omniglot_root, tmp_path):
    from hpo.search import resolve_spec

    (tmp_path / "part.yaml").write_text("preset: smoke\ntrials: 2\nname: part\nspaces: {maml: my_space.yaml}\n")
    spec = resolve_spec(
        build_parser().parse_args(
            ["--config", str(tmp_path / "part.yaml"), "--trials", "5", "--data-root", str(omniglot_root)]
        )
    )
    assert (spec.preset, spec.trials, spec.name, spec.epochs) == ("smoke", 5, "part", PRESETS["smoke"]["epochs"])
    assert spec.spaces == {"maml": "my_space.yaml"}
    spec = resolve_spec(
        build_parser().parse_args(
            ["--config", str(tmp_path / "part.yaml"), "--space", "maml=other.py", "--data-root", str(omniglot_root)]
        )
    )
    assert spec.spaces == {"maml": "other.py"} and spec.trials == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("trails: 8\n", "unknown key 'trails' (did you mean 'trials'?)"),
        ("trials: eight\n", "key 'trials': expected an integer, got 'eight'"),
        ("searcher: annealing\n", "key 'searcher': expected one of tpe, random, gp, cmaes, qmc, got 'annealing'"),
        ("algorithms: maml\n", "key 'algorithms': expected a list, got 'maml'"),
        ("download: 'yes'\n", "key 'download': expected true or false, got 'yes'"),
        ("trials: 0\n", "trials must be at least 1, got 0"),
        ("- trials\n", "expected a mapping of study settings"),
        ("trials: [1\n", "not YAML or JSON (line 2"),
    ],
)
def test_a_bad_study_file_is_one_line_naming_the_key(omniglot_root, tmp_path, capsys, text, message):
    (tmp_path / "study.yaml").write_text(text)
    status, stderr = search_here(
        capsys,
        "--config",
        str(tmp_path / "study.yaml"),
        "--data-root",
        str(omniglot_root),
        "--storage-path",
        str(tmp_path / "ray"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    )
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    assert not (tmp_path / "ray").exists() and not (tmp_path / "m.db").exists()


def test_a_missing_study_file_is_one_line(tmp_path):
    proc = search("--config", str(tmp_path / "nowhere.yaml"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"study file {tmp_path / 'nowhere.yaml'}: cannot be read" in proc.stderr


def test_the_paper_presets_dry_run_prints_its_compute_and_wall_time(omniglot_root, tmp_path):
    proc = search(
        "--preset",
        "paper",
        "--data-root",
        str(omniglot_root),
        "--storage-path",
        str(tmp_path / "ray"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    compute = json.loads(proc.stdout)["compute"]
    # 2 algorithms x 1 search x 50 trials; each search retrains its top 3 (+ the reference) x 5 seeds
    assert compute["networks"] == "at most 100 tuning trials and 40 replicates"
    assert compute["training episodes per network"] == "at most 128000"
    assert re.fullmatch(
        r"maml at most [0-9.e+]+, hypermaml at most [0-9.e+]+ \(its reference configuration's full "
        r"episodes\)",
        compute["FLOPs per trial"],
    ), compute
    assert re.fullmatch(
        r"at most \d+ (min|h) of training, 1 trial\(s\) at a time, .* 2 thread\(s\) each\); .*",
        compute["this machine's CPUs"],
    ), compute
    assert "gpu_check.sh" in compute["a GPU"]


@pytest.mark.parametrize(
    "script, module",
    [("hpo-search", "hpo.search"), ("hpo-across", "hpo.across"), ("hypermaml-train", "hypermaml.train")],
)
def test_console_scripts_are_the_modules(script, module):
    """The installed console scripts (pyproject's [project.scripts]) parse exactly the modules' flags."""
    installed = subprocess.run(
        [str(Path(sys.prefix) / "bin" / script), "--help"], capture_output=True, text=True, timeout=300
    )
    as_module = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
    assert installed.returncode == as_module.returncode == 0, installed.stderr
    assert installed.stdout == as_module.stdout and installed.stdout.startswith("usage: ")
