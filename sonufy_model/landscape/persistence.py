"""The landscape in DuckDB: fit or place the tracks of the current model
version, refit or extend the artist and genre landscapes, and read the
points back."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import duckdb
import numpy as np
import polars as pl

import sql
from sonufy_model.landscape.clusters import CLUSTER_K_RANGE, Clustering, choose_clusters
from sonufy_model.landscape.layout import (
    GROUP_PARAMS,
    LEGACY_PARAMS,
    MIN_POINTS,
    TRACK_PARAMS,
    FitInfo,
    UmapParams,
    fit_umap,
    read_fit_info,
    umap_path,
)
from sonufy_model.landscape.placement import REFIT_PLACED_SHARE, nearest_fitted, needs_refit, place_by_neighbours
from sonufy_model.store import Store, TrackNotFound

SQL_FILE = "landscape_queries.sql"


def _query(store: Store, name: str, params: dict | None = None) -> pl.DataFrame:
    with store.connect() as con:
        return con.execute(sql.statement(name, SQL_FILE), params or {}).pl()


def _vectors(frame: pl.DataFrame) -> np.ndarray:
    return frame["vector"].to_numpy().astype(np.float32, copy=False).reshape(frame.height, -1)


@dataclass(frozen=True)
class _GroupMap:
    """One group level's new map: its points (None: too few groups for a
    map, which goes with its fit row), and its fit row when refitted."""

    level: str
    batch: pl.DataFrame | None
    fit_row: dict | None = None

    @property
    def points(self) -> int:
        return 0 if self.batch is None else self.batch.height


def _write_points(store: Store, model_version: str, track_ids: pl.Series, points: np.ndarray,
                  placed_by: str, replace_all: bool, fit_row: dict | None = None,
                  group_maps: Sequence[_GroupMap] = ()) -> None:
    """The tracks' points (with the fit row when fitted) and the group maps
    made from them, in one transaction: a crash leaves the previous landscape
    whole, never new points beside group maps that lack their new artists."""
    batch = pl.DataFrame({"track_id": track_ids, "x": points[:, 0], "y": points[:, 1]})
    with store.transaction() as con:
        if replace_all:
            con.execute(sql.statement("delete_landscape", SQL_FILE), {"model_version": model_version})
        con.register("landscape_batch", batch.to_arrow())
        try:
            con.execute(
                sql.statement("insert_landscape", SQL_FILE),
                {"model_version": model_version, "placed_by": placed_by},
            )
        finally:
            con.unregister("landscape_batch")
        if fit_row is not None:
            con.execute(sql.statement("upsert_landscape_fit", SQL_FILE), fit_row)
        for group_map in group_maps:
            _replace_group_map(con, model_version, group_map)


def _fit_row(model_version: str, level: str, points: int, used: UmapParams,
             clustering: Clustering | None = None) -> dict:
    return {
        "model_version": model_version, "level": level, "points": points,
        "n_neighbors": used.n_neighbors, "min_dist": used.min_dist,
        "clusters": clustering.k if clustering else None,
        "silhouette": clustering.silhouette if clustering else None,
    }


def update_landscape(
    store: Store,
    models_dir: Path,
    params: UmapParams | None = None,
    refit: bool = False,
    group_params: UmapParams = GROUP_PARAMS,
    cluster_k_range: tuple[int, int] | None = CLUSTER_K_RANGE,
    refit_share: float = REFIT_PLACED_SHARE,
) -> dict:
    """Give every track of the current model version a point in its landscape.

    Fit UMAP on every track, store all points and save the model under
    ``models_dir/<version>/umap.joblib`` (with ``umap.json`` beside it) when
    there is no saved fit for the version, or ``refit``, or ``params`` other
    than the saved fit's, or a saved fit made by the fixed defaults of before
    the scaled n_neighbors, or when placing the tracks without a point would
    make the placed tracks more than ``refit_share`` of the fitted ones
    (REFIT_PLACED_SHARE, 20%). Otherwise place only the tracks without a
    point, each among its nearest fitted tracks (:mod:`.placement`: numpy,
    UMAP is not imported). ``params`` None: the saved fit's, else
    TRACK_PARAMS (n_neighbors scaled). A fit refits the artist and genre
    landscapes; a placement keeps their points and places new artists and
    genres the same way. Counts: landscape_fitted, landscape_placed,
    artist_points, genre_points; nothing when nothing changed.
    """
    model = store.current_model()
    if model is None:
        raise TrackNotFound(f"{store.path}: no current model: run `sonufy build` first")
    version = model.model_version
    path = umap_path(models_dir, version)
    saved: FitInfo | None = None
    if path.exists() and not refit:
        saved = read_fit_info(path, version)
        if params is not None and params != saved.params:
            saved = None  # asked for other settings: refit with them
        elif params is None and saved.rule is None and saved.params == LEGACY_PARAMS:
            saved = None  # the old fixed 500 neighbours: refit once with the scaled ones
    fit_params = params or TRACK_PARAMS
    if saved is not None:
        tally = _query(store, "landscape_counts").row(0, named=True)
        if tally["fitted"] < MIN_POINTS:
            saved = None  # points lost since the fit: fit anew
        elif needs_refit(tally["fitted"], tally["placed"], tally["pending"], refit_share):
            fit_params, saved = saved.params, None  # grown too far from the fit: refit, same settings
        elif not tally["pending"]:
            return update_group_landscapes(store, group_params, cluster_k_range) if _group_landscape_missing(
                store) else {}
    counts: dict = {}
    if saved is None:
        frame = _query(store, "landscape_vectors")
        if frame.height < MIN_POINTS:
            return {"landscape_skipped": frame.height}
        fitted, points = fit_umap(_vectors(frame), fit_params, version)
        group_maps = _fitted_group_maps(frame, version, group_params, cluster_k_range)
        # Points and group maps first (one transaction), then the model: a
        # crash between the two leaves points without a model, and the next
        # run refits.
        _write_points(store, version, frame["track_id"], points, "fit", replace_all=True,
                      fit_row=_fit_row(version, "tracks", frame.height, fitted.used), group_maps=group_maps)
        fitted.save(path)
        counts["landscape_fitted"] = frame.height
        counts.update(_group_counts(group_maps))
        return counts
    frame = _query(store, "landscape_unplaced")
    reference = _query(store, "landscape_fitted_points")
    points = place_by_neighbours(_vectors(reference), reference.select("x", "y").to_numpy(), _vectors(frame))
    group_maps = _placed_group_maps(store, _query(store, "landscape_vectors"), group_params, cluster_k_range)
    _write_points(store, version, frame["track_id"], points, "neighbours", replace_all=False, group_maps=group_maps)
    counts["landscape_placed"] = frame.height
    counts.update(_group_counts(group_maps))
    return counts


def _group_landscape_missing(store: Store) -> bool:
    with store.connect() as con:
        fits = con.execute(sql.statement("landscape_fits", SQL_FILE)).pl()
        emptied = con.execute(sql.statement("group_levels_without_points", SQL_FILE)).fetchall()
    return bool(emptied) or not set(fits["level"].to_list()) & {"artist", "genre"}


def group_means(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Mean vector per artist and per artist genre (an artist's genre: the
    most common genre of its tracks, ties to the first in name order).

    frame: track_id, vector, artist, genre. Returns {"artist": ..., "genre": ...}
    frames of name, artist, genre, tracks, vector (a 2-D numpy array column)."""
    labelled = frame.select("artist", "genre").with_row_index("row")
    artist_genre = (
        labelled.filter(pl.col("genre").is_not_null())
        .group_by("artist", "genre").agg(pl.len().alias("n"))
        .sort(["artist", "n", "genre"], descending=[False, True, False])
        .unique("artist", keep="first")
        .select("artist", pl.col("genre").alias("artist_genre"))
    )
    labelled = labelled.join(artist_genre, on="artist", how="left").sort("row")
    matrix = _vectors(frame)
    out = {}
    for level, key in (("artist", "artist"), ("genre", "artist_genre")):
        keys = labelled[key]
        keep = keys.is_not_null().to_numpy()
        if not keep.any():
            out[level] = pl.DataFrame()
            continue
        names, inverse, sizes = np.unique(keys.filter(keys.is_not_null()).to_numpy().astype(str),
                                          return_inverse=True, return_counts=True)
        # Rows grouped by name (stable: each group's rows in their order), then
        # one sum per group: the same sums as np.add.at's unbuffered scatter,
        # which took 4.4 s for 300,000 x 256 into 30,000 artists, this 2.4 s.
        grouped = matrix[keep][np.argsort(inverse, kind="stable")].astype(np.float64)
        sums = np.add.reduceat(grouped, np.concatenate(([0], np.cumsum(sizes)[:-1])), axis=0)
        means = (sums / sizes[:, None]).astype(np.float32)
        groups = pl.DataFrame({"name": names, "tracks": sizes.astype(np.int32)})
        if level == "artist":
            groups = groups.join(artist_genre.rename({"artist": "name", "artist_genre": "genre"}),
                                 on="name", how="left", maintain_order="left")
            groups = groups.with_columns(pl.col("name").alias("artist"))
        else:
            groups = groups.with_columns(pl.lit(None, pl.String).alias("artist"), pl.col("name").alias("genre"))
        out[level] = groups.select("name", "artist", "genre", "tracks").with_columns(
            pl.Series("vector", means, dtype=pl.Array(pl.Float32, matrix.shape[1]))
        )
    return out


def update_group_landscapes(
    store: Store, params: UmapParams = GROUP_PARAMS, cluster_k_range: tuple[int, int] | None = CLUSTER_K_RANGE
) -> dict:
    """Refit the artist and genre landscapes of the current model version
    (with clusters unless ``cluster_k_range`` is None), both in one
    transaction. Counts of points."""
    frame = _query(store, "landscape_vectors")
    if frame.is_empty():
        return {}
    version = frame["model_version"][0]
    group_maps = _fitted_group_maps(frame, version, params, cluster_k_range)
    _write_group_maps(store, version, group_maps)
    return _group_counts(group_maps)


def place_group_landscapes(
    store: Store, params: UmapParams = GROUP_PARAMS, cluster_k_range: tuple[int, int] | None = CLUSTER_K_RANGE
) -> dict:
    """The artist and genre landscapes after tracks were placed, without
    refitting (see :func:`_placed_group_maps`), both in one transaction.
    Counts of points."""
    frame = _query(store, "landscape_vectors")
    if frame.is_empty():
        return {}
    group_maps = _placed_group_maps(store, frame, params, cluster_k_range)
    _write_group_maps(store, frame["model_version"][0], group_maps)
    return _group_counts(group_maps)


def _group_counts(group_maps: Sequence[_GroupMap]) -> dict:
    return {f"{group_map.level}_points": group_map.points for group_map in group_maps}


def _fitted_group_maps(frame: pl.DataFrame, version: str, params: UmapParams,
                       cluster_k_range: tuple[int, int] | None) -> list[_GroupMap]:
    """Each level's map refitted from ``frame`` (landscape_vectors); written by the caller."""
    if frame.is_empty():
        return []
    return [_fit_group_level(version, level, groups, params, cluster_k_range)
            for level, groups in group_means(frame).items()]


def _placed_group_maps(store: Store, frame: pl.DataFrame, params: UmapParams,
                       cluster_k_range: tuple[int, int] | None) -> list[_GroupMap]:
    """Each level's map after tracks were placed, without refitting: each
    group already on a level's map keeps its point and cluster (its mean
    moved by a few tracks at most: the track landscape's refit rule refits
    the groups with it), a new artist or genre is placed among the groups
    nearest its mean vector like a new track
    (:func:`.placement.place_by_neighbours`) and takes the cluster of the
    nearest. A level with too few points to place among is fitted (UMAP).
    Written by the caller."""
    if frame.is_empty():
        return []
    version = frame["model_version"][0]
    group_maps = []
    for level, groups in group_means(frame).items():
        known = _query(store, "group_level_points", {"model_version": version, "level": level})
        if groups.height < MIN_POINTS or known.height < MIN_POINTS:
            group_maps.append(_fit_group_level(version, level, groups, params, cluster_k_range))
            continue
        batch = groups.drop("vector").join(known, on="name", how="left", maintain_order="left")
        old = batch["x"].is_not_null().to_numpy()
        if not old.all():
            vectors = _vectors(groups)
            new = ~old
            xy = batch.select("x", "y").to_numpy()
            xy[new] = place_by_neighbours(vectors[old], xy[old], vectors[new])
            clusters = batch["cluster"].to_list()
            known_clusters = [clusters[i] for i in np.flatnonzero(old)]
            nearest, _ = nearest_fitted(vectors[old], vectors[new], k=1)
            for row, index in zip(np.flatnonzero(new), nearest[:, 0]):
                clusters[row] = known_clusters[index]
            batch = batch.with_columns(pl.Series("x", xy[:, 0], dtype=pl.Float32),
                                       pl.Series("y", xy[:, 1], dtype=pl.Float32),
                                       pl.Series("cluster", clusters, dtype=pl.Int32))
        group_maps.append(_GroupMap(level, batch))
    return group_maps


def _write_group_maps(store: Store, version: str, group_maps: Sequence[_GroupMap]) -> None:
    # Every level's map in one transaction (its fit row with it when
    # refitted): a crash at any point leaves the previous maps whole.
    with store.transaction() as con:
        for group_map in group_maps:
            _replace_group_map(con, version, group_map)


def _replace_group_map(con: duckdb.DuckDBPyConnection, version: str, group_map: _GroupMap) -> None:
    """Inside the caller's transaction: one level's map replaced, or removed with its fit row."""
    where = {"model_version": version, "level": group_map.level}
    con.execute(sql.statement("delete_group_landscape", SQL_FILE), where)
    if group_map.batch is None:
        con.execute(sql.statement("delete_landscape_fit", SQL_FILE), where)
        return
    con.register("group_batch", group_map.batch.to_arrow())
    try:
        con.execute(sql.statement("insert_group_landscape", SQL_FILE), where)
    finally:
        con.unregister("group_batch")
    if group_map.fit_row is not None:
        con.execute(sql.statement("upsert_landscape_fit", SQL_FILE), group_map.fit_row)


def _fit_group_level(version: str, level: str, groups: pl.DataFrame, params: UmapParams,
                     cluster_k_range: tuple[int, int] | None) -> _GroupMap:
    """One level's map refitted (none below MIN_POINTS groups), not yet written."""
    if groups.height < MIN_POINTS:
        return _GroupMap(level, None)
    vectors = _vectors(groups)
    fitted, points = fit_umap(vectors, params, version)
    clustering = choose_clusters(vectors, cluster_k_range) if cluster_k_range else None
    batch = groups.drop("vector").with_columns(
        pl.Series("x", points[:, 0]), pl.Series("y", points[:, 1]),
        pl.Series("cluster", clustering.labels if clustering else [None] * groups.height, dtype=pl.Int32),
    )
    return _GroupMap(level, batch, _fit_row(version, level, groups.height, fitted.used, clustering))


def landscape_points(store: Store) -> pl.DataFrame:
    """The current landscape: track_id, x, y, the labels, audio (a URL to
    play, or null) and vector."""
    if not store.path.exists():
        raise FileNotFoundError(f"{store.path}: no such DuckDB file; run `sonufy build` first")
    frame = _query(store, "landscape_points")
    paths = [store.absolute_path(path) for path in frame["preview_path"].to_list()]
    file_uri = _FileUris()
    audio = [url if url else file_uri(path) for url, path in zip(frame["preview_url"].to_list(), paths)]
    return frame.with_columns(pl.Series("audio", audio, dtype=pl.String)).drop("preview_url", "preview_path")


class _FileUris:
    """``file://`` URIs of existing files, as ``Path.resolve().as_uri()`` gives
    them, resolving each folder once: previews share a few folders, and
    resolving every path's components was 13 s of a 300,000-track redraw."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: str | None) -> str | None:
        if not path or not os.path.isfile(path):
            return None
        folder, name = os.path.split(path)
        prefix = self._folders.get(folder)
        if prefix is None:
            uri = Path(folder).resolve().as_uri()
            prefix = self._folders[folder] = uri if uri.endswith("/") else uri + "/"
        return prefix + quote(os.fsencode(name))


def landscape_fits(store: Store) -> pl.DataFrame:
    return _query(store, "landscape_fits")


def group_landscape_points(store: Store) -> pl.DataFrame:
    return _query(store, "group_landscape_points")

