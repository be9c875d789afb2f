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
from typing import Any

from .config import ALGORITHM_CONFIGS, ConfigError, TrainConfig, choices_of, field_types, from_flat, to_flat
from .data import DataError
from .training import BEST, LAST, evaluate, fit, load_checkpoint, load_data

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would add the usage block)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_fields(group: argparse._ArgumentGroup, cls: type) -> None:
    hints = {f.name: f for f in dataclasses.fields(cls)}
    types = field_types(cls)
    for name, f in hints.items():
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": f"{f.metadata.get('help', '')} (default: {f.default})"}
        if types[name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            choices = choices_of(cls, name)
            kwargs["type"] = str if choices else types[name]
            if choices:
                kwargs["choices"] = choices
        group.add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m hypermaml.train", description=__doc__.splitlines()[0])
    _add_fields(parser.add_argument_group("data and training"), TrainConfig)
    for name, cls in ALGORITHM_CONFIGS.items():
        _add_fields(parser.add_argument_group(f"{name} (only with --algorithm {name})"), cls)
    parser.add_argument("--output", required=True, help="folder for checkpoints, metrics and result.json")
    parser.add_argument("--resume", action="store_true", help="continue the run stored in --output")
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[Any, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in ("output", "resume")}
    algorithm = values.get("algorithm", TrainConfig.algorithm)
    if algorithm not in ALGORITHM_CONFIGS:
        parser.error(f"unknown algorithm {algorithm!r}")
    foreign = {f.name for other, cls in ALGORITHM_CONFIGS.items() if other != algorithm for f in dataclasses.fields(cls)}
    foreign -= {f.name for f in dataclasses.fields(ALGORITHM_CONFIGS[algorithm])}
    wrong = sorted(k for k in values if k in foreign)
    if wrong:
        parser.error(f"--{wrong[0].replace('_', '-')} is not a setting of {algorithm}")
    if not values.get("data_root"):
        parser.error("--data-root is required")
    return from_flat(values), args


def _progress(metrics: dict[str, float]) -> None:
    line = (
        f"epoch {metrics['epoch']:>3}  train_loss {metrics['train_loss']:.4f}  train_acc {100 * metrics['train_acc']:5.1f}%"
        f"  val_acc {100 * metrics['val_acc']:5.1f}% ± {100 * metrics['val_ci95']:.1f}"
        f"  {metrics['episodes_per_s']:7.1f} episodes/s  {metrics['epoch_s']:6.1f} s"
    )
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        config, args = parse_config(argv)
        output = Path(args.output)
        resume_from = None
        if args.resume:
            load_checkpoint(output / LAST)  # fails early, before any work, if there is nothing to resume
            resume_from = output / LAST
        elif output.exists() and any(output.iterdir()):
            raise ConfigError(f"output folder {output} is not empty (use --resume to continue it, or another folder)")
        data = load_data(config)  # all three splits: bad data fails here, before anything is written
    except (ConfigError, DataError) as error:
        print(f"python -m hypermaml.train: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps(to_flat(config), indent=2) + "\n")
    print(f"training {config.train.algorithm} on {config.train.dataset} {config.train.way}-way {config.train.shot}-shot", file=sys.stderr)
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
        "test_acc": test.accuracy,
        "test_ci95": test.ci95,
        "test_episodes": test.episodes,
        "train_episodes_per_s": result.train_episodes_per_s,
        "train_seconds": result.train_seconds,
        "adapt_ms_per_task": test.ms_per_task,
        "parameters": sum(p.numel() for p in learner.parameters()),
        "best_checkpoint": str(output / BEST),
    }
    (output / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
