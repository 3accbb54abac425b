"""kill -9 at chosen points of a writing command, and what the store must look like after.

Each run of a command is a process of its own: a child forked by a
:class:`Zygote`, a helper process that imported the commands and compiled
UMAP's code once (about 10 s a fresh process pays before its first fit), so
that a dozen runs cost seconds. The child starts its own session (the
spectrogram workers it spawns die with it) and, before the command starts,
installs :func:`install`, which watches what the process does to the store:
every statement executed on a read-write DuckDB connection (named as in
``sql/*.sql``: ``insert_embeddings``, ``delete_group_landscape``; else
``BEGIN``, ``COMMIT``, ``ROLLBACK`` or the statement's first words) and every
file it removes (``remove``). Each is an event, appended to a trace file as it
happens ("W" for those that change the store, "R" for reads).
``SONUFY_TEST_KILL=NAME#N`` sends SIGKILL to the child's process group right
before the N-th event called NAME (``NAME#N+``: right after it), so a kill
lands at the same point of the run every time: between two statements of a
transaction, or between two transactions, wherever the code puts them.

Nothing of the command is replaced: the watch wraps the store's opening of
a read-write connection and the removal of files only to count them, every
statement runs as it would, and the kill is the kernel's. (One setting
differs from a plain run: numba's threads are its workqueue, not OpenMP,
whose threads a fork cannot take along.) Afterwards :func:`store_problems`
lists the invariants the store breaks (none: no half-written batch),
:func:`fingerprint` says what a whole run left, to compare with an
uninterrupted run's, and :func:`kill_chain` does it all for a list of kill
points.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KILL_ENV = "SONUFY_TEST_KILL"
TRACE_ENV = "SONUFY_TEST_TRACE"
_WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "CHECKPOINT")


# -- in the child -------------------------------------------------------------------------


class _Watch:
    """The events of this process, and the kill when the chosen one comes."""

    def __init__(self, kill: str | None, trace: str | None):
        import sql

        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        self.trace = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if trace else None
        self.kill_name, self.kill_n, self.kill_after = None, 0, False
        if kill:
            match = re.fullmatch(r"([^#]+)(?:#(\d+))?(\+?)", kill)
            if not match:
                raise ValueError(f"{KILL_ENV}={kill!r}: expected NAME, NAME#N or NAME#N+")
            self.kill_name, self.kill_n, self.kill_after = match[1], int(match[2] or 1), bool(match[3])
        self.names = {}
        for path in (REPO_ROOT / "sql").glob("*.sql"):
            for name, text in sql._statements(path.name).items():
                self.names.setdefault(" ".join(text.split()), name)

    def name_of(self, statement) -> str:
        text = " ".join(str(statement).split())
        return self.names.get(text) or " ".join(re.sub(r"--[^\n]*", "", str(statement)).split()[:2])

    @staticmethod
    def writes(statement) -> bool:
        """Whether the statement changes the store (a read is no point to kill at)."""
        words = re.sub(r"--[^\n]*", "", str(statement)).split()
        first = words[0].upper() if words else ""
        return first in _WRITES or (first == "WITH" and bool(re.search(r"\b(INSERT|UPDATE|DELETE)\b",
                                                                      str(statement), re.IGNORECASE)))

    def event(self, name: str, run, write: bool = True):
        """Run ``run`` (the statement, the removal) as the event ``name``
        (``write``: one that changes the store)."""
        with self.lock:
            number = self.seen[name] = self.seen.get(name, 0) + 1
        chosen = name == self.kill_name and number == self.kill_n
        if chosen and not self.kill_after:
            self.die(f"{name}#{number}")
        self.note(f"{'W' if write else 'R'} {name}#{number}")
        result = run()
        if chosen:
            self.die(f"{name}#{number}+")
        return result

    def note(self, line: str) -> None:
        if self.trace is not None:
            os.write(self.trace, (line + "\n").encode())

    def die(self, where: str) -> None:
        self.note(f"KILLED {where}")
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


class _Watched:
    """A read-write DuckDB connection whose statements are events."""

    def __init__(self, con, watch: _Watch):
        self._con, self._watch = con, watch

    def __getattr__(self, name):
        return getattr(self._con, name)

    def execute(self, statement, *args, **kwargs):
        return self._watch.event(self._watch.name_of(statement),
                                 lambda: self._con.execute(statement, *args, **kwargs), self._watch.writes(statement))

    def executemany(self, statement, *args, **kwargs):
        return self._watch.event(self._watch.name_of(statement),
                                 lambda: self._con.executemany(statement, *args, **kwargs),
                                 self._watch.writes(statement))

    def begin(self):
        return self._watch.event("BEGIN", self._con.begin, write=False)

    def commit(self):
        return self._watch.event("COMMIT", self._con.commit)

    def rollback(self):
        return self._watch.event("ROLLBACK", self._con.rollback, write=False)


def install() -> None:
    """Watch this process's writes (see the module's docstring), as the
    environment's ``SONUFY_TEST_KILL`` and ``SONUFY_TEST_TRACE`` say."""
    import pathlib

    from sonufy_model.store import Store

    watch = _Watch(os.environ.get(KILL_ENV), os.environ.get(TRACE_ENV))
    opened = Store._open

    def _open(self, read_only, path):
        con = opened(self, read_only, path)
        return con if read_only else _Watched(con, watch)

    Store._open = _open
    unlink, rmtree = pathlib.Path.unlink, shutil.rmtree
    pathlib.Path.unlink = lambda self, *a, **k: watch.event("remove", lambda: unlink(self, *a, **k))
    shutil.rmtree = lambda path, *a, **k: watch.event("remove", lambda: rmtree(path, *a, **k))


def warm() -> None:
    """What the commands import, and UMAP's compiled code (numba: about 10 s
    before a fresh process's first fit), paid once, in the zygote."""
    import great_expectations  # noqa: F401
    import numpy as np
    import torch  # noqa: F401

    import flows.build  # noqa: F401
    import flows.cli.operate  # noqa: F401
    import flows.nightly  # noqa: F401
    import sonufy_model.encoding  # noqa: F401
    from flows.cli import main  # noqa: F401
    from sonufy_model.landscape.layout import GROUP_PARAMS, TRACK_PARAMS, fit_umap

    vectors = np.random.default_rng(0).normal(size=(12, 256)).astype(np.float32)
    fit_umap(vectors, TRACK_PARAMS)
    fit_umap(vectors[:6], GROUP_PARAMS)


def child(job: dict) -> None:
    """In a forked child: the job's command, watched, then exit with its code."""
    import atexit
    import importlib
    import traceback

    os.environ.pop(KILL_ENV, None)
    if job["kill"]:
        os.environ[KILL_ENV] = job["kill"]
    os.environ[TRACE_ENV] = job["trace"]
    code = 1
    try:
        install()
        if job["argv"] is not None:
            from flows.cli import main

            code = main(job["argv"])
        else:
            module, _, function = job["call"].partition(":")
            getattr(importlib.import_module(module), function)(**job["kwargs"])
            code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


_ZYGOTE = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
import killing
killing.warm()
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        killing.child(job)
    deadline = time.monotonic() + job["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, 9)
        time.sleep(0.02)
    print(json.dumps({{"returncode": os.waitstatus_to_exitcode(status)}}), flush=True)
"""


# -- in the test ----------------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    output: str
    events: list[str] = field(default_factory=list)

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def writes(self) -> list[str]:
        """The events that change the store (statements that write, commits, file removals), in order."""
        return [event[2:] for event in self.events if event.startswith("W ")]

    def __str__(self) -> str:
        return f"exit {self.returncode}, events ...{self.events[-5:]}\n{self.output[-3000:]}"


class Zygote:
    """A process that imports the commands once, then forks a child per run:
    each run a process of its own, in its own process group (which a kill
    ends with all its workers), without the import and compile time."""

    def __init__(self, workdir: Path, env: dict | None = None):
        self.workdir = workdir
        self.jobs = 0
        code = _ZYGOTE.format(tests=str(Path(__file__).parent))
        # numba's workqueue threads, unlike OpenMP's, may be forked.
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "NUMBA_THREADING_LAYER": "workqueue"},
            text=True)
        ready = self.process.stdout.readline()
        if ready.strip() != "ready":
            self.close()
            raise RuntimeError(f"the zygote did not start: {ready!r}")

    def run(self, *, argv: list[str] | None = None, call: str | None = None, kwargs: dict | None = None,
            kill: str | None = None, timeout: float = 300) -> Run:
        """The command (``argv`` of ``sonufy``, or ``call``, a
        ``module:function`` called with ``kwargs``) in a child, killed at
        ``kill`` if given (see the module's docstring): its exit code, output and events."""
        self.jobs += 1
        trace, log = self.workdir / f"run-{self.jobs}.trace", self.workdir / f"run-{self.jobs}.log"
        job = {"argv": argv, "call": call, "kwargs": kwargs or {}, "kill": kill, "trace": str(trace),
               "log": str(log), "timeout": timeout}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError("the zygote died")
        events = trace.read_text().splitlines() if trace.exists() else []
        return Run(json.loads(answer)["returncode"], log.read_text() if log.exists() else "", events)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def kill_points(writes: list[str], count: int) -> list[str]:
    """``count`` kill specs spread evenly over the write events of a whole
    run, the first and the last among them: right before each, and right
    after the last."""
    if not writes:
        return []
    last = len(writes) - 1
    picked = range(len(writes)) if count >= len(writes) else sorted(
        {round(i * last / (count - 1)) for i in range(count)})
    return [writes[i] + ("+" if i == last else "") for i in picked]


# -- what a store must look like -----------------------------------------------------------

#: Each query returns the rows that break an invariant: none when it holds.
INVARIANTS = {
    "a vector without its track": "SELECT track_id FROM embeddings ANTI JOIN tracks USING (track_id)",
    "a vector of an unknown model": "SELECT model_version FROM embeddings ANTI JOIN models USING (model_version)",
    "a spectrogram without its preview": "SELECT track_id FROM spectrograms ANTI JOIN previews USING (track_id)",
    "a preview without its track": "SELECT track_id FROM previews ANTI JOIN tracks USING (track_id)",
    "two current models": "SELECT count(*) FROM models WHERE is_current HAVING count(*) > 1",
    "two tracks of one ISRC": "SELECT isrc FROM tracks WHERE isrc IS NOT NULL GROUP BY isrc HAVING count(*) > 1",
    "a track quarantined at fetch that has its preview":
        "SELECT track_id FROM quarantine JOIN previews USING (track_id) WHERE stage = 'fetch'",
    "a track quarantined at spectrogram that has its spectrogram":
        "SELECT DISTINCT track_id FROM quarantine JOIN spectrograms USING (track_id) WHERE stage = 'spectrogram'",
    "a track twice in a version's search index":
        "SELECT c.track_id, z.model_version FROM search_cells c JOIN search_centroids z USING (cell) "
        "GROUP BY ALL HAVING count(*) > 1",
    "an indexed track without its vector":
        "SELECT c.track_id FROM search_cells c JOIN search_centroids z USING (cell) "
        "ANTI JOIN embeddings e ON e.track_id = c.track_id AND e.model_version = z.model_version",
    "a search index whose count is not its cells":
        "SELECT i.model_version FROM search_index i LEFT JOIN (SELECT z.model_version, count(*) AS n "
        "FROM search_cells c JOIN search_centroids z USING (cell) GROUP BY ALL) USING (model_version) "
        "WHERE i.vectors IS DISTINCT FROM n",
    "cells of a version without its index row":
        "SELECT DISTINCT model_version FROM search_centroids ANTI JOIN search_index USING (model_version)",
    "a landscape point without its vector":
        "SELECT track_id FROM landscape ANTI JOIN embeddings USING (track_id, model_version)",
    "a landscape with fewer fitted points than its fit":
        "SELECT f.model_version FROM landscape_fits f WHERE level = 'tracks' AND f.points > (SELECT count(*) "
        "FROM landscape l WHERE l.model_version = f.model_version AND placed_by = 'fit')",
    "a group map listed in landscape_fits with fewer points than its fit":
        "SELECT f.model_version, f.level FROM landscape_fits f WHERE level <> 'tracks' AND f.points > "
        "(SELECT count(*) FROM group_landscape g WHERE g.model_version = f.model_version AND g.level = f.level)",
    "a group map not listed in landscape_fits":
        "SELECT DISTINCT model_version, level FROM group_landscape "
        "ANTI JOIN landscape_fits USING (model_version, level)",
}

#: What a store at rest (after a whole run) also holds: what a killed run left undone, the next did.
AT_REST = {
    "a run still running": "SELECT run_id, flow FROM runs WHERE status = 'running'",
    "models, none current": "SELECT count(*) FROM models HAVING count(*) > 0 AND count(*) FILTER (is_current) = 0",
    "a track of the latent space without its landscape point":
        "SELECT track_id FROM latent ANTI JOIN landscape USING (track_id, model_version) "
        "WHERE model_version IN (SELECT model_version FROM landscape_fits WHERE level = 'tracks')",
    "an artist of the landscape missing from the artist map":
        "SELECT DISTINCT t.artist FROM landscape l JOIN tracks t USING (track_id) "
        "JOIN landscape_fits f ON f.model_version = l.model_version AND f.level = 'artist' "
        "WHERE l.model_version = (SELECT model_version FROM models WHERE is_current) AND t.artist NOT IN "
        "(SELECT name FROM group_landscape g WHERE g.model_version = l.model_version AND g.level = 'artist')",
    "vectors of a version never current, neither current nor pending (a killed retrain's candidate)":
        "SELECT DISTINCT model_version FROM embeddings JOIN models USING (model_version) "
        "WHERE NOT is_current AND promotion_requested_at IS NULL AND ever_current IS NOT DISTINCT FROM false",
}


def _connect(db: Path):
    import duckdb

    return duckdb.connect(str(db), read_only=True)


def store_problems(db: Path, at_rest: bool = False) -> list[str]:
    """The invariants ``db`` breaks, each with a few of its rows (none: it is
    whole); ``at_rest``: also those of a store after a whole run. Opening it
    is the first check (after kill -9 DuckDB replays its write-ahead log)."""
    problems = []
    checks = {**INVARIANTS, **(AT_REST if at_rest else {})}
    con = _connect(db)
    try:
        for name, query in checks.items():
            rows = con.execute(query).fetchall()
            if rows:
                problems.append(f"{name}: {rows[:3]}")
        for (path,) in con.execute("SELECT DISTINCT shard FROM spectrograms").fetchall():
            if not (db.parent / path).is_file():
                problems.append(f"a spectrogram row whose shard is missing: {path}")
        # (gc frees the folders of versions neither current nor pending without vectors.)
        for (path,) in con.execute("SELECT checkpoint FROM models WHERE is_current OR promotion_requested_at "
                                   "IS NOT NULL OR model_version IN (SELECT model_version FROM embeddings)").fetchall():
            if not (db.parent / path).exists():
                problems.append(f"a model whose checkpoint is missing: {path}")
    finally:
        con.close()
    return problems


#: Columns that say when, or in which run: left out of a fingerprint.
_CLOCK = re.compile(r"(_at|_until|_seconds|^run_id|^attempts)$")
_SKIPPED_TABLES = {"runs", "sonufy_schema"}
#: What a model's numbers decide besides its floats (left out when ``values`` is False).
_LEARNT = ("config", "cluster", "clusters")
#: Where a row lies, not what it says: a search index's cell numbers, a spectrogram's shard (named at random).
_LAYOUT = {("search_cells", "cell"), ("search_cells", "unit"), ("search_centroids", "cell"),
           ("search_centroids", "centroid"), ("spectrograms", "shard"), ("spectrograms", "row")}


#: A landscape's points: UMAP's layout changes wholly when its input vectors
#: change in their last bits (measured: noise of 1e-7 moved points by up to 8).
_MAP_POINTS = {("landscape", "x"), ("landscape", "y"), ("group_landscape", "x"), ("group_landscape", "y")}


def fingerprint(db: Path, places: int = 4, values: bool = True,
                map_points: bool = True) -> dict[str, list[tuple]]:
    """What ``db`` holds, table by table, as sorted rows: every column but
    those of time and run, floats rounded to ``places``, model versions
    numbered in the order they were made, the store's folder as STORE, and
    where rows lie left out (the search index's cells, the shards). Two whole runs of the same work on the
    same store leave the same. ``values`` False: the rows without their
    numbers (vectors, points, losses, clusters) and a model's config, for runs that
    train (two trainings on differently batched shards learn different numbers).
    ``map_points`` False: the landscapes' points left out, for runs whose
    vectors were encoded anew (the same to 4 places, not to the last bit) and
    whose landscape was refitted on them."""
    con = _connect(db)
    try:
        names = {v: f"model-{i}" for i, (v,) in enumerate(
            con.execute("SELECT model_version FROM models ORDER BY created_at").fetchall())}
        folder = db.parent.parent if db.parent.suffix == ".snapshot" else db.parent
        names[str(folder)] = "STORE"  # paths in a model's config
        tables = [row[0] for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT temporary ORDER BY 1").fetchall()]
        out = {}
        for table in tables:
            if table in _SKIPPED_TABLES:
                continue
            columns = [name for name, kind in con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index",
                [table]).fetchall() if not _CLOCK.search(name) and "TIMESTAMP" not in kind
                and (table, name) not in _LAYOUT and (map_points or (table, name) not in _MAP_POINTS)
                and (values or not ("FLOAT" in kind or "DOUBLE" in kind or name in _LEARNT))]
            rows = con.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            out[table] = sorted((tuple(_plain(value, names, places) for value in row) for row in rows), key=repr)
        return out
    finally:
        con.close()


def _plain(value, names: dict, places: int):
    if isinstance(value, float):
        return "NaN" if value != value else round(value, places)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v, names, places) for v in value)
    if isinstance(value, str):
        for text, name in names.items():
            value = value.replace(text, name)
    return value


def table_counts(db: Path) -> dict[str, int]:
    return {table: len(rows) for table, rows in fingerprint(db, values=False).items()}


def kill_chain(zygote: Zygote, db: Path, specs: list[str], job: dict, before: Path | None = None,
               whole: Path | None = None) -> list[Run]:
    """Run ``job`` on ``db`` killed at each of ``specs`` in turn, each run
    starting from what the last left. After each kill the store opens and
    keeps every invariant, and its published snapshot is the one it had or
    the one a whole run publishes (readers see the previous whole state or
    the new one). Given ``before`` (a copy of ``db`` before the first run,
    None: no store yet) and ``whole`` (the store an uninterrupted run left),
    each table's count lies between theirs. Then one more run, which must
    finish and leave a store at rest. Returns the runs."""
    snapshot = snapshot_of(db)
    published = [fingerprint(snapshot) if snapshot.exists() else None]
    if whole is not None and snapshot_of(whole).exists():
        published.append(fingerprint(snapshot_of(whole)))
    low = table_counts(before) if before is not None else {}
    high = table_counts(whole) if whole is not None else None
    runs = []
    for spec in specs:
        run = zygote.run(**job, kill=spec)
        runs.append(run)
        assert run.killed, f"killed at {spec}? {run}"
        problems = store_problems(db)
        assert problems == [], f"killed at {spec}: {problems}"
        assert (fingerprint(snapshot) if snapshot.exists() else None) in published, f"killed at {spec}: snapshot"
        if high is not None:
            outside = {table: (low.get(table, 0), n, high.get(table, 0)) for table, n in table_counts(db).items()
                       if not min(low.get(table, 0), high.get(table, 0)) <= n
                       <= max(low.get(table, 0), high.get(table, 0))}
            assert not outside, f"killed at {spec}: (before, now, whole run) {outside}"
    runs.append(zygote.run(**job))
    assert runs[-1].returncode == 0, f"the run after the kills: {runs[-1]}"
    problems = store_problems(db, at_rest=True)
    assert problems == [], f"after the kills at {specs}: {problems}"
    return runs


def copy_store(db: Path, to: Path) -> Path:
    """The store's file, its data folder and its published snapshot, copied into the folder ``to``."""
    to.mkdir(parents=True, exist_ok=True)
    target = to / db.name
    shutil.copy(db, target)
    for suffix in (".data", ".snapshot"):
        folder = db.with_suffix(suffix)
        if folder.is_dir():
            shutil.copytree(folder, target.with_suffix(suffix))
    return target


def snapshot_of(db: Path) -> Path:
    """The copy readers open (Store.snapshot_path)."""
    return db.with_suffix(".snapshot") / db.name
