"""Hub reduction by mutual proximity.

In high-dimensional spaces a few points (hubs) are close to almost
everything, and show up in everyone's neighbour list while most tracks are
nobody's neighbour. Mutual proximity (Schnitzer et al., JMLR 2012) rescales a
similarity by how unusual it is *for both tracks*: MP(x, y) is the chance that
a random track is less similar to x than y is, and less similar to y than x
is. A hub, similar to everyone, gains little from being similar to x, so it
is demoted. The Gaussian, independent variant is used: each track's
similarities to the others are summarised by their mean and standard
deviation, so

    MP(x, y) = Φ((s − μx) / σx) · Φ((s − μy) / σy),  s = cos(x, y).

In :func:`~sonufy_model.evaluate.ranking_metrics` μ and σ come from every
other track; for a recommendation they come from a fixed sample of the latent
space (:func:`sample_statistics`), and only a pool of nearest candidates by
cosine is re-ranked (:func:`rerank`).
"""

from __future__ import annotations

import numpy as np
import polars as pl

import sql
from sonufy_model.store import TrackNotFound
from sonufy_model.vectors import unit_rows

MIN_STD = 1e-6
SAMPLE_SIZE = 1000  # tracks whose similarities give a track's μ and σ
SAMPLE_SEED = 42
POOL_FACTOR = 10  # candidates by cosine re-ranked per wanted track
MIN_POOL = 100
SQL_FILE = "journeys.sql"


def similarity_statistics(unit: np.ndarray, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each row's cosine to every *other* row.

    ``unit``: row-normalised (n × d), n ≥ 2; computed ``block`` rows at a time.
    """
    n = len(unit)
    if n < 2:
        raise ValueError(f"mutual proximity needs at least 2 tracks, got {n}")
    means = np.empty(n)
    stds = np.empty(n)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = np.nan  # not one's own neighbour
        means[rows] = np.nanmean(similarity, axis=1)
        stds[rows] = np.nanstd(similarity, axis=1)
    return means, np.maximum(stds, MIN_STD)


def mutual_proximity(
    similarity: np.ndarray,
    row_mean: np.ndarray,
    row_std: np.ndarray,
    col_mean: np.ndarray,
    col_std: np.ndarray,
) -> np.ndarray:
    """MP of a block of similarities (rows × cols), given each side's μ and σ.

    Monotonic in the similarity for a fixed pair of tracks; in [0, 1].
    """
    # Imported here: scipy.special takes 0.3 s to import, and every
    # recommendation reads its seed's vector through this module.
    from scipy.special import ndtr

    similarity = np.asarray(similarity, dtype=np.float64)
    row = ndtr((similarity - np.asarray(row_mean)[:, None]) / np.maximum(np.asarray(row_std), MIN_STD)[:, None])
    col = ndtr((similarity - np.asarray(col_mean)[None, :]) / np.maximum(np.asarray(col_std), MIN_STD)[None, :])
    return row * col


def similarity_blocks(vectors: np.ndarray, hub_reduction: bool = False, block: int = 256):
    """(row indices, rows × n similarities) blocks over all pairs: cosine, or
    its mutual proximity; memory grows with block × n, not n²."""
    unit = unit_rows(vectors)
    if hub_reduction:
        mean, std = similarity_statistics(unit, block)
    for start in range(0, len(unit), block):
        rows = np.arange(start, min(start + block, len(unit)))
        similarity = unit[rows] @ unit.T
        if hub_reduction:
            similarity = mutual_proximity(similarity, mean[rows], std[rows], mean, std)
        yield rows, similarity


def k_occurrence(vectors: np.ndarray, k: int, hub_reduction: bool = False) -> np.ndarray:
    """How often each track is among the other tracks' k nearest."""
    n = len(vectors)
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and {n - 1}, got {k} for {n} tracks")
    counts = np.zeros(n, dtype=np.int64)
    for rows, similarity in similarity_blocks(vectors, hub_reduction):
        similarity[np.arange(len(rows)), rows] = -np.inf  # not one's own neighbour
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        counts += np.bincount(top.ravel(), minlength=n)
    return counts


def hubness(vectors: np.ndarray, k: int = 10, hub_reduction: bool = False) -> dict[str, float]:
    """Skewness of the k-occurrence (0: no hubs; the larger, the more hubs),
    the largest k-occurrence, and the share of tracks in nobody's list (anti-hubs)."""
    counts = k_occurrence(vectors, k, hub_reduction).astype(np.float64)
    centred = counts - counts.mean()
    std = counts.std()
    return {
        "k": k,
        "skewness": float((centred**3).mean() / std**3) if std > 0 else 0.0,
        "max_occurrence": int(counts.max()),
        "orphans": float((counts == 0).mean()),
    }


# -- recommendations from the store -----------------------------------------


def pool_size(k: int) -> int:
    """How many nearest tracks by cosine :func:`rerank` should be given for ``k``."""
    return max(POOL_FACTOR * k, MIN_POOL)


def sample_statistics(sample: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ and σ of each vector's cosine to the tracks of ``sample`` (itself left out)."""
    similarity = unit_rows(vectors) @ unit_rows(sample).T
    # A vector that is a sample member is not its own neighbour: leave that entry out.
    similarity[np.isclose(similarity, 1.0, rtol=0.0, atol=1e-9)] = np.nan
    return np.nanmean(similarity, axis=1), np.maximum(np.nanstd(similarity, axis=1), MIN_STD)


def _sample(con, size: int = SAMPLE_SIZE) -> np.ndarray:
    """A fixed sample of the current latent space: what "everyone" is, for μ and σ."""
    rows = con.execute(sql.statement("latent_sample", SQL_FILE), {"size": size, "seed": SAMPLE_SEED}).fetchall()
    if len(rows) < 2:
        raise ValueError("hub reduction needs at least 2 tracks in the latent space")
    return np.array([row[0] for row in rows], dtype=np.float64)


def _vectors(con, track_ids: list[str]) -> np.ndarray:
    rows = con.execute(sql.statement("latent_vectors", SQL_FILE), {"track_ids": track_ids}).fetchall()
    found = {track_id: vector for track_id, vector in rows}
    missing = [t for t in track_ids if t not in found]
    if missing:
        raise TrackNotFound(f"no vector in the current latent space for {', '.join(missing[:5])}")
    return np.array([found[t] for t in track_ids], dtype=np.float64)


def vectors_of(store, track_ids: list[str]) -> np.ndarray:
    """The current model's vectors of ``track_ids``, in that order."""
    if not track_ids:
        return np.empty((0, 0))
    with store.connect(read_only=True) as con:
        return _vectors(con, track_ids)


def rerank(store, query_vector: np.ndarray, candidates: pl.DataFrame, k: int) -> pl.DataFrame:
    """The ``k`` candidates with the highest mutual proximity to the query.

    ``candidates``: nearest tracks by cosine (a :func:`sonufy_model.search.similar`
    frame, best first, ideally :func:`pool_size` of them). Returned with a
    ``mutual_proximity`` column, in its order; the cosine columns are kept.
    """
    if candidates.is_empty():
        return candidates.with_columns(pl.lit(None, dtype=pl.Float64).alias("mutual_proximity"))
    query = np.asarray(query_vector, dtype=np.float64)[None, :]
    with store.connect(read_only=True) as con:
        vectors = _vectors(con, candidates["track_id"].to_list())
        sample = _sample(con)
    mean, std = sample_statistics(sample, np.vstack([query, vectors]))
    cosine = unit_rows(query) @ unit_rows(vectors).T
    scores = mutual_proximity(cosine, mean[:1], std[:1], mean[1:], std[1:])[0]
    return (
        candidates.with_columns(pl.Series("mutual_proximity", scores, dtype=pl.Float64))
        .with_row_index("_cosine_rank")
        .sort(["mutual_proximity", "_cosine_rank"], descending=[True, False])
        .drop("_cosine_rank")
        .head(k)
    )
