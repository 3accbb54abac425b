"""Cosine search in the current latent space, with the filters people ask for.

Everything runs in DuckDB through the macros of ``sql/search.sql``; the
statements are in ``sql/search_queries.sql``. A search first takes the
nearest candidates (exact scan, or the inverted-file index when it is fresh),
then filters them; when the filters leave fewer than ``k``, it widens the
candidates and asks again, so a filtered search still returns ``k`` tracks
whenever the space holds that many that pass.

Popularity floor: tracks without a popularity (local files, catalogs whose API
no longer reports it) pass, since the floor is only meaningful where the data
has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl

import sql
from sonufy_model.store import LATENT_DIM, Store, TrackNotFound

QUERIES = "search_queries.sql"

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

    def __post_init__(self) -> None:
        if isinstance(self.exclude_track_ids, str):
            raise TypeError("exclude_track_ids must be a sequence of track ids, not one string")
        object.__setattr__(self, "exclude_track_ids", tuple(self.exclude_track_ids))
        if self.max_per_artist is not None and self.max_per_artist < 1:
            raise ValueError(f"max_per_artist must be at least 1, got {self.max_per_artist}")

    @property
    def relational(self) -> bool:
        """Whether candidates can be dropped for reasons other than their id."""
        return (self.exclude_same_artist or self.exclude_same_album or self.exclude_duplicates
                or self.min_popularity is not None or self.max_per_artist is not None)


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


def similar(
    store: Store,
    *,
    track_id: str | None = None,
    vector: np.ndarray | None = None,
    seed_track_ids: Sequence[str] = (),
    k: int = 10,
    filters: SearchFilters = SearchFilters(),
    use_index: bool = True,
) -> pl.DataFrame:
    """The ``k`` tracks nearest to a track or a vector, best first.

    Exactly one of ``track_id`` (a track of the current space: it is excluded,
    and the filters compare with it) or ``vector`` (in the current model's
    standardised space; ``seed_track_ids`` are then the tracks the filters
    compare with, and are excluded). Columns: track_id, artist, title, album,
    preview_url, cosine, time_similarity, frequency_similarity.
    """
    if (track_id is None) == (vector is None):
        raise ValueError("give exactly one of track_id or vector")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if isinstance(seed_track_ids, str):
        raise TypeError("seed_track_ids must be a sequence of track ids, not one string")
    seeds = list(dict.fromkeys(([track_id] if track_id is not None else []) + list(seed_track_ids)))
    with store.connect() as con:
        query = _track_vector(con, store, track_id) if track_id is not None else query_vector(vector)
        excluded = len(set(filters.exclude_track_ids) | set(seeds))
        candidates = max(10 * k, 200) if filters.relational else k + excluded
        total = None
        while True:
            result = _exact(con, query, k, candidates, seeds, filters)
            if result.height >= k:
                return result
            if total is None:
                total = con.execute(sql.statement("current_space_size", QUERIES)).fetchone()[0]
            if candidates >= total:
                return result
            candidates *= 4


def _filter_parameters(seeds: list[str], filters: SearchFilters) -> dict:
    return {
        "exclude_track_ids": list(filters.exclude_track_ids),
        "seed_track_ids": seeds,
        "exclude_same_artist": filters.exclude_same_artist,
        "exclude_same_album": filters.exclude_same_album,
        "exclude_duplicates": filters.exclude_duplicates,
        "min_popularity": filters.min_popularity,
        "max_per_artist": filters.max_per_artist,
    }


def _exact(con, query: np.ndarray, k: int, candidates: int, seeds: list[str], filters: SearchFilters) -> pl.DataFrame:
    params = {"vector": query.tolist(), "k": k, "candidates": candidates, **_filter_parameters(seeds, filters)}
    return con.execute(sql.statement("search_exact", QUERIES), params).pl()
