"""Every SQL statement Sonufy runs, loaded by name from the .sql files here.

A statement starts with a line ``-- name: NAME``; it runs until the next such
line. Comments above a statement's first SQL line document it.
"""

from __future__ import annotations

import hashlib
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


# Applied in this order by a writer whose store is not at this code's schema:
# the baseline tables, then migrations of them, then each feature's own
# tables, views and macros.
SCHEMA_FILES = ("schema.sql", "migrations.sql", "search.sql", "landscape.sql")

#: The schema version this code writes (table sonufy_schema). Add one with
#: every released change to the schema files (a migration, a new table, a
#: changed view or macro): a store migrated by newer code refuses older code's
#: writes (sonufy_model.store.SchemaTooNew), while older code can still read it.
#: 1: stores from before versions were recorded.
#: 3: shard and checkpoint paths relative to the database file's folder.
#: 4: the exclusion list, duration bounds and gaps of similar_to and
#: similar_to_vector (readers of an older store define them for themselves:
#: sonufy_model.search.reading_connection).
#: 5: saved_playlists, the recipes of `sonufy playlist save` (a new table:
#: schema.sql's CREATE TABLE IF NOT EXISTS makes it in an older store at its
#: first write; readers of an older store find no saved list).
#: 6: models.ever_current, whether a version has been current (migrations.sql:
#: backfilled as true for the current version and any other with vectors);
#: `sonufy gc` and a retrain's start delete the vectors of versions never
#: current, not current and not pending (a killed retrain's candidate).
#: 7: scraped_albums, the albums tag:new found and read whole (a new table):
#: the nightly's tag:new search, an album search, skips them.
SCHEMA_VERSION = 7
#: The first version whose stored file paths are relative (see Store._migrate).
RELATIVE_PATHS_VERSION = 3


def temporary_macros(filename: str) -> list[str]:
    """The macros of a schema file, each made a TEMP macro: a reader defines
    them on its own connection, over those of a store not yet migrated to this
    code's schema (a temporary macro hides the store's one of the same name)."""
    return [
        _MACRO.sub("CREATE OR REPLACE TEMP MACRO", text, count=1)
        for text in _statements(filename).values()
        if _MACRO.search(text)
    ]


_MACRO = re.compile(r"^CREATE OR REPLACE MACRO", re.MULTILINE)


def schema_fingerprint() -> str:
    """A digest of the schema statements: a writer re-applies them when the
    store's differs (a development change within one version)."""
    return hashlib.sha256("\n;\n".join(schema_statements()).encode()).hexdigest()[:16]


def schema_statements() -> list[str]:
    """The schema, in order: tables, migrations, views and macros, all idempotent."""
    here = resources.files(__name__)
    return [
        text
        for filename in SCHEMA_FILES
        if here.joinpath(filename).is_file()
        for text in _statements(filename).values()
    ]
