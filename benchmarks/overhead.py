"""Overhead of the study machinery (Ray Tune + Optuna + MLflow) over calling `hypermaml.fit` directly.

    python benchmarks/overhead.py --data-root ../shared/data/omniglot [--trials 3] [--epochs 3]

1. Runs a study with one trial at a time (all CPUs to it), no early stopping, random search, and
   reads the wall time of each algorithm's tuning phase (Tuner.fit: trial start-up, reporting,
   checkpoint persistence, searcher, MLflow logging).
2. Re-runs exactly the same trial configurations (read back from MLflow) by calling
   `hypermaml.fit` in this process, one after another, with the same number of torch threads.
3. Prints both and the overhead = (study tuning time - direct time) / direct time.
Prints figures only; the target (<= 5 %) is judged by a person, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from hpo.search import main as search_main  # noqa: E402
from hypermaml import fit, from_flat  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--episodes-per-epoch", type=int, default=96)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    name = "overhead"
    start = time.perf_counter()
    code = search_main([
        "--preset", "smoke", "--data-root", args.data_root, "--tracking-uri", uri, "--storage-path", str(work / "ray"),
        "--name", name, "--trials", str(args.trials), "--epochs", str(args.epochs),
        "--episodes-per-epoch", str(args.episodes_per_epoch), "--scheduler", "none", "--searcher", "random",
        "--max-concurrent", "1", "--cpus-per-trial", str(args.cpus), "--test-repeats", "1",
    ])
    study_wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"study failed with exit code {code}")
    timing = json.loads((work / "ray" / name / "timing.json").read_text())

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.role` = 'trial'", max_results=1000)
    torch.set_num_threads(args.cpus)
    direct: dict[str, float] = {}
    for run in trials:
        config = from_flat(dict(run.data.params))
        t0 = time.perf_counter()
        fit(config)
        direct[config.train.algorithm] = direct.get(config.train.algorithm, 0.0) + time.perf_counter() - t0

    print(f"{args.trials} trials per algorithm, {args.epochs} epochs x {args.episodes_per_epoch} episodes, "
          f"1 trial at a time with {args.cpus} CPUs, torch threads {args.cpus}")
    print(f"{'algorithm':<11}{'study (s)':>11}{'direct fit (s)':>16}{'overhead':>10}")
    total_study = total_direct = 0.0
    for algorithm, seconds in timing["tuning_seconds"].items():
        d = direct[algorithm]
        total_study += seconds
        total_direct += d
        print(f"{algorithm:<11}{seconds:>11.1f}{d:>16.1f}{100 * (seconds - d) / d:>9.1f}%")
    print(f"{'both':<11}{total_study:>11.1f}{total_direct:>16.1f}{100 * (total_study - total_direct) / total_direct:>9.1f}%")
    print(f"(whole study incl. Ray start-up and the test head-to-head: {study_wall:.1f} s; head-to-head {timing['head_to_head_seconds']:.1f} s)")


if __name__ == "__main__":
    main()
