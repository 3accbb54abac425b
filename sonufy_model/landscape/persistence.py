"""The landscape in DuckDB: fit or place the tracks of the current model
version, refit the artist and genre landscapes, and read the points back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

import sql
from sonufy_model.landscape.clusters import CLUSTER_K_RANGE, Clustering, choose_clusters
from sonufy_model.landscape.layout import (
    GROUP_PARAMS,
    LEGACY_PARAMS,
    MIN_POINTS,
    TRACK_PARAMS,
    FittedUmap,
    UmapParams,
    fit_umap,
    umap_path,
)
from sonufy_model.store import Store, TrackNotFound

SQL_FILE = "landscape_queries.sql"


def _query(store: Store, name: str, params: dict | None = None) -> pl.DataFrame:
    with store.connect() as con:
        return con.execute(sql.statement(name, SQL_FILE), params or {}).pl()


def _vectors(frame: pl.DataFrame) -> np.ndarray:
    return frame["vector"].to_numpy().astype(np.float32, copy=False).reshape(frame.height, -1)


def _write_points(store: Store, model_version: str, track_ids: pl.Series, points: np.ndarray,
                  placed_by: str, replace_all: bool, fit_row: dict | None = None) -> None:
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
) -> dict:
    """Give every track of the current model version a point in its landscape.

    With no fitted UMAP for the version (or ``refit``, or ``params`` other than
    the saved fit's, or a saved fit made by the fixed defaults of before the
    scaled n_neighbors), fit one on every track, store all points and save the
    model under ``models_dir/<version>/umap.joblib``; otherwise place only the
    tracks without a point, by the saved model's transform. ``params`` None:
    the saved fit's, else TRACK_PARAMS (n_neighbors scaled). When anything
    changed, the artist and genre landscapes are refitted. Counts:
    landscape_fitted, landscape_placed, artist_points, genre_points.
    """
    model = store.current_model()
    if model is None:
        raise TrackNotFound(f"{store.path}: no current model: run `sonufy build` first")
    version = model.model_version
    path = umap_path(models_dir, version)
    fitted = None
    if path.exists() and not refit:
        fitted = FittedUmap.load(path, version)
        if params is not None and params != fitted.params:
            fitted = None  # asked for other settings: refit with them
        elif params is None and fitted.rule is None and fitted.params == LEGACY_PARAMS:
            fitted = None  # the old fixed 500 neighbours: refit once with the scaled ones
    counts: dict = {}
    if fitted is None:
        frame = _query(store, "landscape_vectors")
        if frame.height < MIN_POINTS:
            return {"landscape_skipped": frame.height}
        fitted, points = fit_umap(_vectors(frame), params or TRACK_PARAMS, version)
        # Points first, then the model: a crash between the two leaves points
        # without a model, and the next run refits.
        _write_points(store, version, frame["track_id"], points, "fit", replace_all=True,
                      fit_row=_fit_row(version, "tracks", frame.height, fitted.used))
        fitted.save(path)
        counts["landscape_fitted"] = frame.height
    else:
        frame = _query(store, "landscape_unplaced")
        if frame.height:
            points = fitted.transform(_vectors(frame))
            _write_points(store, version, frame["track_id"], points, "transform", replace_all=False)
            counts["landscape_placed"] = frame.height
    if counts or _group_landscape_missing(store):
        counts.update(update_group_landscapes(store, group_params, cluster_k_range))
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
        sums = np.zeros((len(names), matrix.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, matrix[keep])
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
    (with clusters unless ``cluster_k_range`` is None). Counts of points."""
    frame = _query(store, "landscape_vectors")
    if frame.is_empty():
        return {}
    version = frame["model_version"][0]
    counts = {}
    for level, groups in group_means(frame).items():
        # Each level's map is replaced in one transaction, its fit row with
        # it: a crash at any point leaves the previous map whole.
        where = {"model_version": version, "level": level}
        if groups.height < MIN_POINTS:
            with store.transaction() as con:
                con.execute(sql.statement("delete_group_landscape", SQL_FILE), where)
                con.execute(sql.statement("delete_landscape_fit", SQL_FILE), where)
            counts[f"{level}_points"] = 0
            continue
        vectors = _vectors(groups)
        fitted, points = fit_umap(vectors, params, version)
        clustering = choose_clusters(vectors, cluster_k_range) if cluster_k_range else None
        batch = groups.drop("vector").with_columns(
            pl.Series("x", points[:, 0]), pl.Series("y", points[:, 1]),
            pl.Series("cluster", clustering.labels if clustering else [None] * groups.height, dtype=pl.Int32),
        )
        with store.transaction() as con:
            con.execute(sql.statement("delete_group_landscape", SQL_FILE), where)
            con.register("group_batch", batch.to_arrow())
            try:
                con.execute(sql.statement("insert_group_landscape", SQL_FILE), where)
            finally:
                con.unregister("group_batch")
            con.execute(sql.statement("upsert_landscape_fit", SQL_FILE),
                        _fit_row(version, level, groups.height, fitted.used, clustering))
        counts[f"{level}_points"] = groups.height
    return counts


def landscape_points(store: Store) -> pl.DataFrame:
    """The current landscape: track_id, x, y, the labels, audio (a URL to
    play, or null) and vector."""
    if not store.path.exists():
        raise FileNotFoundError(f"{store.path}: no such DuckDB file; run `sonufy build` first")
    frame = _query(store, "landscape_points")
    paths = [store.absolute_path(path) for path in frame["preview_path"].to_list()]
    audio = [
        url if url else (Path(path).resolve().as_uri() if path and Path(path).is_file() else None)
        for url, path in zip(frame["preview_url"].to_list(), paths)
    ]
    return frame.with_columns(pl.Series("audio", audio, dtype=pl.String)).drop("preview_url", "preview_path")


def landscape_fits(store: Store) -> pl.DataFrame:
    return _query(store, "landscape_fits")


def group_landscape_points(store: Store) -> pl.DataFrame:
    return _query(store, "group_landscape_points")

