"""The DuckDB store: Sonufy's tables, and the only code that writes them.

Connections are short-lived: each operation opens the file, does its work in
one transaction and closes it, so that a user's DuckDB session can open the
file between the pipeline's writes. Batches arrive as polars DataFrames and
are handed to DuckDB through Arrow, without copying row by row.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

import sql
from sonufy_model.fusion import Fusion, fusion_path
from sonufy_model.schemas import QUARANTINE_SCHEMA, TRACK_SCHEMA
from sonufy_model.standardise import Standardiser

LATENT_DIM = 256

#: How long an operation waits for the DuckDB file while another process
#: holds it (DuckDB allows one writer process, or any number of read-only
#: ones): a user's read-only session, or another flow between its writes.
DEFAULT_LOCK_WAIT_S = 3600.0
_LOCK_ERROR = "Could not set lock on file"
_log = logging.getLogger(__name__)

def lock_wait_s_from_env() -> float:
    """``SONUFY_DB_LOCK_WAIT_S``, read when a store is made: a bad value is an
    error naming the variable (a command reports it), not a failed import."""
    raw = os.environ.get("SONUFY_DB_LOCK_WAIT_S", "").strip()
    if not raw:
        return DEFAULT_LOCK_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"SONUFY_DB_LOCK_WAIT_S={raw!r}: expected a number of seconds (0 or more)")
    return value


class NotAStore(ValueError):
    """A --db that exists but is not a DuckDB database; the message names it."""


class DatabaseLocked(RuntimeError):
    """Another process held the DuckDB file (or the store's writer lock) for
    longer than the store waits."""


class SchemaTooNew(RuntimeError):
    """The store was migrated by newer code than this: this code may read it, never write it."""


class TrackNotFound(LookupError):
    """A query names a track that is not in the current latent space."""


def _held_elsewhere(error: BaseException) -> bool:
    """Whether DuckDB refused the file because another process holds it."""
    return isinstance(error, duckdb.IOException) and _LOCK_ERROR in str(error)


def _open_when_free(path: Path, read_only: bool, lock_wait_s: float, started: float) -> duckdb.DuckDBPyConnection:
    """Connect once another process lets go of the file (tenacity): tries again
    at once, then with backoff from 0.02 s doubling up to 1 s, and raises
    :class:`DatabaseLocked` once ``lock_wait_s`` have passed since ``started``
    (``time.monotonic()``). Logs the wait at once, then every 30 s.
    """
    from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

    next_log = 0.0

    def waited(retry_state: RetryCallState) -> float:
        return retry_state.outcome_timestamp - started  # tenacity's clock is time.monotonic too

    def log_wait(retry_state: RetryCallState) -> None:
        nonlocal next_log
        if waited(retry_state) >= next_log:
            error = retry_state.outcome.exception()
            _log.warning("waiting for %s: %s", path.name, str(error).split(". See")[0])
            next_log = waited(retry_state) + 30.0

    def give_up(retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception()
        raise DatabaseLocked(
            f"{path}: another process held it for {waited(retry_state):.0f} s "
            f"(SONUFY_DB_LOCK_WAIT_S={lock_wait_s:g}): {error}"
        ) from error

    retrying = Retrying(
        retry=retry_if_exception(_held_elsewhere),
        wait=wait_exponential(multiplier=0.02, max=1.0),
        stop=lambda retry_state: waited(retry_state) >= lock_wait_s,
        before_sleep=log_wait,
        retry_error_callback=give_up,
    )
    return retrying(duckdb.connect, str(path), read_only=read_only)


@dataclass(frozen=True)
class ModelRecord:
    model_version: str
    checkpoint: str
    set_id: str
    latent_mean: list[float]
    latent_scale: list[float]
    # TrainConfig.texture: a pattern set ("blocks", "blocks6") fuses texture patterns into the vector
    # (sonufy_model.fusion); "none" does not.
    texture: str = "none"

    @property
    def standardiser(self) -> Standardiser:
        return Standardiser(
            mean=np.asarray(self.latent_mean, dtype=np.float32),
            scale=np.asarray(self.latent_scale, dtype=np.float32),
        )

    @property
    def fusion(self) -> Fusion | None:
        """The fitted fusion of a version that fuses texture patterns, None for one that does not."""
        if self.texture == "none":
            return None
        path = fusion_path(self.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"model {self.model_version}: its fitted fusion {path} is missing "
                                    "(the model folder was moved or deleted: `sonufy train` makes a new one)")
        return _loaded_fusion(str(path), path.stat().st_mtime_ns)

    def vectors(self, raw: np.ndarray, texture: np.ndarray | None) -> np.ndarray:
        """The vectors cosine compares, from tracks' ``raw`` encoder vectors
        and (for a version that fuses them) their texture patterns."""
        standardised = self.standardiser.transform(raw)
        fusion = self.fusion
        return standardised if fusion is None else fusion.transform(standardised, texture)


@lru_cache(maxsize=4)
def _loaded_fusion(path: str, mtime_ns: int) -> Fusion:
    # Read once per process per file (every batch of a build asks for it).
    return Fusion.load(path)


class Store:
    """Sonufy's DuckDB file.

    A writer (the default) opens it read-write, under the store's writer lock
    (:meth:`writer`), and migrates its schema on its first write. After each
    run the writing flow publishes it (:meth:`publish`): a copy, renamed into
    place as ``<stem>.snapshot/<name>`` beside it. A reader (``reader=True``:
    recommend, path, radio, evaluate, ``sonufy sql``) opens that snapshot
    read-only (the file itself while none is published) and never migrates:
    readers never wait for the writer, nor the writer for them, and each
    keeps the snapshot it opened. An explicit write of a reader (evaluate's
    rows) goes to the file, one short transaction under the writer lock.
    """

    _held: dict[Path, list] = {}  # writer lock file -> [open handle, holds in this process]
    _held_lock = threading.Lock()

    def __init__(self, path: str | Path, lock_wait_s: float | None = None, reader: bool = False):
        self.path = Path(path).expanduser().resolve()
        self.lock_wait_s = lock_wait_s_from_env() if lock_wait_s is None else lock_wait_s
        self.reader = reader

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}{', reader=True' if self.reader else ''})"

    @property
    def snapshot_path(self) -> Path:
        """The published read-only copy readers open: ``<stem>.snapshot/<name>``
        beside the file (in SQL its database is still called ``<stem>``)."""
        return self.path.with_name(f"{self.path.stem}.snapshot") / self.path.name

    @property
    def read_path(self) -> Path:
        """The file a reader opens: the snapshot, or the file while none is published."""
        return self.snapshot_path if self.reader and self.snapshot_path.exists() else self.path

    @property
    def lock_path(self) -> Path:
        """The writer lock: whoever writes the store holds it."""
        return self.path.with_name(f"{self.path.name}.writer.lock")

    # -- connections ---------------------------------------------------------

    @contextmanager
    def connect(self, read_only: bool | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one unit of work: read-only for a reader (unless
        ``read_only=False``), else read-write, holding the writer lock, the
        schema migrated to this code's version."""
        read_only = self.reader if read_only is None else read_only
        if read_only:
            with self._opened(True, self.read_path) as con:
                yield con
            return
        with self.writer("write", self.lock_wait_s) as busy:
            if busy:
                raise DatabaseLocked(f"{self.path}: {busy} for more than {self.lock_wait_s:g} s "
                                     "(SONUFY_DB_LOCK_WAIT_S)")
            with self._opened(False, self.path) as con:
                self._migrate(con)
                yield con

    @contextmanager
    def _opened(self, read_only: bool, path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._open(read_only, path)
        opened = time.monotonic()
        try:
            yield con
        finally:
            con.close()
            _log.debug("held %s %s for %.4f s", path, "read-only" if read_only else "read-write",
                       time.monotonic() - opened)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction: all of it lands, or none."""
        with self.connect(read_only=False) as con:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()

    def _open(self, read_only: bool, path: Path) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting with backoff while another process holds it.

        Every write is one short transaction on a short-lived connection, so
        the pipeline holds the file for milliseconds at a time; a user's
        session (``duckdb -readonly``) holds it while it is open, and the
        pipeline waits for it to close, up to ``lock_wait_s``.

        The usual open is one connect; only a conflict loads tenacity, for the
        wait (:func:`_open_when_free`), so readers do not import it.
        """
        started = time.monotonic()
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if "not a valid DuckDB database file" in str(error):
                size = path.stat().st_size if path.exists() else 0
                what = "an empty file" if size == 0 else f"{size:,} bytes of something else"
                raise NotAStore(f"{path}: not a DuckDB database ({what}); give the file `sonufy build` made, "
                                "or a new path for a new store") from None
            if not _held_elsewhere(error):
                raise
        return _open_when_free(path, read_only, self.lock_wait_s, started)

    @contextmanager
    def writer(self, purpose: str, wait_s: float = 0.0, publish: bool = False) -> Iterator[str | None]:
        """Hold the store's writer lock (``<db>.writer.lock``) for the block:
        one writer per store, whatever the flow or command.

        Yields None once held, or, when another process still holds it after
        ``wait_s`` seconds, a message naming it (and the block should write
        nothing). While it waits it logs who holds it. Reentrant within a
        process: a flow holds it for its whole run, and each of its writes
        takes it again. The operating system releases it when its holder
        exits, even on kill -9: a stale lock file never blocks.

        With ``publish`` (a flow's or a command's run), the outermost hold
        publishes the file for readers (:meth:`publish`) before it lets go,
        whether the block finished or failed: readers then see every whole
        batch it wrote. A writer killed mid-run publishes nothing: readers
        keep the last whole state.
        """
        lock_path = self.lock_path
        with self._held_lock:
            held = self._held.get(lock_path)
            if held is not None:
                held[1] += 1
        if held is None:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock_path, "a+")
            started, next_log = time.monotonic(), 0.0
            while True:
                with self._held_lock:
                    held = self._held.get(lock_path)
                    if held is not None:  # another thread of this process took it meanwhile
                        held[1] += 1
                        handle.close()
                        break
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        pass
                    else:
                        handle.seek(0)
                        handle.truncate()
                        handle.write(f"pid {os.getpid()} ({purpose}, since "
                                     f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
                        handle.flush()
                        held = self._held[lock_path] = [handle, 1]
                        break
                waited = time.monotonic() - started
                handle.seek(0)
                busy = f"{lock_path} is held by {handle.read().strip() or 'another process'}"
                if waited >= wait_s:
                    handle.close()
                    yield busy
                    return
                if waited >= next_log:
                    _log.warning("%s waits for the writer lock: %s (waited %.0f s of %g)",
                                 purpose, busy, waited, wait_s)
                    next_log = waited + 30.0
                time.sleep(min(0.2, max(0.01, wait_s - waited)))
        try:
            yield None
        finally:
            try:
                if publish and held[1] == 1:
                    self._publish_on_release(purpose)
            finally:
                with self._held_lock:
                    held[1] -= 1
                    if held[1] == 0:
                        del self._held[lock_path]
                        fcntl.flock(held[0], fcntl.LOCK_UN)
                        held[0].close()

    def _publish_on_release(self, purpose: str) -> None:
        failing = sys.exc_info()[1] is not None
        try:
            self.publish()
        except Exception:
            if not failing:
                raise
            _log.exception("%s: could not publish %s for readers", purpose, self.path)

    def publish(self) -> Path | None:
        """Publish the file for readers: checkpointed, copied, and renamed into
        place as :attr:`snapshot_path` (a reader that has the old snapshot open
        keeps it). Its cost is a copy of the file. Nothing to do when the file
        has not changed since the last publication. Returns the snapshot."""
        if not self.path.exists():
            return None
        with self.writer("publish", self.lock_wait_s) as busy:
            if busy:
                raise DatabaseLocked(f"publish: {busy} for more than {self.lock_wait_s:g} s")
            with self.connect(read_only=False) as con:
                con.execute("CHECKPOINT")
            target = self.snapshot_path
            wal = self.path.with_name(self.path.name + ".wal")
            if (target.exists() and not wal.exists()
                    and target.stat().st_mtime_ns > self.path.stat().st_mtime_ns):
                return target
            target.parent.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                if wal.exists():  # a transaction of this process still open: the file alone is an earlier whole state
                    _log.warning("publishing %s without its write-ahead log: an open transaction kept it", self.path)
                shutil.copyfile(self.path, staged)
                with open(staged, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(staged, target)
            finally:
                staged.unlink(missing_ok=True)
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            _log.info("published %s for readers (%.1f MiB in %.2f s)", target,
                      target.stat().st_size / 2**20, time.monotonic() - started)
        return target

    def schema_version(self) -> int | None:
        """The schema version recorded in the store (None: none recorded,
        a store from before versions, or no store)."""
        if not self.path.exists():
            return None
        with self.connect(read_only=True) as con:
            stored = self._stored_schema(con)
        return stored[0] if stored else None

    @staticmethod
    def _stored_schema(con: duckdb.DuckDBPyConnection) -> tuple[int, str] | None:
        if not con.execute(sql.statement("has_schema_version")).fetchone()[0]:
            return None
        row = con.execute(sql.statement("schema_version")).fetchone()
        return (int(row[0]), row[1]) if row else None

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        """Bring the schema to this code's version, or refuse to write a store
        a newer version has migrated. Nothing to do when it is this code's."""
        stored = self._stored_schema(con)
        fingerprint = sql.schema_fingerprint()
        if stored is not None and stored[0] > sql.SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} has schema version {stored[0]}, newer than this code's {sql.SCHEMA_VERSION}: "
                "newer Sonufy code has migrated it, and this code must not write to it (its macros and "
                "tables would replace the newer ones). Update this checkout (git pull; make install) to "
                "write; reading it (sonufy recommend, sonufy sql) works as it is."
            )
        if stored == (sql.SCHEMA_VERSION, fingerprint):
            return
        con.begin()
        try:
            for statement in sql.schema_statements():
                con.execute(statement)
            if stored is None or stored[0] < sql.RELATIVE_PATHS_VERSION:
                self._relativise_paths(con)
            con.execute(sql.statement("record_schema_version"),
                        {"version": sql.SCHEMA_VERSION, "fingerprint": fingerprint})
        except BaseException:
            con.rollback()
            raise
        con.commit()
        _log.info("%s: schema version %s migrated to %s", self.path.name, stored and stored[0], sql.SCHEMA_VERSION)

    # -- the files it points at ----------------------------------------------
    # Spectrogram shards, model checkpoints and downloaded previews under the
    # database file's folder are recorded relative to it, so that a store
    # moved or copied with its data folder finds them; they are given back
    # absolute. (A user's own audio files stay absolute: they do not move
    # with the store.)

    def stored_path(self, path: str | Path) -> str:
        """``path`` as the store records it: relative to the database file's
        folder when it lies under it (the default data folder does), else
        absolute (a --data-dir elsewhere stays where it is when the file moves)."""
        path = Path(path).resolve()
        return str(path.relative_to(self.path.parent)) if path.is_relative_to(self.path.parent) else str(path)

    def absolute_path(self, stored: str | None) -> str | None:
        """A recorded path made absolute again (stores from before version 3
        recorded absolute paths, given back as they are)."""
        if stored is None or os.path.isabs(stored):
            return stored
        return os.path.normpath(self.path.parent / stored)

    def _absolute(self, frame: pl.DataFrame, column: str) -> pl.DataFrame:
        """:meth:`absolute_path` over a column, in one expression (a manifest has a row per spectrogram)."""
        recorded = pl.col(column)
        return frame.with_columns(pl.when(recorded.str.starts_with("/")).then(recorded)
                                  .otherwise(pl.lit(f"{self.path.parent}{os.sep}") + recorded).alias(column))

    def _model_record(self, row: Sequence) -> ModelRecord:
        record = ModelRecord(*row)
        return replace(record, checkpoint=self.absolute_path(record.checkpoint))

    def _relativise_paths(self, con: duckdb.DuckDBPyConnection) -> None:
        """Rewrite the absolute shard and checkpoint paths of a store made
        before version 3 that lie under the database file's folder relative to
        it (its migration)."""
        for table, column, which in (("spectrograms", "shard", "true"), ("models", "checkpoint", "true"),
                                     ("previews", "path", "provider <> 'folder'")):
            found = con.execute(f"SELECT DISTINCT {column} FROM {table} "
                                f"WHERE starts_with({column}, '/') AND {which}").fetchall()
            if found:
                con.executemany(f"UPDATE {table} SET {column} = ? WHERE {column} = ?",
                                [(self.stored_path(path), path) for (path,) in found])

    def apply_schema(self) -> None:
        """Create or update the schema now (it is also migrated on first write)."""
        with self.connect(read_only=False):
            pass

    # -- generic helpers -----------------------------------------------------

    @staticmethod
    @contextmanager
    def _registered(con: duckdb.DuckDBPyConnection, view: str, frame: pl.DataFrame) -> Iterator[None]:
        """``frame`` visible to SQL as ``view`` (through Arrow) inside the block."""
        con.register(view, frame.to_arrow())
        try:
            yield
        finally:
            con.unregister(view)

    @classmethod
    def _run_with_batch(
        cls, con: duckdb.DuckDBPyConnection, statement_name: str, view: str, batch: pl.DataFrame
    ) -> None:
        with cls._registered(con, view, batch):
            con.execute(sql.statement(statement_name))

    @staticmethod
    def _quarantine_batch(failures: pl.DataFrame, keep: str = "last") -> pl.DataFrame:
        """Quarantine rows in the table's types, one per track and stage."""
        return failures.select(
            [pl.col(name).cast(dtype) for name, dtype in QUARANTINE_SCHEMA.items()]
        ).unique(["track_id", "stage"], keep=keep, maintain_order=True)

    # -- runs ----------------------------------------------------------------

    def start_run(self, run_id: str, flow: str, parameters: dict) -> None:
        with self.connect(read_only=False) as con:
            con.execute(
                sql.statement("start_run"),
                {"run_id": run_id, "flow": flow, "parameters": json.dumps(parameters, default=str)},
            )

    def finish_run(self, run_id: str, status: str, counts: dict) -> None:
        with self.connect(read_only=False) as con:
            con.execute(
                sql.statement("finish_run"),
                {"run_id": run_id, "status": status, "counts": json.dumps(counts, default=str)},
            )

    def crash_stale_runs(self, flow: str, run_id: str) -> None:
        """Mark ``flow``'s other runs still 'running' as 'crashed' (call while
        holding the :meth:`writer` lock: no other writer is alive)."""
        with self.connect(read_only=False) as con:
            con.execute(sql.statement("crash_stale_runs"), {"flow": flow, "run_id": run_id})

    def run_changes(self, run_id: str, model_version: str | None) -> dict:
        """What a started run (and crashed runs before it) changed: counts,
        the tracks added to ``model_version``'s space, the tracks quarantined."""
        with self.connect() as con:
            [(since,)] = con.execute(sql.statement("changes_since"), {"run_id": run_id}).fetchall()
            params = {"since": since}
            counts = con.execute(sql.statement("run_counts"), params).pl().row(0, named=True)
            added = con.execute(
                sql.statement("run_additions"), {**params, "model_version": model_version}
            ).pl()
            quarantined = con.execute(sql.statement("run_quarantine"), params).pl()
        return {"since": since, "counts": dict(counts), "added": added, "quarantined": quarantined}

    def counts(self) -> dict[str, int]:
        with self.connect() as con:
            row = con.execute(sql.statement("table_counts")).pl().row(0, named=True)
        return dict(row)

    # -- tracks --------------------------------------------------------------

    def upsert_tracks(self, tracks: pl.DataFrame) -> int:
        """Insert new tracks and refresh changed ones; reruns change nothing.

        Returns how many rows were inserted or changed. A track whose ISRC is
        already here under another track id is not inserted (see sql/queries.sql).
        """
        if tracks.is_empty():
            return 0
        batch = self._tracks_batch(tracks)
        with self.transaction() as con:
            return self._upsert_tracks(con, batch)

    def record_scraped_tracks(self, tracks: pl.DataFrame, failures: pl.DataFrame,
                              albums_read: Sequence[str] = ()) -> int:
        """Scraped tracks that passed the metadata suite, and the quarantine rows of those that did not.

        One transaction: the passing tracks are upserted and released from the
        'scrape' quarantine, the failing ones quarantined (and not written),
        and ``albums_read`` (albums the scrape read whole, none of their tracks
        failing) remembered, so that the nightly's tag:new does not read them again.
        Returns how many tracks were inserted or changed.
        """
        written = 0
        with self.transaction() as con:
            if albums_read:
                albums = pl.DataFrame({"album_id": list(albums_read)}, schema={"album_id": pl.String})
                self._run_with_batch(con, "remember_scraped_albums", "albums_batch", albums)
            if not tracks.is_empty():
                batch = self._tracks_batch(tracks)
                written = self._upsert_tracks(con, batch)
                self._release(con, "scrape", batch["track_id"])
            if not failures.is_empty():
                quarantined = self._quarantine_batch(failures, keep="first")
                self._run_with_batch(con, "quarantine_tracks", "quarantine_batch", quarantined)
        return written

    @staticmethod
    def _tracks_batch(tracks: pl.DataFrame) -> pl.DataFrame:
        return tracks.select(
            [pl.col(name).cast(dtype) for name, dtype in TRACK_SCHEMA.items()]
        ).unique("track_id", keep="last", maintain_order=True)

    def _upsert_tracks(self, con: duckdb.DuckDBPyConnection, batch: pl.DataFrame) -> int:
        with self._registered(con, "tracks_batch", batch):
            written = con.execute(sql.statement("upsert_tracks")).fetchone()
        return int(written[0]) if written else 0

    def tracks_without_preview(self, max_attempts: int = 3) -> pl.DataFrame:
        """Catalog tracks to fetch: no preview, and fewer than ``max_attempts`` failed runs."""
        with self.connect() as con:
            return con.execute(sql.statement("tracks_without_preview"), {"max_attempts": max_attempts}).pl()

    # -- previews ------------------------------------------------------------

    def record_previews(self, previews: pl.DataFrame) -> None:
        """previews: track_id, provider, path, bytes, duration_s."""
        if previews.is_empty():
            return
        batch = previews.unique("track_id", keep="last", maintain_order=True)
        # Downloads lie in the data folder and move with the store; a folder
        # source's files are the user's own, recorded where they are.
        batch = batch.with_columns(
            pl.when(pl.col("provider") == "folder").then(pl.col("path"))
            .otherwise(pl.col("path").map_elements(self.stored_path, return_dtype=pl.String)).alias("path"))
        with self.transaction() as con:
            self._run_with_batch(con, "upsert_previews", "previews_batch", batch)
            self._release(con, "fetch", batch["track_id"])

    def drop_previews(self, track_ids: list[str]) -> int:
        """Delete downloaded preview files once their spectrograms are stored.

        The user's own files (folder sources) are never touched. The rows stay,
        with a NULL path: the track has had its audio, and a rerun does not
        download it again.
        """
        if not track_ids:
            return 0
        dropped = pl.DataFrame({"track_id": track_ids}, schema={"track_id": pl.String})
        with self.transaction() as con, self._registered(con, "dropped_batch", dropped):
            rows = con.execute(sql.statement("droppable_previews")).fetchall()
            con.execute(sql.statement("forget_preview_paths"))
        for _, path in rows:
            Path(self.absolute_path(path)).unlink(missing_ok=True)
        return len(rows)

    def known_album_ids(self) -> frozenset[str]:
        """Albums an earlier scrape read whole, none of their tracks failing
        the metadata suite (what the nightly's ``tag:new`` need not read again)."""
        with self.connect() as con:
            return frozenset(row[0] for row in con.execute(sql.statement("known_album_ids")).fetchall())

    # -- local files ---------------------------------------------------------

    def known_files(self, root: str) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) of a folder source's files as last scanned."""
        with self.connect() as con:
            rows = con.execute(sql.statement("known_files"), {"root": root}).fetchall()
        return {path: (size, mtime_ns) for path, size, mtime_ns in rows}

    def record_scan(self, tracks: pl.DataFrame, previews: pl.DataFrame, files: pl.DataFrame,
                    changed_track_ids: list[str]) -> None:
        """A folder scan's new and changed files, in one transaction.

        What was derived from a changed file (spectrograms, vectors) is
        forgotten so that the next stages redo it.
        """
        with self.transaction() as con:
            if changed_track_ids:
                changed = pl.DataFrame({"track_id": changed_track_ids}, schema={"track_id": pl.String})
                with self._registered(con, "changed_batch", changed):
                    con.execute(sql.statement("forget_derived_spectrograms"))
                    con.execute(sql.statement("forget_derived_embeddings"))
                self._release(con, "spectrogram", changed["track_id"])
            if not tracks.is_empty():
                self._upsert_tracks(con, self._tracks_batch(tracks))
                self._run_with_batch(con, "upsert_previews", "previews_batch", previews)
                self._release(con, "fetch", previews["track_id"])
                self._run_with_batch(con, "upsert_files", "files_batch", files)

    # -- quarantine ----------------------------------------------------------

    def quarantine(self, failures: pl.DataFrame) -> None:
        """failures: track_id, stage, reason, run_id (run_id may be null)."""
        if failures.is_empty():
            return
        with self.transaction() as con:
            self._run_with_batch(con, "quarantine_tracks", "quarantine_batch", self._quarantine_batch(failures))

    def _release(self, con: duckdb.DuckDBPyConnection, stage: str, track_ids: pl.Series) -> None:
        with self._registered(con, "released_batch", pl.DataFrame({"track_id": track_ids})):
            con.execute(sql.statement("release_from_quarantine"), {"stage": stage})

    def quarantined(self, stage: str | None = None) -> pl.DataFrame:
        with self.connect() as con:
            rel = con.sql("SELECT track_id, stage, reason, run_id, attempts FROM quarantine ORDER BY track_id")
            frame = rel.pl()
        return frame if stage is None else frame.filter(pl.col("stage") == stage)

    # -- spectrograms --------------------------------------------------------

    def register_spectrogram_set(self, set_id: str, params: dict) -> None:
        with self.connect(read_only=False) as con:
            con.execute(
                sql.statement("upsert_spectrogram_set"),
                {"set_id": set_id, "params": json.dumps(params, sort_keys=True)},
            )

    def previews_without_spectrogram(self, set_id: str) -> pl.DataFrame:
        with self.connect() as con:
            frame = con.execute(sql.statement("previews_without_spectrogram"), {"set_id": set_id}).pl()
        return self._absolute(frame, "path")

    def record_spectrograms(self, index: pl.DataFrame, failures: pl.DataFrame) -> None:
        """index: track_id, set_id, shard, row; failures: quarantine rows.

        One transaction, so that a track is either indexed or quarantined,
        never half of each.
        """
        if not index.is_empty():
            index = index.with_columns(pl.col("shard").map_elements(self.stored_path, return_dtype=pl.String))
        with self.transaction() as con:
            if not index.is_empty():
                self._run_with_batch(con, "insert_spectrograms", "spectrograms_batch", index)
                self._release(con, "spectrogram", index["track_id"])
            if not failures.is_empty():
                self._run_with_batch(con, "quarantine_tracks", "quarantine_batch", self._quarantine_batch(failures))

    def spectrogram_params(self, set_id: str) -> dict | None:
        """The parameters a spectrogram set was computed with, if it is registered."""
        with self.connect() as con:
            rows = con.execute(sql.statement("spectrogram_set_params"), {"set_id": set_id}).fetchall()
        return json.loads(rows[0][0]) if rows else None

    def spectrogram_manifest(self, set_id: str) -> pl.DataFrame:
        with self.connect() as con:
            return self._absolute(con.execute(sql.statement("spectrogram_manifest"), {"set_id": set_id}).pl(), "shard")

    # -- models --------------------------------------------------------------

    def register_model(self, record: dict, promote: bool = True) -> None:
        """record: the models table's columns; latent_mean/latent_scale as sequences.

        With ``promote`` the version is asked to become current (see
        :meth:`request_promotion`); it does once it is fully encoded."""
        params = dict(record)
        params.setdefault("val_loss", None)  # the selection score, where the trainer reports one
        params["checkpoint"] = self.stored_path(params["checkpoint"])
        params["config"] = json.dumps(params["config"], sort_keys=True, default=str)
        for key in ("latent_mean", "latent_scale"):
            params[key] = [float(x) for x in params[key]]
        with self.transaction() as con:
            con.execute(sql.statement("insert_model"), params)
            if promote:
                self._request_promotion(con, record["model_version"])

    def model(self, model_version: str) -> ModelRecord:
        with self.connect() as con:
            rows = con.execute(sql.statement("model_by_version"), {"model_version": model_version}).fetchall()
        if not rows:
            raise LookupError(f"no model version {model_version!r} in {self.path}")
        return self._model_record(rows[0])

    def promote(self, model_version: str) -> None:
        """Make ``model_version`` the one current model, in one statement."""
        self.model(model_version)  # a clear error for an unknown version
        with self.transaction() as con:
            con.execute(sql.statement("promote_model"), {"model_version": model_version})

    def request_promotion(self, model_version: str) -> None:
        """Ask for ``model_version`` to become current once every track has a
        vector in it (:meth:`switch_if_encoded`); until then queries answer
        from the current version. The vectors of a version this request
        replaces, which never became current, are deleted with it."""
        self.model(model_version)
        with self.transaction() as con:
            self._request_promotion(con, model_version)

    @staticmethod
    def _request_promotion(con: duckdb.DuckDBPyConnection, model_version: str) -> None:
        con.execute(sql.statement("forget_superseded_embeddings"), {"model_version": model_version})
        con.execute(sql.statement("request_promotion"), {"model_version": model_version})

    def pending_model(self) -> ModelRecord | None:
        """The version waiting to become current, if any."""
        with self.connect() as con:
            rows = con.execute(sql.statement("pending_model")).fetchall()
        return self._model_record(rows[0]) if rows else None

    def switch_if_encoded(self) -> str | None:
        """Make the pending version current if no track is left to encode in
        it; the version switched to, or None."""
        with self.transaction() as con:
            rows = con.execute(sql.statement("switch_to_pending")).fetchall()
        return next((version for version, current in rows if current), None)

    def forget_model_embeddings(self, model_version: str) -> None:
        """Delete a model version's vectors (one that is not current)."""
        if self.current_model() and self.current_model().model_version == model_version:
            raise ValueError(f"model {model_version} is current: its vectors are the latent space")
        with self.transaction() as con:
            con.execute(sql.statement("forget_model_embeddings"), {"model_version": model_version})

    def abandoned_candidates(self) -> dict[str, int]:
        """Versions with vectors that are not current, not waiting to become
        current and never were current, with how many vectors each has: a
        retrain's candidate whose run was killed before it decided (a finished
        retrain deletes a rejected candidate's vectors itself). Meaningful
        only under the writer lock (:meth:`writer`): the retrain encoding a
        candidate holds it for its whole run."""
        with self.connect() as con:
            return dict(con.execute(sql.statement("abandoned_candidates")).fetchall())

    def forget_abandoned_candidates(self) -> dict[str, int]:
        """Delete the vectors of :meth:`abandoned_candidates`, in one
        transaction; what was deleted (version: vectors). Call it holding the
        writer lock for a whole run (``sonufy gc``, a retrain's start), never
        from inside a retrain that is encoding its candidate."""
        with self.transaction() as con:
            found = dict(con.execute(sql.statement("abandoned_candidates")).fetchall())
            if found:
                con.execute(sql.statement("forget_abandoned_candidates"))
        return found

    def target_model(self) -> ModelRecord | None:
        """The version new work is for: the pending one, else the current one."""
        return self.pending_model() or self.current_model()

    def current_model(self) -> ModelRecord | None:
        with self.connect() as con:
            rows = con.execute(sql.statement("current_model")).fetchall()
        return self._model_record(rows[0]) if rows else None

    # -- embeddings ----------------------------------------------------------

    def spectrograms_without_embedding(self, set_id: str, model_version: str) -> pl.DataFrame:
        with self.connect() as con:
            return self._absolute(con.execute(
                sql.statement("spectrograms_without_embedding"),
                {"set_id": set_id, "model_version": model_version},
            ).pl(), "shard")

    def stored_identical_vectors(
        self, model_version: str, track_ids: pl.Series, raw: np.ndarray
    ) -> list[tuple[str, str]]:
        """(batch track, stored track) pairs of ``model_version`` with identical raw vectors."""
        if len(track_ids) == 0:
            return []
        batch = pl.DataFrame({"track_id": track_ids}).with_columns(
            pl.Series("raw", raw.astype(np.float32), dtype=pl.Array(pl.Float32, LATENT_DIM))
        )
        with self.connect(read_only=True) as con, self._registered(con, "vectors_batch", batch):
            rows = con.execute(sql.statement("stored_identical_vectors"), {"model_version": model_version}).fetchall()
        return [(track_id, other) for track_id, other in rows]

    def record_embeddings(self, embeddings: pl.DataFrame) -> None:
        """embeddings: track_id, model_version, raw and vector (Array(Float32, 256))."""
        if embeddings.is_empty():
            return
        batch = embeddings.unique(
            ["track_id", "model_version"], keep="last", maintain_order=True
        )
        with self.transaction() as con:
            self._run_with_batch(con, "insert_embeddings", "embeddings_batch", batch)

    # -- evaluations ---------------------------------------------------------

    def evaluation_space(self, model_version: str | None = None) -> dict:
        """A model's vectors with labels: model_version, set_id, and tracks
        (track_id, vector, artist, album, genre; see sql/queries.sql). The
        current model's, unless ``model_version`` names another."""
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such DuckDB file; run `sonufy build` first")
        with self.connect() as con:
            frame = con.execute(sql.statement("evaluation_space"), {"model_version": model_version}).pl()
        if frame.is_empty():
            which = f"model {model_version}" if model_version else "the latent space"
            raise TrackNotFound(f"{self.path}: {which} has no vectors: run `sonufy build` first")
        return {
            "model_version": frame["model_version"][0],
            "set_id": frame["set_id"][0],
            "tracks": frame.drop("model_version", "set_id"),
        }

    def record_evaluations(self, model_version: str, rows: Sequence[dict]) -> None:
        """rows: space, label, artist_filter, exclude_same, k, precision (and
        precision_low/high), map (and map_low/high), chance, map_chance, tracks."""
        if not rows:
            return
        schema = {"space": pl.String, "label": pl.String, "artist_filter": pl.Boolean,
                  "exclude_same": pl.String, "k": pl.Int32, "precision": pl.Float64,
                  "precision_low": pl.Float64, "precision_high": pl.Float64, "map": pl.Float64,
                  "map_low": pl.Float64, "map_high": pl.Float64, "chance": pl.Float64,
                  "map_chance": pl.Float64, "tracks": pl.Int32}
        batch = pl.DataFrame([{name: row.get(name) for name in schema} for row in rows], schema=schema)
        with self.transaction() as con, self._registered(con, "evaluations_batch", batch):
            con.execute(sql.statement("insert_evaluations"), {"model_version": model_version})

    def evaluations(self) -> pl.DataFrame:
        with self.connect() as con:
            return con.execute(sql.statement("evaluations")).pl()

    def baseline_manifest(self, set_id: str) -> pl.DataFrame:
        """track_id, excerpt, shard, row, created_at of a set's spectrograms, in shard order."""
        with self.connect() as con:
            return self._absolute(con.execute(sql.statement("baseline_manifest"), {"set_id": set_id}).pl(), "shard")

    def cached_baseline_features(self, set_id: str, kind: str) -> dict[str, np.ndarray]:
        """track_id → baseline features of ``kind`` still valid for its spectrograms."""
        with self.connect() as con:
            rows = con.execute(sql.statement("cached_baseline_features"),
                               {"set_id": set_id, "kind": kind}).fetchall()
        return {track_id: np.asarray(features, dtype=np.float64) for track_id, features in rows}

    def record_baseline_features(self, set_id: str, kind: str, features: dict[str, np.ndarray],
                                 manifest: pl.DataFrame) -> None:
        """Cache ``features`` (track_id → vector), computed from the spectrograms
        of ``manifest`` (track_id, created_at), which say when they are stale."""
        if not features:
            return
        made = manifest.group_by("track_id").agg(pl.len().alias("excerpts"),
                                                 pl.col("created_at").max().alias("spectrograms_at"))
        ids = list(features)
        batch = pl.DataFrame({
            "track_id": ids,
            "features": pl.Series([np.asarray(features[t], dtype=np.float32) for t in ids],
                                  dtype=pl.List(pl.Float32)),
        }).join(made.with_columns(pl.col("excerpts").cast(pl.Int32)), on="track_id", how="inner")
        with self.transaction() as con, self._registered(con, "baseline_features_batch", batch):
            con.execute(sql.statement("upsert_baseline_features"), {"set_id": set_id, "kind": kind})

    # -- recommendations -----------------------------------------------------

    def find_track(self, query: str) -> dict:
        """A track of the current latent space by id or by "artist - title"."""
        with self.connect() as con:
            rows = con.execute(sql.statement("find_track"), {"query": query}).pl()
        if rows.is_empty():
            raise TrackNotFound(
                f"no track {query!r} in the latent space: give a track id or 'artist - title'"
            )
        return rows.row(0, named=True)

    def first_track(self) -> dict:
        with self.connect() as con:
            rows = con.execute(sql.statement("first_track")).pl()
        if rows.is_empty():
            raise TrackNotFound("the latent space is empty: run `sonufy build` first")
        return rows.row(0, named=True)


def batches(frame: pl.DataFrame, size: int, by: str | None = None) -> Sequence[pl.DataFrame]:
    """Split a frame into consecutive batches of at most ``size`` rows.

    With ``by``, rows sharing that column's value stay in one batch (a track's
    excerpts are encoded together), and ``size`` counts distinct values.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    if by is None:
        return [frame.slice(offset, size) for offset in range(0, frame.height, size)]
    keys = frame[by].unique(maintain_order=True)
    return [
        frame.filter(pl.col(by).is_in(keys.slice(offset, size).to_list()))
        for offset in range(0, keys.len(), size)
    ]
