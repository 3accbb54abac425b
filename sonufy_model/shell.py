"""``sonufy sql``: ad-hoc SQL on the store, read-only, its views and macros ready.

It opens the snapshot the writers publish after each run (see
``Store.publish``), so that a session of any length never holds up a
nightly; where none is published yet, the file itself.

The views (``latent``) and macros (``similar_to``, ``similar_to_vector``) are
stored in the file by the writers, so a read-only session has them as soon
as it opens. ``-c SQL`` runs the statements here, through the Python DuckDB
module (waiting, like every reader, while a write holds the file); without
``-c`` the DuckDB shell opens the file read-only, or, where no ``duckdb``
binary is installed, a small shell of our own does.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TextIO

import duckdb

from sonufy_model.store import Store

#: Rows printed per statement by -c and the fallback shell.
MAX_ROWS = 10_000


def duckdb_binary() -> str | None:
    """The DuckDB shell: $SONUFY_DUCKDB_CLI if set ("" for none), else the one
    installed beside this Python (the duckdb-cli package), else on PATH."""
    if "SONUFY_DUCKDB_CLI" in os.environ:
        return os.environ["SONUFY_DUCKDB_CLI"] or None
    beside = Path(sys.executable).parent / "duckdb"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("duckdb")


def run(store: Store, text: str, out: TextIO | None = None) -> int:
    """Run the statements of ``text`` read-only, printing each result; 0, or 1
    after printing the first error (later statements do not run)."""
    out = out or sys.stdout
    with store.connect(read_only=True) as con:
        return _run(con, text, out)


def _run(con: duckdb.DuckDBPyConnection, text: str, out: TextIO) -> int:
    try:
        statements = con.extract_statements(text)
        for statement in statements:
            relation = con.sql(statement.query)
            if relation is not None:
                print(str(relation) if relation.shape[0] <= 40 else _table(relation), file=out)
    except duckdb.Error as error:
        print(f"Error: {error}", file=out if out is not sys.stdout else sys.stderr)
        return 1
    return 0


def _table(relation: duckdb.DuckDBPyRelation) -> str:
    """Every row (up to MAX_ROWS) as tab-separated text: a long result is
    for reading in a pager or a file, not a box."""
    lines = ["\t".join(relation.columns)]
    for row in relation.limit(MAX_ROWS).fetchall():
        lines.append("\t".join("NULL" if value is None else str(value) for value in row))
    if relation.shape[0] > MAX_ROWS:
        lines.append(f"({relation.shape[0] - MAX_ROWS} more rows)")
    return "\n".join(lines)


def interactive(store: Store, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Our own shell, for where no DuckDB binary is installed: statements end
    with ';', ``.quit`` or end of input leaves. The file stays open read-only
    until then."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    prompt = stdin.isatty()
    if prompt:
        print(f"sonufy sql on {store.read_path} (read-only). End statements with ';', .quit to leave.", file=out)
    status, pending = 0, []
    with store.connect(read_only=True) as con:
        while True:
            if prompt:
                print("sonufy> " if not pending else "   ...> ", end="", file=out, flush=True)
            line = stdin.readline()
            if not line or (not pending and line.strip() in (".quit", ".exit")):
                break
            pending.append(line)
            if line.rstrip().endswith(";"):
                status = _run(con, "".join(pending), out) or status
                pending = []
        if "".join(pending).strip():
            status = _run(con, "".join(pending), out) or status
    return status


def shell(store: Store) -> int:
    """The DuckDB shell on the file, read-only; our own where there is none.
    Returns only when our own ran (the DuckDB shell replaces this process)."""
    binary = duckdb_binary()
    if binary is None:
        return interactive(store)
    # The published snapshot (see Store.publish), or the file itself while
    # none is published: then wait here, like every reader, while a write
    # holds it (the shell itself would fail at once with "Conflicting lock").
    with store.connect(read_only=True):
        pass
    os.execv(binary, [binary, "-readonly", str(store.read_path)])
    return 0  # not reached
