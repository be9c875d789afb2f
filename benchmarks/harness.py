"""The one harness of the speed benchmarks: each case in a fresh process, cases alternated, median (min-max).

Speed is a ratio measured side by side in one run: every figure comes from a fresh process (no heap,
allocator or cache state inherited from an earlier case), every round runs each case once (so that a
drift of the machine's speed hits all cases alike), and a case is reported as the median and range
of its rounds. A child process reports its figures as a JSON object on its last line of output.

    order = alternate(cases, rounds, mirror=True)          # [(round, case), ...], rounds from 1
    figures = measure(cases, rounds, run, show=print_run)  # {case: [figure of each round that did not fail]}
    spread(figures[case]).text(".1f")                      # "25.3 (25.1-25.6)"
    run_fresh(script_command(__file__, "--child", ...))    # the child's last line, a JSON object
    run_training(flags, tree=ROOT, threads=1)              # `python -m hypermaml.train`'s results row
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

Case = TypeVar("Case")
Figure = TypeVar("Figure")


def alternate(cases: Sequence[Case], rounds: int, *, mirror: bool = False) -> list[tuple[int, Case]]:
    """The order of the runs, as (round, case) with rounds counted from 1: every round runs each case
    once, in the given order; with `mirror`, every second round in the reverse order (A B, B A, A B, ...),
    so that the case run before each one also changes."""
    order = []
    for round_ in range(1, rounds + 1):
        cases_this_round = cases[::-1] if mirror and round_ % 2 == 0 else cases
        order += [(round_, case) for case in cases_this_round]
    return order


def measure(
    cases: Sequence[Case],
    rounds: int,
    run: Callable[[Case], Figure | None],
    *,
    mirror: bool = False,
    show: Callable[[int, Case, Figure | None], None] | None = None,
) -> dict[Case, list[Figure]]:
    """Runs every case in `alternate` order and collects its figures: `run(case)` measures one (None: it
    failed, and is left out), `show(round, case, figure)` prints it as it comes."""
    figures: dict[Case, list[Figure]] = {case: [] for case in cases}
    for round_, case in alternate(cases, rounds, mirror=mirror):
        figure = run(case)
        if figure is not None:
            figures[case].append(figure)
        if show is not None:
            show(round_, case, figure)
    return figures


@dataclass(frozen=True)
class Spread:
    """The median and range of one case's figures."""

    median: float
    low: float
    high: float

    def text(self, spec: str = ".1f") -> str:
        """The figures as "median (min-max)", each number formatted with `spec`."""
        return f"{self.median:{spec}} ({self.low:{spec}}-{self.high:{spec}})"


def spread(figures: Sequence[float]) -> Spread:
    return Spread(statistics.median(figures), min(figures), max(figures))


def script_command(script: str | Path, *args: object) -> list[str]:
    """The command that runs a Python script with this interpreter: a benchmark re-running itself as a child."""
    return [sys.executable, str(Path(script).resolve()), *map(str, args)]


def run_fresh(command: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> dict:
    """Runs `command` in a fresh process and returns the JSON object on the last line of its output;
    subprocess.CalledProcessError (with the child's stderr) if it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_figures(**figures: float) -> None:
    """A child's report to `run_fresh`: its figures as one JSON line."""
    print(json.dumps(figures), flush=True)


def run_training(flags: Sequence[str], *, tree: Path, threads: int) -> dict:
    """`python -m hypermaml.train FLAGS` with the code of `tree` and `threads` OpenMP threads, in a fresh
    process writing to a temporary folder: its results row (test and validation accuracy, episodes/s, ...)."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))  # `tree`'s code first
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as output:
        command = [sys.executable, "-m", "hypermaml.train", *flags, "--output", f"{output}/run"]
        return run_fresh(command, cwd=tree, env=env)
