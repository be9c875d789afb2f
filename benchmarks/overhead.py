"""Overhead of the study machinery (Ray Tune + Optuna + MLflow) over calling `hypermaml.fit` directly.

    python benchmarks/overhead.py --data-root ../shared/data/omniglot [--preset default] [--trials 2] [--epochs 2]

1. Runs a study with the preset's trial shape (episodes per epoch, validation episodes, way, shot,
   query; epochs from --epochs), one trial at a time with all CPUs, no early stopping, random search
   (seeded, so a second study samples the same configurations), and reads the
   wall time of each algorithm's tuning phase (Tuner.fit: worker start-up, imports, reporting,
   checkpoint persistence, experiment snapshots, searcher, MLflow logging, Ray's own processes).
2. Re-runs exactly the same trial configurations (read back from MLflow) by calling `hypermaml.fit`
   in this process, one after another, with the same torch threads and the same per-epoch
   checkpoints the library writes anyway (as `python -m hypermaml.train` does).
3. Repeats both in the order study, direct, direct, study (the machine's speed drifts), and prints
   both, the overhead = (study tuning time - direct time) / direct time, and where it goes: inside
   the epochs (the trial computing slower next to Ray's processes) and around them
   (start-up, data loading, turnover between trials).
Prints figures only; the target (<= 5 % of trial time) is judged by a person, not asserted.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, also when loaded by path

import harness  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from hpo.search import main as search_main  # noqa: E402
from hpo.spec import PRESETS  # noqa: E402
from hypermaml import fit, from_flat, to_flat  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="trial shape (default: default)")
    parser.add_argument("--trials", type=int, default=2, help="trials per algorithm")
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per trial (default 2; the preset's other settings stay)"
    )
    parser.add_argument("--episodes-per-epoch", type=int, help="override the preset's training episodes per epoch")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.cpus)

    # The machine's speed drifts by more than the effect measured (shared hosts), so the two
    # variants run mirrored, in the order study, direct, direct, study: a linear drift cancels in the sums.
    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    studies, directs = [], []
    for _, variant in harness.alternate(["study", "direct"], rounds=2, mirror=True):
        if variant == "study":
            studies.append(run_study(args, work, f"overhead-{'ab'[len(studies)]}"))
        else:  # the first study's trials
            directs.append(run_direct(studies[0]["configs"]))
    (first, second), (direct_1, direct_2) = studies, directs
    if second["configs"] != first["configs"]:
        sys.exit("the two studies sampled different configurations; the comparison would not be paired")

    shape = first["configs"][0].train
    print(
        f"\n{args.trials} trials per algorithm of {shape.epochs} epochs x {shape.steps_per_epoch * shape.meta_batch} "
        f"episodes (+{shape.val_episodes} validation episodes per epoch), {shape.way}-way {shape.shot}-shot "
        f"{shape.query} queries; one trial at a time with {args.cpus} CPUs and {args.cpus} torch threads; "
        f"order: study, direct, direct, study (sums of both of each)"
    )
    print(
        f"{'algorithm':<11}{'study (s)':>11}{'direct (s)':>12}{'overhead':>10}   {'in epochs: study / direct (s)':>34}"
        f"   {'around epochs: study / direct (s)':>34}"
    )
    totals = {"study": 0.0, "direct": 0.0}
    for algorithm in first["tuning"]:
        study = first["tuning"][algorithm] + second["tuning"][algorithm]
        direct = direct_1["total"][algorithm] + direct_2["total"][algorithm]
        study_epochs = first["epochs"][algorithm] + second["epochs"][algorithm]
        direct_epochs = direct_1["epochs"][algorithm] + direct_2["epochs"][algorithm]
        totals["study"] += study
        totals["direct"] += direct
        in_epochs = f"{study_epochs:.1f} / {direct_epochs:.1f} ({_pct(study_epochs, direct_epochs)})"
        around = f"{study - study_epochs:.1f} / {direct - direct_epochs:.1f}"
        print(f"{algorithm:<11}{study:>11.1f}{direct:>12.1f}{_pct(study, direct):>10}   {in_epochs:>34}   {around:>34}")
    print(f"{'both':<11}{totals['study']:>11.1f}{totals['direct']:>12.1f}{_pct(totals['study'], totals['direct']):>10}")
    for label, run in (("study 1", first), ("direct 1", direct_1), ("direct 2", direct_2), ("study 2", second)):
        seconds = run["tuning"] if "tuning" in run else run["total"]
        print(f"  {label:<9}" + "  ".join(f"{a} {t:.1f} s" for a, t in seconds.items()))
    print(
        f"(a whole study incl. Ray start-up, the test head-to-head and the summary: {first['wall']:.1f} s and "
        f"{second['wall']:.1f} s; head-to-head {first['head_to_head']:.1f} s)"
    )


def run_study(args, work: Path, name: str) -> dict:
    """One study; its tuning seconds and in-epoch seconds per algorithm, and the trial configs."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    shape = ["--epochs", str(args.epochs)]
    if args.episodes_per_epoch:
        shape += ["--episodes-per-epoch", str(args.episodes_per_epoch)]
    start = time.perf_counter()
    code = search_main(
        [
            "--preset",
            args.preset,
            "--data-root",
            args.data_root,
            "--tracking-uri",
            uri,
            "--storage-path",
            str(work / "ray"),
            "--name",
            name,
            "--trials",
            str(args.trials),
            *shape,
            "--scheduler",
            "none",
            "--searcher",
            "random",
            "--max-concurrent",
            "1",
            "--cpus-per-trial",
            str(args.cpus),
            "--test-repeats",
            "1",
            "--time-budget",
            "1e9",
        ]
    )
    wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"study failed with exit code {code}")
    timing = json.loads((work / "ray" / name / "timing.json").read_text())
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.role` = 'trial'", max_results=1000)
    configs, epochs = [], {a: 0.0 for a in timing["tuning_seconds"]}
    for run in trials:
        config = from_flat(dict(run.data.params))
        configs.append(config)
        epochs[config.train.algorithm] += sum(m.value for m in client.get_metric_history(run.info.run_id, "epoch_s"))
    configs.sort(key=lambda c: (c.train.algorithm, json.dumps(to_flat(c), sort_keys=True)))
    return {
        "tuning": timing["tuning_seconds"],
        "epochs": epochs,
        "configs": configs,
        "wall": wall,
        "head_to_head": timing["head_to_head_seconds"],
    }


def run_direct(configs) -> dict:
    """The same trials through `hypermaml.fit`, one after another, with the library's own checkpoints."""
    total, epochs = {}, {}
    for config in configs:
        algorithm = config.train.algorithm
        with tempfile.TemporaryDirectory() as checkpoints:
            t0 = time.perf_counter()
            result = fit(config, checkpoint_dir=checkpoints)
            total[algorithm] = total.get(algorithm, 0.0) + time.perf_counter() - t0
        epochs[algorithm] = epochs.get(algorithm, 0.0) + sum(h["epoch_s"] for h in result.history)
    return {"total": total, "epochs": epochs}


def _pct(study: float, direct: float) -> str:
    return f"{100 * (study - direct) / direct:+.1f}%"


if __name__ == "__main__":
    main()
