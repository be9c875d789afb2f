"""The one command-line layer of `python -m hypermaml.train` and `python -m hpo.search`.

Both build their flags from config dataclasses, the single source of truth (`hypermaml.config.setting`):

- one flag per field, `--field-name` (or the field's `flag`), with the field's help;
- its type from the annotation: int, float or str; a Literal's values as choices; `--x` / `--no-x`
  for a bool; one or more values for a tuple;
- no default in the parsed namespace: a flag the user did not give is absent, so the caller can tell
  "not given" (the dataclass default, or a preset, applies) from "given". `given` collects them.

Bad input of any kind is one line, `<prog>: error: <message>`, on stderr and exit code 2: argparse's
own errors through `Parser.error`, and the errors found after parsing (a ConfigError, DataError, ...)
through `Parser.fail`, which the caller returns as its exit code before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, NoReturn, get_args, get_origin, get_type_hints

from .config import literal_choices

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line (argparse would add the usage block)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def fail(self, error: Exception | str) -> int:
        """Print one error line; returns the exit code for `main` to return."""
        print(f"{self.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def add_fields(
    group: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    skip: tuple[str, ...] = (),
    show_defaults: bool = True,
) -> None:
    """One flag per field of the dataclass `cls` (except `skip`); see the module docstring."""
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        hint = hints[field.name]
        text = field.metadata.get("help", "")
        if show_defaults and field.default is not dataclasses.MISSING:
            text += f" (default: {field.default})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if get_origin(hint) is tuple:
                kwargs["nargs"] = "+"
                hint = get_args(hint)[0]
            choices = literal_choices(hint)
            if choices is not None:
                kwargs["choices"] = choices
            else:
                kwargs["metavar"] = flag(field).lstrip("-").replace("-", "_").upper()
            kwargs["type"] = str if choices is not None else hint
        group.add_argument(flag(field), **kwargs)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` the user gave on the command line (lists of a tuple field as tuples)."""
    names = {field.name for field in dataclasses.fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}
