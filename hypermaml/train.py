"""`python -m hypermaml.train`: meta-train one learner, then test it on 600 fixed episodes.

Flags come from the config dataclasses (`--inner-lr` is MAMLConfig.inner_lr, ...). Progress goes to
stderr; the last stdout line is one JSON object with the run's results. Errors a user can fix print
one line and exit with code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from . import cli
from .config import ALGORITHM_CONFIGS, ConfigError, DataError, RunConfig, TrainConfig, from_flat, to_flat
from .fitting import BEST, CAPPED, LAST, check_resumable, evaluate, fit, load_checkpoint, load_data, resolve_device
from .flops import epoch_step_flops, epoch_steps


def build_parser() -> cli.Parser:
    parser = cli.Parser(prog="python -m hypermaml.train", description=__doc__.splitlines()[0])
    cli.add_fields(parser.add_argument_group("data and training"), TrainConfig)
    for name, cls in ALGORITHM_CONFIGS.items():
        cli.add_fields(parser.add_argument_group(f"{name} (only with --algorithm {name})"), cls)
    parser.add_argument("--output", required=True, help="folder for checkpoints, metrics and result.json")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run stored in --output (with the flags it was started with)"
    )
    return parser


def parse_config(args: argparse.Namespace) -> RunConfig:
    """The run the flags ask for (ConfigError for flags of the other algorithm or bad values)."""
    values = cli.given(args, TrainConfig)
    algorithm = values.get("algorithm", TrainConfig.algorithm)
    for name, cls in ALGORITHM_CONFIGS.items():
        settings = cli.given(args, cls)
        if settings and name != algorithm:
            field = next(f for f in dataclasses.fields(cls) if f.name in settings)
            raise ConfigError(f"{cli.flag(field)} is not a setting of {algorithm}")
        values.update(settings)
    return from_flat(values)


def _progress(metrics: dict[str, float]) -> None:
    line = (
        f"epoch {metrics['epoch']:>3}  train_loss {metrics['train_loss']:.4f}  train_acc {100 * metrics['train_acc']:5.1f}%"
        f"  val_acc {100 * metrics['val_acc']:5.1f}% ± {100 * metrics['val_ci95']:.1f}"
        f"  {metrics['episodes_per_s']:7.1f} episodes/s  {metrics['epoch_s']:6.1f} s"
    )
    print(line, file=sys.stderr, flush=True)
    if metrics[CAPPED]:
        print("stopping: another epoch would take training past --max-train-seconds", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # everything the user can get wrong, before anything is written
        config = parse_config(args)
        resolve_device(config.train.device)  # e.g. --device cuda on a machine without CUDA
        if config.train.max_train_flops:  # a budget too small for one outer step per epoch
            epoch_steps(config, epoch_step_flops(config))
        output = Path(args.output)
        resume_from = None
        if args.resume:
            check_resumable(config, load_checkpoint(output / LAST)["config"])
            resume_from = output / LAST
        elif output.exists() and any(output.iterdir()):
            raise ConfigError(f"output folder {output} is not empty (use --resume to continue it, or another folder)")
        data = load_data(config)  # all three splits: bad data fails here
    except (ConfigError, DataError) as error:
        return parser.fail(error)

    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps(to_flat(config), indent=2) + "\n")
    print(
        f"training {config.train.algorithm} on {config.train.dataset} {config.train.way}-way {config.train.shot}-shot",
        file=sys.stderr,
    )
    result = fit(config, report=_progress, checkpoint_dir=output, resume_from=resume_from, data=data)
    learner = result.learner
    learner.load_state_dict(result.best_state)
    test = evaluate(learner, "test", config.train.test_episodes, data=data["test"])
    summary = {
        "algorithm": config.train.algorithm,
        "dataset": config.train.dataset,
        "way": config.train.way,
        "shot": config.train.shot,
        "val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "test_acc": test.accuracy,
        "test_ci95": test.ci95,
        "test_episodes": test.episodes,
        "train_episodes_per_s": result.train_episodes_per_s,
        "train_seconds": result.train_seconds,
        "train_episodes": result.train_episodes,
        "train_flops": result.train_flops,
        "precision": result.precision,
        "adapt_ms_per_task": test.ms_per_task,
        "parameters": sum(p.numel() for p in learner.parameters()),
        "best_checkpoint": str(output / BEST),
    }
    (output / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
