"""Test accuracy of bf16 autocast against float32: the same runs, several training seeds, both precisions.

    python benchmarks/precision_check.py --data-root ../shared/data/omniglot [--seeds 0 1 2] [--parallel 2]

Each run is `python -m hypermaml.train` in a fresh process with one torch thread; `--parallel` of them
run at once. The learners are the kinds the default study tunes (HyperMAML; MAML adapting the head
only; second-order MAML adapting every parameter, where rounding reaches the second-order terms), at
the default study's training budget (5 epochs x 240 episodes). Every run is tested on the same 600
test episodes. Prints, per learner: each seed's test accuracy under both precisions, the mean
difference bf16 - float32 with a 95% CI over seeds (paired by seed: a seed fixes the initial weights
and the training episodes), and whether each bf16 run lies inside its float32 twin's 95% CI over test
episodes. Prints figures only; docs/results.md says what was measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, also when loaded by path
import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET = [
    "--epochs",
    "5",
    "--steps-per-epoch",
    "30",
    "--meta-batch",
    "8",
    "--val-episodes",
    "100",
    "--test-episodes",
    "600",
]
LEARNERS = {
    "hypermaml": ["--algorithm", "hypermaml", "--hn-hidden", "256", "--hn-layers", "3"],
    "maml-head": [
        "--algorithm",
        "maml",
        "--inner-params",
        "head",
        "--inner-steps",
        "10",
        "--inner-lr",
        "0.37",
        "--first-order",
    ],
    "maml-second-order": [
        "--algorithm",
        "maml",
        "--inner-params",
        "all",
        "--inner-steps",
        "3",
        "--inner-lr",
        "0.1",
        "--no-first-order",
    ],
}
PRECISIONS = ("fp32", "bf16")


def train(learner: str, precision: str, seed: int, data_root: str) -> dict:
    flags = ["--data-root", data_root, *BUDGET, *LEARNERS[learner], "--precision", precision, "--seed", str(seed)]
    return harness.run_training(flags, tree=ROOT, threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=list(LEARNERS))
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    data_root = str(Path(args.data_root).resolve())
    runs = [(learner, seed, precision) for learner in args.learners for seed in args.seeds for precision in PRECISIONS]
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {run: pool.submit(train, run[0], run[2], run[1], data_root) for run in runs}
        results = {}
        for run, future in futures.items():
            results[run] = future.result()
            learner, seed, precision = run
            r = results[run]
            print(
                f"{learner:<18} seed {seed}  {precision}  test {100 * r['test_acc']:.2f} ± {100 * r['test_ci95']:.2f}"
                f"  val {100 * r['val_acc']:.2f}  {r['train_episodes_per_s']:.1f} episodes/s",
                flush=True,
            )
    print("\nlearner             fp32 mean   bf16 mean   bf16 - fp32 (95% CI over seeds)   bf16 inside fp32's CI")
    for learner in args.learners:
        fp32 = [100 * results[(learner, s, "fp32")]["test_acc"] for s in args.seeds]
        bf16 = [100 * results[(learner, s, "bf16")]["test_acc"] for s in args.seeds]
        differences = [b - f for b, f in zip(bf16, fp32)]
        interval = stats.ttest_1samp(differences, 0.0).confidence_interval(0.95)
        inside = sum(
            abs(b - f) <= 100 * results[(learner, s, "fp32")]["test_ci95"] for s, b, f in zip(args.seeds, bf16, fp32)
        )
        print(
            f"{learner:<18} {statistics.mean(fp32):9.2f}   {statistics.mean(bf16):9.2f}   "
            f"{statistics.mean(differences):+.2f} ({interval.low:+.2f} to {interval.high:+.2f})"
            f"{'':>14}{inside} of {len(args.seeds)}"
        )


if __name__ == "__main__":
    main()
