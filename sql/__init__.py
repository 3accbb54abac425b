"""Every SQL statement Sonufy runs, loaded by name from the .sql files here.

A statement starts with a line ``-- name: NAME``; it runs until the next such
line. Comments above a statement's first SQL line document it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@lru_cache(maxsize=None)
def _statements(filename: str) -> dict[str, str]:
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME_LINE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    statements: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in statements:
            raise ValueError(f"{filename}: statement {name!r} is defined twice")
        statements[name] = body.strip()
    return statements


def statement(name: str, filename: str = "queries.sql") -> str:
    """The SQL text of the statement called ``name`` in ``filename``."""
    try:
        return _statements(filename)[name]
    except KeyError:
        raise KeyError(f"no SQL statement named {name!r} in sql/{filename}") from None


# Applied in this order at the start of every run: the baseline tables, then
# migrations of them, then each feature's own tables, views and macros.
SCHEMA_FILES = ("schema.sql", "migrations.sql", "search.sql", "landscape.sql")


def schema_statements() -> list[str]:
    """The schema, in order: tables, migrations, views and macros, all idempotent."""
    here = resources.files(__name__)
    return [
        text
        for filename in SCHEMA_FILES
        if here.joinpath(filename).is_file()
        for text in _statements(filename).values()
    ]
