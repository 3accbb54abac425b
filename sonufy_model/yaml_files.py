"""Reading a YAML file a user hands over: every way it can be wrong is one
error naming the file (and the line, for YAML it cannot parse)."""

from __future__ import annotations

from pathlib import Path

import yaml


class YamlFileError(ValueError):
    """A YAML file that cannot be read or parsed; the message names it."""


def read_yaml(path: str | Path, what: str, error: type[ValueError] = YamlFileError) -> object:
    """The data of the YAML file ``path`` (safe loading: no Python tags), or
    ``error`` naming it: missing (as "no such ``what`` file"), unreadable, not
    UTF-8, or not valid YAML (with its line and column)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{path}: cannot be read: {problem}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{path}: not valid YAML{at}: {getattr(problem, 'problem', None) or problem}") from None
