"""Cosine search in the current latent space, with the filters people ask for.

Everything runs in DuckDB through the macros of ``sql/search.sql``; the
statements are in ``sql/search_queries.sql``. A search first takes the
nearest candidates, then filters them; when the filters leave fewer than
``k``, it widens the candidates (and the cells probed) and asks again, so a
filtered search still returns ``k`` tracks whenever the space holds that many
that pass.

The candidates come from an inverted-file index when the current model
version has one (:func:`build_index`, :func:`update_index`): centroids from
spherical k-means on a sample, every vector stored in its nearest centroid's
cell, grouped by cell; a query probes the ``nprobe`` cells nearest to it and
re-ranks their vectors exactly, plus, exactly, every vector created since the
index last covered them, so new tracks are found at once. Without an index
for the current version (a new version, or none built), or with
``use_index=False``, a search scans every vector exactly. The index is
rebuildable from the embeddings table at any time.

Popularity floor: tracks without a popularity (local files, catalogs whose API
no longer reports it) pass, since the floor is only meaningful where the data
has one. Duration bounds likewise: a track of unknown duration passes.

The gaps (no artist, or album, again within N tracks) act on the list's
order: each place of the ranked list takes the best-ranked track whose artist
is not among the N placed just before it, and a track that would break the gap
waits for a later place (the macro's ``artist_gap``); paths and radios keep
them in their own order (:mod:`sonufy_model.journeys`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import polars as pl

import sql
from sonufy_model.gaps import Gaps
from sonufy_model.kmeans import nearest_centroids, spherical_kmeans
from sonufy_model.store import LATENT_DIM, Store, TrackNotFound

QUERIES = "search_queries.sql"
SCHEMA_FILE = "search.sql"  # the macros and tables, applied as schema

RESULT_COLUMNS = (
    "track_id", "artist", "title", "album", "preview_url", "cosine", "time_similarity", "frequency_similarity",
)


@dataclass(frozen=True)
class SearchFilters:
    """What a list of recommendations must leave out."""

    exclude_track_ids: tuple[str, ...] = ()  # always excluded (the seeds, tracks already in a list)
    exclude_same_artist: bool = False  # relative to the seed track(s)
    exclude_same_album: bool = False
    exclude_duplicates: bool = False  # same ISRC, or same normalised title + artist, as a seed or a better result
    min_popularity: int | None = None  # tracks without a popularity pass
    max_per_artist: int | None = None  # at most N results per artist
    # Never listed: a track whose artist, album, id or "artist - title" is an
    # entry (case-insensitive, trimmed, runs of spaces as one; see read_exclusions).
    exclude: tuple[str, ...] = ()
    min_seconds: float | None = None  # duration bounds, inclusive; an unknown duration passes
    max_seconds: float | None = None
    artist_gap: int = 0  # no artist again within the N tracks after it (0: no gap)
    album_gap: int = 0  # likewise for an album

    def __post_init__(self) -> None:
        for name in ("exclude_track_ids", "exclude"):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a sequence of strings, not one string")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.max_per_artist is not None and self.max_per_artist < 1:
            raise ValueError(f"max_per_artist must be at least 1, got {self.max_per_artist}")
        check_bounds(self.min_seconds, self.max_seconds, self.artist_gap, self.album_gap)

    @property
    def relational(self) -> bool:
        """Whether candidates can be dropped for reasons other than their id."""
        return (self.exclude_same_artist or self.exclude_same_album or self.exclude_duplicates
                or self.min_popularity is not None or self.max_per_artist is not None
                or bool(self.exclude) or self.min_seconds is not None or self.max_seconds is not None
                or self.gapped)

    @property
    def gapped(self) -> bool:
        return self.artist_gap > 0 or self.album_gap > 0


def check_bounds(min_seconds: float | None, max_seconds: float | None, artist_gap: int = 0,
                 album_gap: int = 0) -> None:
    """A ValueError naming the duration bound or gap that no list can meet."""
    for name, value in (("min_seconds", min_seconds), ("max_seconds", max_seconds)):
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a number of seconds, 0 or more, got {value!r}")
    if min_seconds is not None and max_seconds is not None and min_seconds > max_seconds:
        raise ValueError(f"min_seconds {min_seconds:g} is more than max_seconds {max_seconds:g}: no track fits")
    Gaps(artist_gap, album_gap)  # the gaps check themselves


def read_exclusions(path) -> tuple[str, ...]:
    """An exclusion list's entries: one a line (an artist, an album, a track id
    or "artist - title"), trimmed; blank lines and lines starting with # left
    out. An OSError or UnicodeDecodeError when the file cannot be read as text."""
    from pathlib import Path

    text = Path(path).expanduser().read_text(encoding="utf-8-sig")
    entries = (line.strip() for line in text.splitlines())
    return tuple(dict.fromkeys(entry for entry in entries if entry and not entry.startswith("#")))


@contextmanager
def reading_connection(store: Store) -> Iterator[duckdb.DuckDBPyConnection]:
    """``store.connect()``, with this code's search macros: a reader of a store
    that no writer has migrated to this code's schema yet (readers never
    migrate) defines them on its own connection, as temporary macros over the
    store's older ones, so that the filters the store's macros lack still work."""
    with store.connect() as con:
        if store.reader and _older_schema(con, store):
            for statement in sql.temporary_macros(SCHEMA_FILE):
                con.execute(statement)
        yield con


# Whether a file read holds an older schema than this code's, by the file's
# identity: a published snapshot is replaced by a rename, so a new one is
# looked at again, and the same one is looked at once (two queries a search).
_older_schemas: dict[tuple[str, int, int], bool] = {}


def _older_schema(con: duckdb.DuckDBPyConnection, store: Store) -> bool:
    try:
        stat = store.read_path.stat()
        key = (str(store.read_path), stat.st_ino, stat.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _older_schemas:
        return _older_schemas[key]
    stored = Store._stored_schema(con)
    older = stored is None or stored[0] < sql.SCHEMA_VERSION or (
        stored[0] == sql.SCHEMA_VERSION and stored[1] != sql.schema_fingerprint())
    if key is not None:
        _older_schemas[key] = older
    return older


def track_vector(store: Store, track_id: str) -> np.ndarray:
    """The current model's standardised vector of ``track_id``."""
    with store.connect() as con:
        return _track_vector(con, store, track_id)


def _track_vector(con: duckdb.DuckDBPyConnection, store: Store, track_id: str) -> np.ndarray:
    row = con.execute(sql.statement("track_vector", QUERIES), {"track_id": track_id}).fetchone()
    if row is None:
        raise TrackNotFound(f"no track {track_id!r} in the current latent space of {store.path}")
    return np.asarray(row[0], dtype=np.float32)


def query_vector(vector: np.ndarray | Sequence[float]) -> np.ndarray:
    """``vector`` as a float32 array of the latent's length, or a ValueError naming what is wrong."""
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.shape[0] != LATENT_DIM:
        raise ValueError(f"vector must have {LATENT_DIM} numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("vector has NaN or infinite numbers")
    if not np.any(array):
        raise ValueError("vector is all zeros: cosine similarity is undefined")
    return array


# Above this k the space's size is looked up first, to bound the work; below
# it the count would only add to every query's time.
LARGE_K = 1000


def _space_size(con) -> int:
    return con.execute(sql.statement("current_space_size", QUERIES)).fetchone()[0]


def space_size(store: Store) -> int:
    """How many tracks the current latent space holds."""
    with store.connect(read_only=True) as con:
        return _space_size(con)


def similar(
    store: Store,
    *,
    track_id: str | None = None,
    vector: np.ndarray | None = None,
    seed_track_ids: Sequence[str] = (),
    k: int = 10,
    filters: SearchFilters = SearchFilters(),
    use_index: bool = True,
    nprobe: int | None = None,
) -> pl.DataFrame:
    """The ``k`` tracks nearest to a track or a vector, best first.

    Exactly one of ``track_id`` (a track of the current space: it is excluded,
    and the filters compare with it) or ``vector`` (in the current model's
    standardised space; ``seed_track_ids`` are then the tracks the filters
    compare with, and are excluded). Columns: track_id, artist, title, album,
    preview_url, cosine, time_similarity, frequency_similarity.
    ``nprobe``: cells the index probes (None: the index's default).
    """
    if (track_id is None) == (vector is None):
        raise ValueError("give exactly one of track_id or vector")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if nprobe is not None and nprobe < 1:
        raise ValueError(f"nprobe must be at least 1, got {nprobe}")
    if isinstance(seed_track_ids, str):
        raise TypeError("seed_track_ids must be a sequence of track ids, not one string")
    seeds = list(dict.fromkeys(([track_id] if track_id is not None else []) + list(seed_track_ids)))
    with reading_connection(store) as con:
        query = _track_vector(con, store, track_id) if track_id is not None else query_vector(vector)
        total = None
        if k > LARGE_K:  # up to k: never more than the space holds (a k past SQL's integers would fail)
            total = _space_size(con)
            k = min(k, max(1, total))
        if nprobe is None and use_index:  # the index's own, tuned when it was built
            state = con.execute(sql.statement("search_index_state", QUERIES)).fetchone()
            nprobe = state[2] if state else None
        excluded = len(set(filters.exclude_track_ids) | set(seeds))
        candidates = max(10 * k, 200) if filters.relational else k + excluded
        if filters.relational:
            params = {"vector": query.tolist(), "k": k, "candidates": candidates, "nprobe": nprobe,
                      "use_index": use_index, **_filter_parameters(seeds, filters)}
            statement = sql.statement("search", QUERIES)
        else:
            params = {"vector": query.tolist(), "k": k, "candidates": candidates, "nprobe": nprobe,
                      "use_index": use_index, "exclude_track_ids": list({*filters.exclude_track_ids, *seeds})}
            statement = sql.statement("search_nearest", QUERIES)
        cells = None
        while True:
            result = con.execute(statement, params).pl()
            if result.height >= k:
                return result
            # Too few passed: widen the candidates, and the cells probed, until
            # the last round is exhaustive.
            if cells is None:
                total = _space_size(con) if total is None else total
                state = con.execute(sql.statement("search_index_state", QUERIES)).fetchone()
                cells = state[1] if state and use_index else 0
                params["nprobe"] = params["nprobe"] or (state[2] if state else 1)
            if params["candidates"] >= total and params["nprobe"] >= cells:
                return result
            params["candidates"] = min(params["candidates"] * 4, max(total, 1))
            params["nprobe"] = min(params["nprobe"] * 4, max(cells, 1))


#: The named statements of :func:`recommend` (the styles of tracks).
RECOMMEND_QUERIES = "recommend_queries.sql"


def recommend(store: Store, query: str | None, k: int = 10) -> tuple[dict, pl.DataFrame]:
    """The seed track (its row) and the ``k`` tracks like it, as the build
    prints them: ``query`` is a track id or "artist - title" (None: the
    space's first track). The tracks are :func:`similar`'s columns plus their
    style (``style``), the seed's id (``seed_track_id``), "artist - title"
    (``seed``) and style (``seed_style``)."""
    seed = store.find_track(query) if query else store.first_track()
    recommendations = similar(store, track_id=seed["track_id"], k=k)
    styles = track_styles(store, [seed["track_id"], *recommendations["track_id"]])
    return seed, recommendations.with_columns(
        pl.col("track_id").replace_strict(styles, default=None, return_dtype=pl.String).alias("style"),
        pl.lit(seed["track_id"]).alias("seed_track_id"),
        pl.lit(f"{seed['artist']} - {seed['title']}").alias("seed"),
        pl.lit(styles.get(seed["track_id"]), dtype=pl.String).alias("seed_style"),
    )


def track_styles(store: Store, track_ids: list[str]) -> dict[str, str | None]:
    """The style of each of ``track_ids`` (the demo catalog's; None where a track has none)."""
    with store.connect() as con:
        rows = con.execute(
            sql.statement("track_styles", RECOMMEND_QUERIES), {"track_ids": list(track_ids)}
        ).fetchall()
    return dict(rows)


def _filter_parameters(seeds: list[str], filters: SearchFilters) -> dict:
    return {
        "exclude_track_ids": list(filters.exclude_track_ids),
        "seed_track_ids": seeds,
        "exclude_same_artist": filters.exclude_same_artist,
        "exclude_same_album": filters.exclude_same_album,
        "exclude_duplicates": filters.exclude_duplicates,
        "min_popularity": filters.min_popularity,
        "max_per_artist": filters.max_per_artist,
        "exclude_list": list(filters.exclude),
        "min_seconds": filters.min_seconds,
        "max_seconds": filters.max_seconds,
        "artist_gap": filters.artist_gap,
        "album_gap": filters.album_gap,
    }


# -- the index -----------------------------------------------------------------


@dataclass(frozen=True)
class IndexState:
    model_version: str
    cells: int
    nprobe: int
    vectors: int
    covered_until: datetime | None


def index_state(store: Store, model_version: str | None = None) -> IndexState | None:
    """The index of ``model_version`` (None: the current version), if it has one."""
    with store.connect() as con:
        if model_version is None:
            row = con.execute(sql.statement("search_index_state", QUERIES)).fetchone()
        else:
            row = con.execute(sql.statement("index_of_version", QUERIES), {"model_version": model_version}).fetchone()
    return IndexState(*row) if row else None


def default_cells(n: int) -> int:
    """Cells for ``n`` vectors: about 4 sqrt(n). Smaller cells re-rank fewer
    vectors for the same recall: at 1,000,000 vectors, 4,000 cells probed 48
    at a time answer in 19.8 ms at recall@10 0.971, where 2,000 cells need
    22.3 ms (bench/search.py, 2 cores)."""
    return max(1, min(n, round(4 * math.sqrt(n))))


#: Vectors a query re-ranks at least: below ~1M tracks a scan of this many
#: costs little next to DuckDB's fixed ~10 ms per query, and buys recall.
MIN_ROWS_PROBED = 8_000


def default_nprobe(cells: int, n: int) -> int:
    """Cells a query probes, for ``n`` vectors in ``cells`` cells: 1/128 of
    the vectors, and at least MIN_ROWS_PROBED of them. Measured with
    bench/search.py on clustered latents (2 cores): at 1,000,000 vectors in
    4,000 cells, 32 cells answer in 18.2 ms at p50 with recall@10 0.956
    (40: 19.9 ms, 0.964; 64: 22.2 ms, 0.982)."""
    rows_per_cell = max(1.0, n / max(cells, 1))
    rows = max(MIN_ROWS_PROBED, n / 128)
    return max(1, min(cells, math.ceil(rows / rows_per_cell)))


def build_index(
    store: Store,
    model_version: str | None = None,
    *,
    cells: int | None = None,
    nprobe: int | None = None,
    sample: int | None = None,
    iterations: int = 12,
    seed: int = 0,
) -> dict:
    """Build (or rebuild) the inverted-file index of ``model_version`` (None:
    the current version) from its embeddings. Returns what was built."""
    started = time.perf_counter()
    version = model_version or _current_version(store)
    with store.connect() as con:
        ids, vectors, created = _vectors(con, version, since=None)
    if not len(ids):
        raise ValueError(f"model version {version!r} has no vectors to index")
    cells = cells or default_cells(len(ids))
    if not 1 <= cells <= len(ids):
        raise ValueError(f"cells must be between 1 and the {len(ids)} vectors, got {cells}")
    nprobe = min(cells, nprobe or default_nprobe(cells, len(ids)))
    units = _unit(vectors)
    del vectors
    centroids = spherical_kmeans(units, cells, sample=sample, iterations=iterations, seed=seed)
    assignment = nearest_centroids(units, centroids)
    with store.transaction() as con:
        _drop_index(con, version)
        base = con.execute(sql.statement("next_free_cell", QUERIES)).fetchone()[0]
        _insert(con, version, base, centroids, ids, units, assignment)
        seconds = time.perf_counter() - started
        con.execute(sql.statement("record_index", QUERIES), {
            "model_version": version, "cells": cells, "nprobe": nprobe, "vectors": len(ids),
            "covered_until": max(created), "build_seconds": seconds,
        })
    return {"model_version": version, "cells": cells, "nprobe": nprobe, "vectors": len(ids),
            "build_seconds": seconds}


def update_index(store: Store) -> dict:
    """Keep the current version's index complete: build it when it is missing
    (or when the vectors added since would more than double it), else add the
    vectors created since it last covered them to their nearest cells, and
    drop the indexes of other versions. Returns what was done."""
    version = _current_version(store, required=False)
    if version is None:
        return {"index": "none: no current model"}
    with store.transaction() as con:
        others = [row[0] for row in con.execute(sql.statement("other_indexed_versions", QUERIES),
                                                {"model_version": version}).fetchall()]
        for other in others:
            _drop_index(con, other)
    state = index_state(store, version)
    if state is None:
        return {"index": "built", "dropped": others, **build_index(store, version)}
    with store.connect() as con:
        ids, vectors, created = _vectors(con, version, since=state.covered_until)
    if len(ids) > state.vectors:
        return {"index": "rebuilt", "dropped": others, **build_index(store, version)}
    with store.transaction() as con:
        centroids_rows = con.execute(sql.statement("centroids_of_version", QUERIES),
                                     {"model_version": version}).to_arrow_table()
        cell_numbers = centroids_rows["cell"].to_numpy()
        centroids = _matrix(centroids_rows["centroid"])
        units = _unit(vectors)
        assignment = cell_numbers[nearest_centroids(units, centroids)] if len(ids) else np.empty(0, np.int32)
        batch = pl.DataFrame({"cell": assignment, "track_id": ids},
                             schema={"cell": pl.Int32, "track_id": pl.String}).with_columns(
            pl.Series("unit", units, dtype=pl.Array(pl.Float32, LATENT_DIM)))
        with store._registered(con, "cells_batch", batch):
            con.execute(sql.statement("forget_indexed", QUERIES), {"model_version": version})
            con.execute(sql.statement("insert_cells", QUERIES))
        count = con.execute(sql.statement("record_index_update", QUERIES), {
            "model_version": version, "covered_until": max(created) if len(ids) else state.covered_until,
        }).fetchone()[0]
    return {"index": "updated", "dropped": others, "model_version": version, "added": len(ids), "vectors": count}


def _current_version(store: Store, required: bool = True) -> str | None:
    model = store.current_model()
    if model is None and required:
        raise TrackNotFound(f"{store.path}: no current model: run `sonufy build` first")
    return model.model_version if model else None


def _vectors(con, version: str, since: datetime | None) -> tuple[list[str], np.ndarray, list[datetime]]:
    table = con.execute(sql.statement("vectors_to_index", QUERIES),
                        {"model_version": version, "since": since}).to_arrow_table()
    return table["track_id"].to_pylist(), _matrix(table["vector"]), table["created_at"].to_pylist()


def _matrix(column) -> np.ndarray:
    """An Arrow column of FLOAT[256] as a (rows, 256) float32 matrix."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, LATENT_DIM)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


def _drop_index(con, version: str) -> None:
    for name in ("drop_index_cells", "drop_index_centroids", "drop_index_row"):
        con.execute(sql.statement(name, QUERIES), {"model_version": version})


def _insert(con, version: str, base: int, centroids: np.ndarray, ids: list[str], units: np.ndarray,
            assignment: np.ndarray) -> None:
    centroid_batch = pl.DataFrame({"cell": np.arange(base, base + len(centroids), dtype=np.int32)}).with_columns(
        pl.Series("centroid", centroids, dtype=pl.Array(pl.Float32, LATENT_DIM)))
    with Store._registered(con, "centroids_batch", centroid_batch):
        con.execute(sql.statement("insert_centroids", QUERIES), {"model_version": version})
    order = np.argsort(assignment, kind="stable")
    cells_batch = pl.DataFrame({"cell": (assignment[order] + base).astype(np.int32),
                                "track_id": pl.Series(ids)[order]}).with_columns(
        pl.Series("unit", units[order], dtype=pl.Array(pl.Float32, LATENT_DIM)))
    with Store._registered(con, "cells_batch", cells_batch):
        con.execute(sql.statement("insert_cells", QUERIES))
