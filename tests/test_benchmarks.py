"""The benchmark scripts' commands parse (they are run by hand, benchmarks/gpu_check.sh only on a GPU), and
their one harness (benchmarks/harness.py) runs cases in fresh processes, alternated, summarized as median
(min-max). Nothing here is timed for a figure."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hpo.search import build_parser as search_parser
from hpo.search import resolve_spec
from hypermaml.train import build_parser as train_parser
from hypermaml.train import parse_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
GPU_CHECK = BENCHMARKS / "gpu_check.sh"


def benchmark_module(name: str):
    """benchmarks/NAME.py, loaded by its path (benchmarks/ is no package: its scripts are run as files)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def throughput_module():
    return benchmark_module("throughput")


def gpu_check_commands(program: str) -> list[list[str]]:
    """The script's command lines that run `program`, with its variables filled in as bash would."""
    text = GPU_CHECK.read_text()
    variants = re.search(r'^VARIANTS="(.*)"$', text, flags=re.MULTILINE).group(1)
    commands = []
    for line in text.splitlines():
        if program in line and not line.lstrip().startswith(("#", "echo")):
            line = line.replace("$VARIANTS", variants).replace("$MB", "32").replace('"$DATA"', "/data/omniglot")
            line = line.replace('"$OUT/run"', "/tmp/run").replace("$PY", "python").replace("$OUT", "/tmp")
            line = line.replace('"$(awk "BEGIN { print 1 / $N }")"', "0.25").replace("$N", "4")
            words = shlex.split(line.split("|")[0].split(" > ")[0])
            commands.append(words[words.index("python") + 1 :])
    return commands


def test_gpu_check_is_valid_bash_and_its_commands_parse():
    assert subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True).returncode == 0
    throughput = throughput_module()
    (benchmark,) = gpu_check_commands("benchmarks/throughput.py")
    args = throughput.build_parser().parse_args(benchmark[1:])  # exits 2 on a flag or variant it does not know
    assert args.device == "cuda" and args.variants == ["fp32", "bf16", "fp32+compile", "bf16+compile"]
    assert args.cases == ["maml-1step", "hypermaml"] and args.no_loop
    (train,) = gpu_check_commands("-m hypermaml.train")
    config = parse_config(train_parser().parse_args(train[2:]))
    assert (config.train.device, config.train.algorithm, config.algo.hn_hidden) == ("cuda", "hypermaml", 512)
    (study,) = gpu_check_commands("-m hpo.search")
    spec = resolve_spec(search_parser().parse_args(study[2:]))
    assert (spec.preset, spec.trials, spec.max_concurrent, spec.gpus_per_trial) == ("smoke", 8, 4, 0.25)


def test_throughput_variants_are_levers_joined_by_plus():
    throughput = throughput_module()
    assert throughput.variant_settings("default") == {}
    assert throughput.variant_settings("bf16+grouped-conv") == {"precision": "bf16", "dense_conv": False}
    assert throughput.variant_settings("no-heap-warm") == {}  # the allocator lever is no TrainConfig field
    with pytest.raises(ValueError, match="unknown lever"):
        throughput.variant_levers("bf16+turbo")


def test_batch_scaling_runs_each_case_in_its_own_process_and_divides_by_the_first():
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "batch_scaling.py"),
            "--tasks",
            "1",
            "2",
            "--rounds",
            "1",
            "--images",
            "40",
            "--images-per-task",
            "10",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r"^\s+\d+\s+\d+ \(", line)]
    assert [row[0] for row in rows] == ["1", "2"]
    assert rows[0][-1] == "1.00x"  # the per-task loop's rate divided by itself
    assert re.fullmatch(r"\d+\.\d\dx", rows[1][-1])
    assert done.stdout.count("round 1:") == 2  # one fresh process per case and round


# ---- the harness ------------------------------------------------------------------------------------------


def test_alternate_runs_every_case_once_a_round_and_mirror_reverses_every_second_round():
    harness = benchmark_module("harness")
    assert harness.alternate(["a", "b", "c"], 2) == [(1, "a"), (1, "b"), (1, "c"), (2, "a"), (2, "b"), (2, "c")]
    mirrored = harness.alternate(["a", "b"], 3, mirror=True)
    assert mirrored == [(1, "a"), (1, "b"), (2, "b"), (2, "a"), (3, "a"), (3, "b")]
    assert harness.alternate(["study", "direct"], 2, mirror=True) == [  # benchmarks/overhead.py's order
        (1, "study"),
        (1, "direct"),
        (2, "direct"),
        (2, "study"),
    ]
    assert harness.alternate(["a"], 0) == []


def test_measure_collects_each_cases_figures_in_alternation_and_leaves_failed_runs_out():
    harness = benchmark_module("harness")
    runs, shown = [], []

    def run(case: str) -> float | None:
        runs.append(case)
        if case == "b" and len(runs) == 2:  # b's first run fails
            return None
        return {"a": 10.0, "b": 20.0}[case] + len(runs)

    figures = harness.measure(["a", "b"], 3, run, mirror=True, show=lambda *row: shown.append(row))
    assert runs == ["a", "b", "b", "a", "a", "b"]
    assert figures == {"a": [11.0, 14.0, 15.0], "b": [23.0, 26.0]}
    assert shown == [(1, "a", 11.0), (1, "b", None), (2, "b", 23.0), (2, "a", 14.0), (3, "a", 15.0), (3, "b", 26.0)]
    assert harness.measure(["a", "b"], 2, lambda case: None) == {"a": [], "b": []}  # every run failed


def test_spread_is_the_median_and_range_printed_as_median_min_max():
    harness = benchmark_module("harness")
    spread = harness.spread([30.0, 10.0, 25.0, 12.0])
    assert (spread.median, spread.low, spread.high) == (18.5, 10.0, 30.0)  # an even count: the mean of the middle two
    assert spread.text(".1f") == "18.5 (10.0-30.0)"
    assert harness.spread([2222.4, 2122.2, 2250.0]).text(".0f") == "2222 (2122-2250)"
    assert harness.spread([7.0]).text() == "7.0 (7.0-7.0)"


def test_run_fresh_returns_the_last_line_of_a_new_process_and_raises_with_its_stderr():
    harness = benchmark_module("harness")
    child = "import os, sys; print('warming up'); sys.path.insert(0, sys.argv[1]); import harness; "
    child += "harness.print_figures(pid=os.getpid(), rate=2.5)"
    first = harness.run_fresh([sys.executable, "-c", child, str(BENCHMARKS)])
    second = harness.run_fresh([sys.executable, "-c", child, str(BENCHMARKS)])
    assert first["rate"] == second["rate"] == 2.5
    assert len({first["pid"], second["pid"], os.getpid()}) == 3  # a new process each time
    with pytest.raises(subprocess.CalledProcessError) as failed:
        harness.run_fresh([sys.executable, "-c", "import sys; sys.exit('out of memory')"])
    assert failed.value.returncode == 1 and "out of memory" in failed.value.stderr


def test_script_command_reruns_a_script_with_this_interpreter():
    harness = benchmark_module("harness")
    command = harness.script_command(BENCHMARKS / "batch_scaling.py", "--child", 4, "--precision", "bf16")
    assert command == [sys.executable, str(BENCHMARKS / "batch_scaling.py"), "--child", "4", "--precision", "bf16"]


def test_run_training_runs_the_training_cli_of_the_given_tree_with_its_threads(tmp_path):
    harness = benchmark_module("harness")
    package = tmp_path / "tree" / "hypermaml"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(  # a stand-in CLI that reports what it was run with, as its results row
        "import json, os, sys\n"
        "output = sys.argv[sys.argv.index('--output') + 1]\n"
        "print('epoch 1 ...')\n"
        "print(json.dumps({'file': __file__, 'argv': sys.argv[1:], 'threads': os.environ['OMP_NUM_THREADS'],"
        " 'output_parent_exists': os.path.isdir(os.path.dirname(output)), 'cwd': os.getcwd()}))\n"
    )
    row = harness.run_training(["--algorithm", "maml", "--seed", "3"], tree=tmp_path / "tree", threads=1)
    assert Path(row["file"]).resolve() == (package / "train.py").resolve()  # the tree's code, not the installed one
    assert Path(row["cwd"]).resolve() == (tmp_path / "tree").resolve() and row["threads"] == "1"
    assert row["argv"][:4] == ["--algorithm", "maml", "--seed", "3"] and row["argv"][4] == "--output"
    assert row["output_parent_exists"]  # a temporary folder, removed afterwards
    assert not Path(row["argv"][5]).parent.exists()


BENCHMARK_SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name != "harness.py")


@pytest.mark.parametrize("script", BENCHMARK_SCRIPTS)
def test_every_benchmark_uses_the_one_harness_and_its_help_runs(script):
    text = (BENCHMARKS / script).read_text()
    assert "import harness" in text
    for own_harness in ("sys.executable", "statistics.median", "splitlines()[-1]", "subprocess.run(command"):
        assert own_harness not in text, f"{script} runs or summarizes cases itself ({own_harness}): use harness.py"
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
