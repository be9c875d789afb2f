"""Meta-training episodes/s of `python -m hypermaml.train` in fresh processes: this tree against a commit.

    python benchmarks/cli_compare.py --data-root ../shared/data/omniglot --baseline dc8ad56 [--rounds 3]

Every run is a new process, as users and Ray workers run it (no heap or cache warmed by an earlier
case), and the cases are alternated (baseline, ours, baseline, ours, ...) so that drift of the
machine's speed hits both alike. Prints each run and, per case, the median and the range of the
`train_episodes_per_s` that the CLI reports, and the ratio of medians. Prints figures only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, also when loaded by path
import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # the two learners; 5-way 1-shot, meta-batch 32, 1 epoch x 10 steps
    "maml": ["--algorithm", "maml", "--inner-steps", "1"],
    "hypermaml": ["--algorithm", "hypermaml", "--hn-hidden", "512", "--hn-layers", "3"],
}
SHAPE = ["--way", "5", "--shot", "1", "--meta-batch", "32", "--epochs", "1", "--steps-per-epoch", "10"]
EVALUATION = ["--val-episodes", "10", "--test-episodes", "10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--baseline", required=True, help="a commit of this repository to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    data_root = str(Path(args.data_root).resolve())
    with tempfile.TemporaryDirectory() as folder:
        baseline_tree = Path(folder) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline_tree), args.baseline], check=True
        )
        try:
            trees = {f"baseline {args.baseline}": baseline_tree, "this tree": ROOT}

            def run(key: tuple[str, str]) -> float:
                case, label = key
                flags = ["--data-root", data_root, *SHAPE, *EVALUATION, *CASES[case]]
                return harness.run_training(flags, tree=trees[label], threads=args.threads)["train_episodes_per_s"]

            def show(round_: int, key: tuple[str, str], rate: float) -> None:
                print(f"round {round_}  {key[0]:<10} {key[1]:<22} {rate:6.1f} episodes/s", flush=True)

            keys = [(case, label) for case in args.cases for label in trees]  # baseline, ours, baseline, ours, ...
            rates = harness.measure(keys, args.rounds, run, show=show)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)], check=True)
    print("\ncase        tree                    median  (min-max) episodes/s")
    for case in args.cases:
        medians = {}
        for label in trees:
            spread = harness.spread(rates[(case, label)])
            medians[label] = spread.median
            print(f"{case:<11} {label:<22} {spread.median:6.1f}  ({spread.low:.1f}-{spread.high:.1f})")
        base, ours = medians[f"baseline {args.baseline}"], medians["this tree"]
        print(f"{case:<11} ratio this tree / baseline: {ours / base:.2f}x")


if __name__ == "__main__":
    main()
