"""The benchmark scripts' commands parse (they are run by hand, benchmarks/gpu_check.sh only on a GPU)."""

import importlib.util
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


def throughput_module():
    spec = importlib.util.spec_from_file_location("throughput", BENCHMARKS / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
