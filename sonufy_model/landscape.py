"""The sonic landscape: the latent space in two dimensions, and its pictures.

A UMAP projection of every track of a model version is fitted once, saved
next to the model version (``<models>/<version>/umap.joblib``) and stored in
DuckDB (table ``landscape``). Tracks that arrive later are placed by the
fitted model's transform, without refitting; a refit happens with a new model
version, or when asked for. n_neighbors scales with the library (about
sqrt(N), in [10, 500]: see :func:`scaled_neighbours`), min_dist is 0.1.

Artist and genre landscapes are UMAP projections of the mean latent vector
per artist and per artist genre (n_neighbors by the same rule, min_dist 0.1),
refitted whenever the track landscape changes, with an optional k-means
clustering whose k is the one with the highest silhouette (cosine geometry)
over a range of k.

Colours: genre, folder (the file's parent folder), album, artist, year and
source; ``auto`` (the default) picks the most informative one present (see
:func:`choose_color_by`).

Pictures: a PNG shaded by density with datashader (readable at hundreds of
thousands of points) and a self-contained interactive HTML page (no network:
its script is inline).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import sql
from sonufy_model.store import Store, TrackNotFound

SQL_FILE = "landscape_queries.sql"
UMAP_FILENAME = "umap.joblib"
PNG_NAME = "landscape.png"
HTML_NAME = "landscape.html"
#: UMAP's spectral initialisation needs more points than this.
MIN_POINTS = 4
#: Labels a track landscape can be coloured by, in the order that breaks
#: ties of :func:`choose_color_by`. folder: the file's parent folder (an album
#: or a soundtrack in a folder library; unknown for streamed tracks).
COLOR_LABELS = ("genre", "folder", "album", "artist", "year", "source")
#: Colour by the most informative label present (:func:`choose_color_by`).
AUTO = "auto"
#: A label the default colour may be: at most this many distinct values ...
AUTO_MAX_VALUES = 40
#: ... and a known value for at least this share of the tracks.
AUTO_MIN_COVERAGE = 0.5
#: Categories that get a colour of their own; the rest share OTHER_COLOR.
MAX_COLORS = 20
OTHER_COLOR = "#5b6170"
UNKNOWN = "(unknown)"
NEIGHBOURS = 10
#: Up to this many points, neighbours are exact (cosine by a matrix product);
#: above it, approximate (pynndescent).
EXACT_NEIGHBOURS_LIMIT = 20_000
_FORMAT = 1


#: The bounds of the scaled n_neighbors.
MIN_NEIGHBOURS, MAX_NEIGHBOURS = 10, 500
#: min_dist of every landscape.
MIN_DIST = 0.1


def scaled_neighbours(n: int) -> int:
    """UMAP n_neighbors for ``n`` points: round(sqrt(n)), clamped to [10, 500].

    n_neighbors is the size of the neighbourhood UMAP keeps: a fixed 500
    (the seed's, for 278,000 tracks) makes every point's neighbourhood the
    whole of a library of a few hundred tracks, and the map one disc. With
    sqrt(n) a neighbourhood is a vanishing share of a growing library
    (1/sqrt(n): 22 of 475 tracks, 15 of 240), about the size of an album or
    soundtrack in a small one, and the seed's own setting at the seed's size
    (sqrt(278,000) = 527, clamped to 500: the cost of the fit grows with it).
    Below 10 (libraries under 100 tracks) the neighbour graph falls apart into
    islands of a few points; UMAP's own default is 15.
    """
    return int(min(MAX_NEIGHBOURS, max(MIN_NEIGHBOURS, round(math.sqrt(max(n, 0))))))


@dataclass(frozen=True)
class UmapParams:
    """UMAP settings of one landscape. ``n_neighbors`` None: scaled to the
    number of points (:func:`scaled_neighbours`); either way it is clipped
    below the number of points when fitting (see :meth:`for_points`).

    min_dist 0.1 (UMAP's default) lets the points of one neighbourhood pack
    together, so that groups read as groups; the seed's 0.5 spread every point
    evenly, which at a few hundred tracks makes a uniform disc."""

    n_neighbors: int | None = None
    min_dist: float = MIN_DIST
    metric: str = "cosine"
    random_state: int | None = 42

    def __post_init__(self) -> None:
        if self.n_neighbors is not None and (
            isinstance(self.n_neighbors, bool) or not isinstance(self.n_neighbors, int) or self.n_neighbors < 2
        ):
            raise ValueError(f"n_neighbors must be a whole number of at least 2, got {self.n_neighbors!r}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise ValueError(f"min_dist must lie in [0, 1] (UMAP's spread is 1), got {self.min_dist!r}")

    def for_points(self, n: int) -> "UmapParams":
        """These settings for ``n`` points: n_neighbors scaled (when None) and
        at most n - 1."""
        wanted = scaled_neighbours(n) if self.n_neighbors is None else self.n_neighbors
        return UmapParams(max(2, min(wanted, n - 1)), self.min_dist, self.metric, self.random_state)


TRACK_PARAMS = UmapParams(n_neighbors=None, min_dist=MIN_DIST)
GROUP_PARAMS = UmapParams(n_neighbors=None, min_dist=MIN_DIST)
#: What every landscape was fitted with before n_neighbors scaled: a saved
#: fit made with these by default (no "rule" in the file) is refitted.
LEGACY_PARAMS = UmapParams(n_neighbors=500, min_dist=0.5)
#: Written into each saved fit: the rule its default parameters came from.
PARAMS_RULE = "sqrt-neighbours-v1"
CLUSTER_K_RANGE = (2, 12)


# -- UMAP ----------------------------------------------------------------------


def _matrix(vectors: Any, what: str) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array of vectors, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what}: {int((~np.isfinite(matrix)).any(axis=1).sum())} vectors are not finite")
    return matrix


@dataclass
class FittedUmap:
    """A UMAP model fitted on one model version's tracks."""

    reducer: Any
    params: UmapParams  # as asked, before clipping
    used: UmapParams  # as fitted
    n_fitted: int
    model_version: str = ""
    #: The rule of the default parameters when it was saved; None in a file
    #: saved before the rule (its defaults were LEGACY_PARAMS).
    rule: str | None = PARAMS_RULE

    def transform(self, vectors: Any) -> np.ndarray:
        """Points for new vectors, by the fitted model (no refit)."""
        matrix = _matrix(vectors, "vectors to place")
        if matrix.shape[1] != self.reducer._raw_data.shape[1]:
            raise ValueError(
                f"vectors to place have {matrix.shape[1]} dimensions; the landscape of "
                f"{self.model_version!r} was fitted on {self.reducer._raw_data.shape[1]}"
            )
        return np.asarray(self.reducer.transform(matrix), dtype=np.float32)

    def save(self, path: Path) -> Path:
        """Write the model (without what only refitting needs) to ``path``."""
        import copy

        import joblib

        slim = copy.copy(self.reducer)
        # Kept: the data, the embedding and the neighbour index transform
        # uses. Dropped: the fuzzy graph and the fit's k-NN arrays (hundreds of
        # MB at 50,000 tracks with 500 neighbours); transform does not read them.
        slim.graph_ = None
        for name in ("_knn_indices", "_knn_dists", "graph_dists_"):
            if hasattr(slim, name):
                setattr(slim, name, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        joblib.dump(
            {"format": _FORMAT, "model_version": self.model_version, "params": asdict(self.params),
             "used": asdict(self.used), "n_fitted": self.n_fitted, "rule": self.rule, "reducer": slim},
            partial,
        )
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: Path, model_version: str | None = None) -> "FittedUmap":
        import joblib

        try:
            saved = joblib.load(path)
        except FileNotFoundError:
            raise
        except Exception as error:  # a truncated or foreign file
            raise ValueError(f"{path}: not a saved Sonufy landscape ({error}); rerun with --refit") from None
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a saved Sonufy landscape (format {_FORMAT}); rerun with --refit")
        if model_version is not None and saved["model_version"] != model_version:
            raise ValueError(
                f"{path}: fitted for model version {saved['model_version']!r}, not {model_version!r}"
            )
        return cls(
            reducer=saved["reducer"], params=UmapParams(**saved["params"]), used=UmapParams(**saved["used"]),
            n_fitted=saved["n_fitted"], model_version=saved["model_version"], rule=saved.get("rule"),
        )


def fit_umap(vectors: Any, params: UmapParams = TRACK_PARAMS, model_version: str = "") -> tuple[FittedUmap, np.ndarray]:
    """Fit UMAP on ``vectors``; the fitted model and the 2-D points."""
    import warnings

    import umap

    matrix = _matrix(vectors, "vectors to fit")
    if matrix.shape[0] < MIN_POINTS:
        raise ValueError(f"a landscape needs at least {MIN_POINTS} points, got {matrix.shape[0]}")
    used = params.for_points(matrix.shape[0])
    reducer = umap.UMAP(
        n_neighbors=used.n_neighbors, min_dist=used.min_dist, metric=used.metric,
        random_state=used.random_state, n_components=2,
    )
    with warnings.catch_warnings():
        # "n_jobs overridden to 1 by setting random_state": reproducibility is the point.
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        points = reducer.fit_transform(matrix)
    return FittedUmap(reducer, params, used, matrix.shape[0], model_version), np.asarray(points, np.float32)


def umap_path(models_dir: Path, model_version: str) -> Path:
    """Where a model version's fitted UMAP lies: next to its checkpoints."""
    return Path(models_dir) / model_version / UMAP_FILENAME


# -- clusters and neighbours -----------------------------------------------------


@dataclass(frozen=True)
class Clustering:
    """k-means labels with the k of the highest silhouette over a range."""

    k: int
    labels: np.ndarray
    silhouette: float
    scores: dict[int, float] = field(default_factory=dict)

    criterion = "k-means on unit-length vectors; k with the highest silhouette (cosine) over the range"


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def choose_clusters(
    vectors: Any, k_range: tuple[int, int] = CLUSTER_K_RANGE, random_state: int = 0
) -> Clustering | None:
    """k-means on the vectors (unit length: cosine geometry) for each k in
    ``k_range`` (inclusive, at most n - 1); the k whose labels have the
    highest mean silhouette wins. None when there are fewer than 3 points."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    matrix = _unit(_matrix(vectors, "vectors to cluster").astype(np.float64))
    low, high = k_range
    if low < 2 or high < low:
        raise ValueError(f"cluster k range must be 2 <= low <= high, got {k_range}")
    high = min(high, matrix.shape[0] - 1)
    if high < low:
        return None
    sample = min(matrix.shape[0], 5000)
    best: Clustering | None = None
    scores: dict[int, float] = {}
    for k in range(low, high + 1):
        labels = KMeans(n_clusters=k, n_init=2, random_state=random_state).fit_predict(matrix)
        if len(set(labels.tolist())) < 2:
            continue
        score = float(silhouette_score(matrix, labels, sample_size=sample, random_state=random_state))
        scores[k] = score
        if best is None or score > best.silhouette:
            best = Clustering(k, labels.astype(np.int32), score)
    return None if best is None else Clustering(best.k, best.labels, best.silhouette, scores)


def nearest_neighbours(vectors: Any, k: int = NEIGHBOURS, random_state: int = 42) -> np.ndarray:
    """Indices of each vector's k nearest others by cosine, nearest first.

    Exact up to EXACT_NEIGHBOURS_LIMIT vectors (the same order as the
    ``similar_to`` macro, ties aside), approximate above (pynndescent)."""
    matrix = _unit(_matrix(vectors, "vectors").astype(np.float64))
    n = matrix.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), dtype=np.int32)
    if n > EXACT_NEIGHBOURS_LIMIT:
        from pynndescent import NNDescent

        index = NNDescent(matrix.astype(np.float32), metric="cosine", n_neighbors=k + 1, random_state=random_state)
        found, _ = index.neighbor_graph
        out = np.empty((n, k), dtype=np.int32)
        for i, row in enumerate(found):
            others = row[(row != i) & (row >= 0)]
            out[i] = others[:k] if len(others) >= k else np.resize(others, k)
        return out
    out = np.empty((n, k), dtype=np.int32)
    for start in range(0, n, 2048):
        sims = matrix[start:start + 2048] @ matrix.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[start:start + sims.shape[0]] = np.take_along_axis(top, order, axis=1)
    return out


# -- the store -------------------------------------------------------------------


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
    return not set(fits["level"].to_list()) & {"artist", "genre"}


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
        with store.transaction() as con:
            con.execute(sql.statement("delete_group_landscape", SQL_FILE), {"model_version": version, "level": level})
        if groups.height < MIN_POINTS:
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
            con.register("group_batch", batch.to_arrow())
            try:
                con.execute(sql.statement("insert_group_landscape", SQL_FILE),
                            {"model_version": version, "level": level})
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
    audio = [
        url if url else (Path(path).resolve().as_uri() if path and Path(path).is_file() else None)
        for url, path in zip(frame["preview_url"].to_list(), frame["preview_path"].to_list())
    ]
    return frame.with_columns(pl.Series("audio", audio, dtype=pl.String)).drop("preview_url", "preview_path")


def landscape_fits(store: Store) -> pl.DataFrame:
    return _query(store, "landscape_fits")


def group_landscape_points(store: Store) -> pl.DataFrame:
    return _query(store, "group_landscape_points")


# -- colours -----------------------------------------------------------------------


@dataclass(frozen=True)
class Coloring:
    """Per-point category codes for one label, categories by count, and a colour each."""

    label: str
    values: list[str]
    codes: np.ndarray
    counts: list[int]
    colors: list[str]


def coloring(label: str, values: Sequence[str | None]) -> Coloring:
    """Colours for a label's values: the MAX_COLORS most common categories get
    distinct colours (years: a sequential scale over every year), the rest grey."""
    import colorcet

    series = pl.Series("v", [UNKNOWN if v is None or v == "" else str(v) for v in values], dtype=pl.String)
    tally = series.value_counts(name="n")
    # most common first, ties by name: the same colours on every run and layer
    tally = tally.sort("v") if label == "year" else tally.sort(["n", "v"], descending=[True, False])
    names = tally["v"].to_list()
    counts = tally["n"].to_list()
    index = {name: i for i, name in enumerate(names)}
    codes = np.array([index[v] for v in series.to_list()], dtype=np.int32)
    if label == "year":
        known = [n for n in names if n != UNKNOWN]
        scale = colorcet.CET_L8[64:]  # purple to yellow, bright enough on the dark ground
        step = {n: i / max(1, len(known) - 1) for i, n in enumerate(known)}
        colors = [OTHER_COLOR if n == UNKNOWN else scale[round(step[n] * (len(scale) - 1))] for n in names]
    else:
        palette = colorcet.glasbey_light
        colors = [OTHER_COLOR if (i >= MAX_COLORS or n == UNKNOWN) else palette[i] for i, n in enumerate(names)]
    return Coloring(label, names, codes, counts, colors)


def _check_color_by(color_by: str, allowed: Sequence[str] = (AUTO, *COLOR_LABELS)) -> None:
    if color_by not in allowed:
        raise ValueError(f"colour by {color_by!r}: expected one of {', '.join(allowed)}")


def _known(values: Sequence[Any]) -> list[str]:
    return [str(v) for v in values if v is not None and str(v) != ""]


def color_score(values: Sequence[Any]) -> dict:
    """How well a label's values split the tracks into groups to colour.

    values: distinct known values; labelled: tracks with a known value;
    coverage: share of the tracks with a known value; evenness: the
    normalised entropy of the known values (H / ln values: 1 when every value
    has as many tracks, 0 with one value); coloured: share of the labelled
    tracks whose value gets a colour of its own (the MAX_COLORS most common;
    the rest are grey); score: evenness x coverage x coloured, to 2 decimals:
    how much of the map the label paints in distinct, evenly used colours.
    eligible: 2 to AUTO_MAX_VALUES values, coverage at least
    AUTO_MIN_COVERAGE and at least two tracks per value on average (not one
    value per track)."""
    n = len(values)
    known = _known(values)
    counts = np.sort(np.array(pl.Series(known, dtype=pl.String).value_counts()["count"].to_list()
                              if known else [], float))[::-1]
    k = len(counts)
    coverage = len(known) / n if n else 0.0
    coloured = float(counts[:MAX_COLORS].sum() / counts.sum()) if k else 0.0
    if k >= 2:
        share = counts / counts.sum()
        evenness = float(-(share * np.log(share)).sum() / math.log(k))
    else:
        evenness = 0.0
    eligible = 2 <= k <= AUTO_MAX_VALUES and coverage >= AUTO_MIN_COVERAGE and 2 * k <= len(known)
    return {"values": k, "labelled": len(known), "coverage": round(coverage, 3), "evenness": round(evenness, 3),
            "coloured": round(coloured, 3), "score": round(evenness * coverage * coloured, 2),
            "eligible": eligible}


def choose_color_by(points: pl.DataFrame, labels: Sequence[str] = COLOR_LABELS) -> tuple[str, dict[str, dict]]:
    """The default colour of a landscape: the most informative label present.

    Among the eligible labels (see :func:`color_score`: 2..40 values, most
    tracks labelled, not one value per track) the one with the highest score
    (normalised entropy x coverage x share of tracks in the 20 colours): the
    label that paints most of the map in distinct, evenly used colours. Ties
    go to the earlier label of ``labels`` (genre,
    folder, album, artist, year, source). With none eligible, the best score
    among labels with at least two values and two tracks per value (however
    many values, however few tracks labelled), else the last label (source).
    Returns the label and every label's figures."""
    scores = {name: color_score(points[name].cast(pl.String).to_list()) for name in labels if name in points.columns}
    grouped = [n for n, f in scores.items() if f["values"] >= 2 and 2 * f["values"] <= f["labelled"]]
    for pool in ([n for n, f in scores.items() if f["eligible"]], grouped):
        if pool:
            return max(pool, key=lambda name: (scores[name]["score"], -labels.index(name))), scores
    return labels[-1], scores


def present_labels(points: pl.DataFrame, labels: Sequence[str] = COLOR_LABELS, keep: str | None = None) -> list[str]:
    """The labels with a known value for at least one track (and ``keep``):
    a folder library has no genre or year to colour by."""
    return [name for name in labels
            if name in points.columns and (name == keep or points[name].cast(pl.String).fill_null("").ne("").any())]


# -- the PNG -------------------------------------------------------------------------


def _ranges(x: np.ndarray, y: np.ndarray, width: int, height: int, pad: float = 0.04) -> tuple:
    """x and y ranges around the points with the canvas's aspect ratio (no distortion)."""
    x0, x1, y0, y1 = float(x.min()), float(x.max()), float(y.min()), float(y.max())
    dx, dy = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    dx, dy = dx * (1 + 2 * pad), dy * (1 + 2 * pad)
    if dx / dy > width / height:
        dy = dx * height / width
    else:
        dx = dy * width / height
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - dx / 2, cx + dx / 2), (cy - dy / 2, cy + dy / 2)


# (fewer points than, spread in pixels, least alpha) for the PNG's dots.
_SPREAD = ((2_000, 3, 230), (20_000, 2, 180), (100_000, 1, 140), (math.inf, 0, 140))


def render_png(
    x: Any, y: Any, labels: Coloring, path: Path, title: str = "Sonufy: the sonic landscape",
    width: int = 1600, height: int = 1200,
) -> Path:
    """A density-shaded map of the points (datashader: per-pixel counts of
    each category, histogram-equalised, so that 300,000 points read as
    density rather than a blot), with a title and a legend."""
    import datashader as ds
    import datashader.transfer_functions as tf
    import pandas as pd
    from PIL import Image, ImageDraw, ImageFont

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"render_png: x and y must be equal non-empty 1-D arrays, got {x.shape} and {y.shape}")
    x_range, y_range = _ranges(x, y, width, height)
    n_cats = len(labels.values)
    frame = pd.DataFrame({
        "x": x, "y": y,
        "label": pd.Categorical.from_codes(labels.codes, categories=[str(i) for i in range(n_cats)]),
    })
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
    aggregate = canvas.points(frame, "x", "y", agg=ds.count_cat("label"))
    key = {str(i): color for i, color in enumerate(labels.colors)}
    # Sparse maps get bigger, opaque dots; dense ones one pixel per point, with
    # alpha from the histogram-equalised count, so that density shows.
    spread, min_alpha = next((px, alpha) for most, px, alpha in _SPREAD if len(x) < most)
    image = tf.shade(aggregate, color_key=key, how="eq_hist", min_alpha=min_alpha)
    image = tf.spread(image, px=spread, shape="circle") if spread else image
    image = tf.set_background(image, "#0b0d12")
    plot = image.to_pil().convert("RGB")

    legend_width, header = 320, 56
    picture = Image.new("RGB", (width + legend_width, height + header), "#0b0d12")
    picture.paste(plot, (0, header))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=22)
    small = ImageFont.load_default(size=16)
    draw.text((18, 14), title, fill="#f0f0f0", font=font)
    lx, ly = width + 16, header + 8
    draw.text((lx, ly), f"colour: {labels.label}", fill="#f0f0f0", font=small)
    ly += 30
    shown = _legend_entries(labels, 24)
    for name, count, color in shown:
        draw.rectangle((lx, ly + 3, lx + 14, ly + 17), fill=color)
        draw.text((lx + 22, ly), f"{_clip_text(name, 26)}  {count:,}", fill="#d8d8d8", font=small)
        ly += 22
    rest = len(labels.values) - len(shown)
    if rest > 0:
        more = "in between" if labels.label == "year" else "(grey)"
        draw.text((lx, ly + 4), f"... and {rest:,} more {more}", fill="#9a9a9a", font=small)
    draw.text((lx, height + header - 26), f"{len(x):,} points", fill="#9a9a9a", font=small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def _legend_entries(labels: Coloring, most: int) -> list[tuple[str, int, str]]:
    entries = list(zip(labels.values, labels.counts, labels.colors))
    if labels.label != "year":
        coloured = [e for e in entries if e[2] != OTHER_COLOR]
        entries = coloured + [e for e in entries if e[2] == OTHER_COLOR and e[0] == UNKNOWN]
    if len(entries) > most and labels.label == "year":
        step = math.ceil(len(entries) / most)
        entries = entries[::step]
    return entries[:most]


def _clip_text(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


# -- the HTML page ----------------------------------------------------------------


def _layer(frame: pl.DataFrame, line1: list[str], line2: list[str], label_names: Sequence[str],
           color_by: str, unit: str, audio: list[str | None] | None = None) -> dict:
    neighbours = nearest_neighbours(_vectors(frame)) if frame.height > 1 else np.zeros((frame.height, 0))
    labels = {}
    for name in label_names:
        c = coloring(name, frame[name].cast(pl.String).to_list())
        labels[name] = {"values": c.values, "counts": c.counts, "colors": c.colors, "codes": c.codes.tolist()}
    layer = {
        "unit": unit,
        "x": [round(float(v), 4) for v in frame["x"].to_list()],
        "y": [round(float(v), 4) for v in frame["y"].to_list()],
        "line1": line1,
        "line2": line2,
        "neighbours": neighbours.astype(int).tolist(),
        "labels": labels,
        "colorBy": color_by if color_by in labels else label_names[0],
    }
    if audio is not None:
        layer["audio"] = audio
    return layer


def render_html(
    points: pl.DataFrame, path: Path, color_by: str = AUTO, groups: pl.DataFrame | None = None,
    group_vectors: dict[str, np.ndarray] | None = None, title: str = "Sonufy: the sonic landscape",
    max_points: int = 50_000, total: int | None = None, seed: int = 0,
) -> dict:
    """The interactive page: one file, its data and script inline (works
    offline, from file://). Hover names a point, a click plays the preview
    (when there is one), the search box highlights a track and its 10
    nearest neighbours (cosine in the latent space), colour by any label
    with a known value (``auto``: :func:`choose_color_by`, over every track).

    points: track_id, x, y, artist, title, the COLOR_LABELS, audio, vector.
    groups: level, name, artist, genre, tracks, x, y, cluster (optional),
    with group_vectors[level] the mean vectors in the same order.
    Above ``max_points`` tracks a seeded random sample of that size is shown.
    Returns the numbers shown."""
    _check_color_by(color_by)
    if color_by == AUTO:
        color_by, _ = choose_color_by(points)
    total = points.height if total is None else total
    label_names = present_labels(points, keep=color_by)
    if points.height > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(points.height, max_points, replace=False))
        points = points[keep]
    layers = {
        "tracks": _layer(
            points, points["artist"].to_list(), points["title"].to_list(), label_names, color_by, "tracks",
            audio=points["audio"].to_list(),
        )
    }
    for level, unit in (("artist", "artists"), ("genre", "genres")):
        if groups is None or group_vectors is None or level not in group_vectors:
            continue
        part = groups.filter(pl.col("level") == level).with_columns(
            pl.Series("vector", group_vectors[level], dtype=pl.Array(pl.Float32, group_vectors[level].shape[1])),
            pl.col("cluster").cast(pl.String).fill_null(UNKNOWN),
        )
        if part.is_empty():
            continue
        detail = [
            f"{n:,} track{'s' if n != 1 else ''}" + (f" · {g}" if g and level == "artist" else "")
            for n, g in zip(part["tracks"].to_list(), part["genre"].to_list())
        ]
        names = ["cluster", "genre"] if level == "artist" else ["cluster"]
        layers[unit] = _layer(part, part["name"].to_list(), detail, names, "cluster", unit)
    data = {
        "title": title,
        "modelVersion": str(points["model_version"][0]) if "model_version" in points.columns and points.height else "",
        "total": total,
        "shown": points.height,
        "layers": layers,
    }
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return {"html_points": points.height, "html_bytes": path.stat().st_size}


def render(
    store: Store, out_dir: Path, color_by: str = AUTO, max_html_points: int = 50_000,
    png_size: tuple[int, int] = (1600, 1200),
) -> dict:
    """Write ``landscape.png`` and ``landscape.html`` of the current landscape
    into ``out_dir``, coloured by ``color_by`` (``auto``: the most informative
    label present, :func:`choose_color_by`). Returns their paths and what
    they show."""
    _check_color_by(color_by)
    points = landscape_points(store)
    if points.is_empty():
        raise TrackNotFound(f"{store.path}: the landscape is empty: run `sonufy landscape` or `sonufy build` first")
    chosen, color_scores = choose_color_by(points)
    auto = color_by == AUTO
    color_by = chosen if auto else color_by
    version = points["model_version"][0]
    out_dir = Path(out_dir).resolve()
    title = f"Sonufy: the sonic landscape · model {version} · {points.height:,} tracks"
    labels = coloring(color_by, points[color_by].to_list())
    png = render_png(points["x"].to_numpy(), points["y"].to_numpy(), labels, out_dir / PNG_NAME, title,
                     width=png_size[0], height=png_size[1])
    groups = group_landscape_points(store)
    group_vectors = None
    if not groups.is_empty():
        means = group_means(_query(store, "landscape_vectors"))
        group_vectors = {}
        for level, frame in means.items():
            if frame.is_empty():
                continue
            stored = groups.filter(pl.col("level") == level).select("name")
            aligned = stored.join(frame.select("name", "vector"), on="name", how="left", maintain_order="left")
            if aligned["vector"].null_count() == 0 and aligned.height:
                group_vectors[level] = _vectors(aligned)
        groups = groups.filter(pl.col("level").is_in(list(group_vectors)))
    shown = render_html(points, out_dir / HTML_NAME, color_by, groups, group_vectors, title,
                        max_points=max_html_points)
    fits = landscape_fits(store)
    return {
        "model_version": version,
        "tracks": points.height,
        "color_by": color_by,
        "color_auto": auto,
        "color_scores": color_scores,
        "png": str(png),
        "html": str(out_dir / HTML_NAME),
        "categories": len(labels.values),
        "fits": fits.to_dicts(),
        **shown,
    }


def summary_markdown(result: dict) -> str:
    """A markdown summary of a render: what was drawn, how it was fitted."""
    lines = [
        f"# The sonic landscape · model `{result['model_version']}`",
        "",
        f"- {result['tracks']:,} tracks, coloured by **{result['color_by']}** ({result['categories']:,} categories"
        + ("; chosen as the label that paints most tracks in distinct, evenly used colours)"
           if result.get("color_auto") else ")"),
        f"- PNG: `{result['png']}`",
        f"- HTML: `{result['html']}` ({result['html_points']:,} points, {result['html_bytes'] / 1e6:.1f} MB)",
        "",
        "| landscape | points | n_neighbors | min_dist | clusters (k by silhouette) | silhouette |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for fit in result.get("fits", []):
        k = "" if fit["clusters"] is None else str(fit["clusters"])
        s = "" if fit["silhouette"] is None else f"{fit['silhouette']:.3f}"
        lines.append(f"| {fit['level']} | {fit['points']:,} | {fit['n_neighbors']} | {fit['min_dist']} | {k} | {s} |")
    return "\n".join(lines) + "\n"


_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
html, body { margin: 0; height: 100%; background: #0b0d12; color: #e4e6eb;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
#app { display: flex; height: 100%; }
#side { width: 310px; flex: none; box-sizing: border-box; padding: 14px 14px 10px; overflow-y: auto;
  border-right: 1px solid #23262f; background: #10131a; }
#side h1 { font-size: 17px; margin: 0 0 4px; }
#meta { color: #9aa0ab; margin: 0 0 12px; font-size: 12px; }
label.row { display: flex; justify-content: space-between; align-items: center; margin: 6px 0; }
select, input[type=search] { background: #181c25; color: #e4e6eb; border: 1px solid #323744;
  border-radius: 4px; padding: 4px 6px; font: inherit; }
input[type=search] { width: 100%; box-sizing: border-box; margin-top: 10px; }
#matches { list-style: none; margin: 4px 0 0; padding: 0; }
#matches li, #selection li { cursor: pointer; padding: 2px 4px; border-radius: 3px; }
#matches li:hover, #selection li:hover { background: #232836; }
#selection h2 { font-size: 14px; margin: 12px 0 4px; color: #ffd166; }
#selection ol { margin: 0; padding-left: 22px; font-size: 13px; }
#legend { margin-top: 12px; font-size: 12px; }
#legend div { display: flex; align-items: center; gap: 6px; margin: 2px 0; }
#legend i { width: 11px; height: 11px; border-radius: 50%; flex: none; }
#legend span.n { color: #8a909b; margin-left: auto; }
#status { color: #9aa0ab; font-size: 12px; min-height: 1.4em; }
audio { width: 100%; margin-top: 4px; }
#main { flex: 1; position: relative; overflow: hidden; }
#map { display: block; width: 100%; height: 100%; cursor: crosshair; }
#tooltip { position: absolute; pointer-events: none; display: none; max-width: 320px;
  background: rgba(18, 21, 29, 0.96); border: 1px solid #3a4050; border-radius: 5px; padding: 6px 9px;
  box-shadow: 0 2px 10px rgba(0,0,0,.5); }
#tooltip .l1 { font-weight: 600; }
#tooltip .l3 { color: #9aa0ab; font-size: 12px; }
#count { position: absolute; right: 10px; bottom: 8px; color: #8a909b; font-size: 12px; }
#help { position: absolute; left: 10px; bottom: 8px; color: #5d6370; font-size: 11px; }
</style>
</head>
<body>
<div id="app">
  <aside id="side">
    <h1>The sonic landscape</h1>
    <p id="meta"></p>
    <label class="row">Map <select id="layer"></select></label>
    <label class="row">Colour by <select id="color-by"></select></label>
    <input id="search" type="search" placeholder="Search artist or title, Enter to pick" autocomplete="off">
    <ul id="matches"></ul>
    <div id="selection"></div>
    <p id="status"></p>
    <audio id="player" controls preload="none"></audio>
    <div id="legend"></div>
  </aside>
  <main id="main">
    <canvas id="map"></canvas>
    <div id="tooltip"></div>
    <div id="count"></div>
    <div id="help">scroll: zoom · drag: pan · double-click: reset · click: play and show neighbours · Esc: clear</div>
  </main>
</div>
<script id="landscape-data" type="application/json">__DATA__</script>
<script>
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("landscape-data").textContent);
  var BG = "#0b0d12";
  var canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  var $ = function (id) { return document.getElementById(id); };
  var tooltip = $("tooltip"), search = $("search"), matchesEl = $("matches"), selectionEl = $("selection");
  var legendEl = $("legend"), statusEl = $("status"), player = $("player"), countEl = $("count");
  var layerSel = $("layer"), colorSel = $("color-by");
  var state = { layer: null, colorBy: null, scale: 1, tx: 0, ty: 0, selected: -1, highlight: [], hover: -1 };
  var layers = {};

  function prepare(name) {
    var L = DATA.layers[name], n = L.x.length, i;
    L.name = name; L.n = n;
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (i = 0; i < n; i++) {
      if (L.x[i] < x0) x0 = L.x[i]; if (L.x[i] > x1) x1 = L.x[i];
      if (L.y[i] < y0) y0 = L.y[i]; if (L.y[i] > y1) y1 = L.y[i];
    }
    if (!n) { x0 = y0 = 0; x1 = y1 = 1; }
    L.bounds = [x0, x1 > x0 ? x1 : x0 + 1, y0, y1 > y0 ? y1 : y0 + 1];
    L.text = new Array(n);
    for (i = 0; i < n; i++) L.text[i] = (L.line1[i] + " \u2014 " + L.line2[i]).toLowerCase();
    // A grid over the data for hover look-ups.
    var g = Math.max(1, Math.min(512, Math.round(Math.sqrt(n / 4))));
    var w = (L.bounds[1] - L.bounds[0]) / g, h = (L.bounds[3] - L.bounds[2]) / g;
    var cellOf = new Int32Array(n), counts = new Int32Array(g * g + 1);
    for (i = 0; i < n; i++) {
      var cx = Math.min(g - 1, Math.floor((L.x[i] - L.bounds[0]) / w));
      var cy = Math.min(g - 1, Math.floor((L.y[i] - L.bounds[2]) / h));
      cellOf[i] = cx + cy * g; counts[cellOf[i] + 1]++;
    }
    for (i = 0; i < g * g; i++) counts[i + 1] += counts[i];
    var fill = counts.slice(0, g * g), items = new Int32Array(n);
    for (i = 0; i < n; i++) items[fill[cellOf[i]]++] = i;
    L.grid = { g: g, w: w, h: h, start: counts, items: items };
    L.byColor = {};
    layers[name] = L;
  }

  function layer() { return layers[state.layer]; }
  function size() { return { w: canvas.clientWidth, h: canvas.clientHeight }; }
  function sx(x) { return state.tx + x * state.scale; }
  function sy(y) { return state.ty - y * state.scale; }

  function fitView() {
    var L = layer(), s = size(), b = L.bounds, pad = 24;
    state.scale = Math.min((s.w - 2 * pad) / (b[1] - b[0]), (s.h - 2 * pad) / (b[3] - b[2]));
    state.tx = s.w / 2 - state.scale * (b[0] + b[1]) / 2;
    state.ty = s.h / 2 + state.scale * (b[2] + b[3]) / 2;
  }

  function resize() {
    var dpr = window.devicePixelRatio || 1, s = size();
    canvas.width = Math.max(1, Math.round(s.w * dpr)); canvas.height = Math.max(1, Math.round(s.h * dpr));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  function order(L, label) {
    // Point indices grouped by colour: one fill per colour.
    if (L.byColor[label]) return L.byColor[label];
    var lab = L.labels[label], groups = {}, i;
    for (i = 0; i < L.n; i++) {
      var c = lab.colors[lab.codes[i]];
      (groups[c] = groups[c] || []).push(i);
    }
    var list = Object.keys(groups).map(function (c) { return [c, groups[c]]; });
    list.sort(function (a, b) { return b[1].length - a[1].length; }); // big groups first, small on top
    return (L.byColor[label] = list);
  }

  function radius(L) {
    var base = L.n < 500 ? 4.5 : L.n < 5000 ? 3 : L.n < 30000 ? 2 : 1.3;
    return base * Math.max(1, Math.min(3, Math.sqrt(state.scale / L.baseScale)));
  }

  function draw() {
    var L = layer(), s = size(), r = radius(L), drawn = 0;
    ctx.fillStyle = BG; ctx.fillRect(0, 0, s.w, s.h);
    var dim = state.highlight.length > 0, groups = order(L, state.colorBy);
    ctx.globalAlpha = dim ? 0.16 : (L.n > 30000 ? 0.55 : 0.85);
    groups.forEach(function (group) {
      ctx.fillStyle = group[0]; ctx.beginPath();
      group[1].forEach(function (i) {
        var px = sx(L.x[i]), py = sy(L.y[i]);
        if (px < -r || py < -r || px > s.w + r || py > s.h + r) return;
        drawn++;
        if (r < 2) { ctx.rect(px - r, py - r, 2 * r, 2 * r); }
        else { ctx.moveTo(px + r, py); ctx.arc(px, py, r, 0, 2 * Math.PI); }
      });
      ctx.fill();
    });
    ctx.globalAlpha = 1;
    if (dim) drawHighlight(L, r);
    if (state.hover >= 0) ring(L, state.hover, r + 3, "#ffffff", 1.5);
    canvas.setAttribute("data-drawn", String(drawn));
    countEl.textContent = drawn.toLocaleString("en") + " of " + L.n.toLocaleString("en") + " " + L.unit + " drawn" +
      (L.name === "tracks" && DATA.total > DATA.shown ? " (a sample of " + DATA.total.toLocaleString("en") + ")" : "");
  }

  function ring(L, i, r, color, width) {
    ctx.strokeStyle = color; ctx.lineWidth = width; ctx.beginPath();
    ctx.arc(sx(L.x[i]), sy(L.y[i]), r, 0, 2 * Math.PI); ctx.stroke();
  }

  function drawHighlight(L, r) {
    var lab = L.labels[state.colorBy], sel = state.selected, R = Math.max(r + 2, 5);
    ctx.strokeStyle = "rgba(255, 209, 102, 0.55)"; ctx.lineWidth = 1; ctx.beginPath();
    state.highlight.forEach(function (i) {
      if (i === sel) return;
      ctx.moveTo(sx(L.x[sel]), sy(L.y[sel])); ctx.lineTo(sx(L.x[i]), sy(L.y[i]));
    });
    ctx.stroke();
    state.highlight.forEach(function (i) {
      ctx.fillStyle = lab.colors[lab.codes[i]]; ctx.beginPath();
      ctx.arc(sx(L.x[i]), sy(L.y[i]), R, 0, 2 * Math.PI); ctx.fill();
      ring(L, i, R + 1.5, i === sel ? "#ffd166" : "#ffffff", i === sel ? 3 : 1.5);
    });
  }

  function nearest(mx, my, maxPx) {
    var L = layer(), G = L.grid, rd = maxPx / state.scale;
    var x = (mx - state.tx) / state.scale, y = (state.ty - my) / state.scale;
    var cx0 = Math.max(0, Math.floor((x - rd - L.bounds[0]) / G.w)), cx1 = Math.min(G.g - 1, Math.floor((x + rd - L.bounds[0]) / G.w));
    var cy0 = Math.max(0, Math.floor((y - rd - L.bounds[2]) / G.h)), cy1 = Math.min(G.g - 1, Math.floor((y + rd - L.bounds[2]) / G.h));
    var best = -1, bestD = rd * rd;
    for (var cy = cy0; cy <= cy1; cy++) for (var cx = cx0; cx <= cx1; cx++) {
      var c = cx + cy * G.g;
      for (var k = G.start[c]; k < G.start[c + 1]; k++) {
        var i = G.items[k], dx = L.x[i] - x, dy = L.y[i] - y, d = dx * dx + dy * dy;
        if (d <= bestD) { bestD = d; best = i; }
      }
    }
    return best;
  }

  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; }

  function labelOf(L, i) { var lab = L.labels[state.colorBy]; return state.colorBy + ": " + lab.values[lab.codes[i]]; }

  function showTooltip(i, mx, my) {
    var L = layer();
    if (i < 0) { tooltip.style.display = "none"; tooltip.removeAttribute("data-index"); return; }
    tooltip.replaceChildren(el("div", "l1", L.line1[i]), el("div", "l2", L.line2[i]),
      el("div", "l3", labelOf(L, i) + (L.audio && L.audio[i] ? " \u00b7 click to play" : "")));
    tooltip.setAttribute("data-index", String(i));
    tooltip.style.display = "block";
    var s = size(), w = tooltip.offsetWidth, h = tooltip.offsetHeight;
    tooltip.style.left = Math.min(mx + 14, s.w - w - 4) + "px";
    tooltip.style.top = (my + 14 + h > s.h ? my - h - 10 : my + 14) + "px";
  }

  function select(i, recentre) {
    var L = layer();
    state.selected = i;
    state.highlight = i < 0 ? [] : [i].concat(L.neighbours[i] || []);
    selectionEl.replaceChildren();
    if (i >= 0) {
      selectionEl.appendChild(el("h2", null, L.line1[i] + " \u2014 " + L.line2[i]));
      selectionEl.appendChild(el("div", "sub", (L.neighbours[i] || []).length + " nearest by sound:"));
      var ol = el("ol");
      (L.neighbours[i] || []).forEach(function (j) {
        var li = el("li", null, L.line1[j] + " \u2014 " + L.line2[j]);
        li.setAttribute("data-index", String(j));
        li.addEventListener("click", function () { select(j, true); play(j); });
        ol.appendChild(li);
      });
      selectionEl.appendChild(ol);
      if (recentre) {
        var s = size(), px = sx(L.x[i]), py = sy(L.y[i]);
        if (px < 40 || py < 40 || px > s.w - 40 || py > s.h - 40) { state.tx += s.w / 2 - px; state.ty += s.h / 2 - py; }
      }
    }
    selectionEl.setAttribute("data-selected", String(i));
    draw();
  }

  function play(i) {
    var L = layer(), url = L.audio ? L.audio[i] : null;
    if (!url) { player.pause(); statusEl.textContent = "No preview for " + L.line1[i] + " \u2014 " + L.line2[i] + "."; return; }
    player.src = url;
    statusEl.textContent = "Playing " + L.line1[i] + " \u2014 " + L.line2[i];
    var p = player.play();
    // AbortError: a later click paused or replaced this preview before it
    // started; the later click has already said what happens.
    if (p && p.catch) p.catch(function (e) { if (e.name !== "AbortError") statusEl.textContent = "Could not play this preview (" + e.name + ")."; });
  }

  function findMatches(q) {
    var L = layer(), out = [];
    for (var i = 0; i < L.n && out.length < 8; i++) if (L.text[i].indexOf(q) >= 0) out.push(i);
    return out;
  }

  function showMatches() {
    var q = search.value.trim().toLowerCase(), L = layer();
    matchesEl.replaceChildren();
    if (q.length < 2) return [];
    var found = findMatches(q);
    found.forEach(function (i) {
      var li = el("li", null, L.line1[i] + " \u2014 " + L.line2[i]);
      li.setAttribute("data-index", String(i));
      li.addEventListener("click", function () { pick(i); });
      matchesEl.appendChild(li);
    });
    if (!found.length) matchesEl.appendChild(el("li", "none", "no match"));
    return found;
  }

  function pick(i) { matchesEl.replaceChildren(); select(i, true); }

  function legend() {
    var L = layer(), lab = L.labels[state.colorBy], shown = 0;
    legendEl.replaceChildren(el("div", null, "Colour: " + state.colorBy));
    var entries = lab.values.map(function (v, k) { return [v, lab.counts[k], lab.colors[k]]; });
    var grey = entries.filter(function (e) { return e[2] === "__OTHER__"; }).length;
    entries.forEach(function (e) {
      if (shown >= 24 || (e[2] === "__OTHER__" && state.colorBy !== "year")) return;
      var row = el("div"), dot = el("i"); dot.style.background = e[2];
      row.append(dot, el("span", null, e[0]), el("span", "n", e[1].toLocaleString("en")));
      legendEl.appendChild(row); shown++;
    });
    if (entries.length > shown) legendEl.appendChild(el("div", "more", "\u2026 and " + (entries.length - shown).toLocaleString("en") + " more" + (grey ? " (grey)" : "")));
  }

  function setLayer(name) {
    state.layer = name; state.hover = -1;
    var L = layer();
    colorSel.replaceChildren();
    Object.keys(L.labels).forEach(function (k) { var o = el("option", null, k); o.value = k; colorSel.appendChild(o); });
    state.colorBy = L.labels[state.colorBy] ? state.colorBy : L.colorBy;
    colorSel.value = state.colorBy;
    fitView(); L.baseScale = state.scale;
    legend(); select(-1); showMatches();
    search.placeholder = name === "tracks" ? "Search artist or title, Enter to pick" : "Search " + L.unit + ", Enter to pick";
  }

  // -- events
  var drag = null;
  canvas.addEventListener("mousedown", function (e) { drag = { x: e.offsetX, y: e.offsetY, tx: state.tx, ty: state.ty, moved: false }; });
  window.addEventListener("mouseup", function () { if (drag) setTimeout(function () { drag = null; }, 0); });
  canvas.addEventListener("mousemove", function (e) {
    if (drag && (e.buttons & 1)) {
      var dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) { state.tx = drag.tx + dx; state.ty = drag.ty + dy; showTooltip(-1); draw(); return; }
    }
    var i = nearest(e.offsetX, e.offsetY, 12);
    if (i !== state.hover) { state.hover = i; draw(); }
    showTooltip(i, e.offsetX, e.offsetY);
  });
  canvas.addEventListener("mouseleave", function () { state.hover = -1; showTooltip(-1); draw(); });
  canvas.addEventListener("click", function (e) {
    if (drag && drag.moved) return;
    var i = nearest(e.offsetX, e.offsetY, 12);
    if (i < 0) return;
    select(i, false); play(i);
  });
  canvas.addEventListener("dblclick", function () { fitView(); draw(); });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var f = Math.exp(-e.deltaY * 0.0015);
    state.tx = e.offsetX - (e.offsetX - state.tx) * f; state.ty = e.offsetY - (e.offsetY - state.ty) * f; state.scale *= f;
    draw();
  }, { passive: false });
  search.addEventListener("input", showMatches);
  search.addEventListener("keydown", function (e) {
    if (e.key === "Enter") { var found = showMatches(); if (found.length) pick(found[0]); }
    if (e.key === "Escape") { search.value = ""; showMatches(); select(-1); }
  });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape" && document.activeElement !== search) select(-1); });
  colorSel.addEventListener("change", function () { state.colorBy = colorSel.value; legend(); draw(); });
  layerSel.addEventListener("change", function () { setLayer(layerSel.value); });
  window.addEventListener("resize", function () { resize(); fitView(); layer().baseScale = state.scale; draw(); });

  // -- start
  Object.keys(DATA.layers).forEach(function (name) {
    prepare(name);
    var o = el("option", null, name); o.value = name; layerSel.appendChild(o);
  });
  $("meta").textContent = (DATA.modelVersion ? "model " + DATA.modelVersion + " \u00b7 " : "") +
    DATA.total.toLocaleString("en") + " tracks" + (DATA.total > DATA.shown ? ", " + DATA.shown.toLocaleString("en") + " shown" : "");
  resize();
  setLayer("tracks");
  window.landscape = {
    state: state,
    layer: function () { return layer(); },
    screenOf: function (i) {
      var L = layer(), b = canvas.getBoundingClientRect();
      return [b.left + sx(L.x[i]), b.top + sy(L.y[i])];
    },
    indexOf: function (line1, line2) {
      var L = layer();
      for (var i = 0; i < L.n; i++) if (L.line1[i] === line1 && L.line2[i] === line2) return i;
      return -1;
    },
    select: select,
  };
  document.body.setAttribute("data-ready", "true");
})();
</script>
</body>
</html>
"""
_PAGE = _PAGE.replace("__OTHER__", OTHER_COLOR)
