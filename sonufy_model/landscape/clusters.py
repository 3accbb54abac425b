"""Clusters and neighbours in the latent space: spherical k-means
(``sonufy_model/kmeans.py``, the search index's) with the k of the highest
silhouette, and each vector's nearest others by cosine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sonufy_model.kmeans import nearest_centroids, spherical_kmeans
from sonufy_model.landscape.layout import _matrix

NEIGHBOURS = 10
#: Up to this many points, neighbours are exact (cosine by a matrix product);
#: above it, approximate (an inverted file, :func:`_cell_neighbours`).
EXACT_NEIGHBOURS_LIMIT = 20_000
#: The inverted file above the limit: about sqrt(n) cells, each point's
#: neighbours looked for in its own cell and the NEIGHBOUR_CELLS - 1 cells
#: nearest it. Recall of the 10 nearest 0.997 on a 20,200-track store's
#: vectors, at least 0.95 on the clustered vectors of tests/test_landscape.py;
#: pynndescent, used before, compiled numba code for about a minute in every
#: process that drew a page above the limit.
NEIGHBOUR_CELLS = 8
CLUSTER_K_RANGE = (2, 12)
#: Spherical k-means per k: runs from k-means++ starts (the best kept), and
#: iterations at most.
CLUSTER_RESTARTS = 2
CLUSTER_ITERATIONS = 50


@dataclass(frozen=True)
class Clustering:
    """k-means labels with the k of the highest silhouette over a range."""

    k: int
    labels: np.ndarray
    silhouette: float
    scores: dict[int, float] = field(default_factory=dict)

    criterion = "spherical k-means on unit-length vectors; k with the highest silhouette (cosine) over the range"


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def choose_clusters(
    vectors: Any, k_range: tuple[int, int] = CLUSTER_K_RANGE, random_state: int = 0
) -> Clustering | None:
    """Spherical k-means on the vectors (unit length: cosine geometry), the
    best of CLUSTER_RESTARTS runs, for each k in ``k_range`` (inclusive, at
    most n - 1); the k whose labels have the highest mean silhouette wins.
    None when there are fewer than 3 points."""
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
        centroids = spherical_kmeans(matrix, k, sample=len(matrix), iterations=CLUSTER_ITERATIONS,
                                     restarts=CLUSTER_RESTARTS, init="k-means++", seed=random_state)
        labels = nearest_centroids(matrix, centroids)
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
    ``similar_to`` macro, ties aside), approximate above (:func:`_cell_neighbours`)."""
    matrix = _unit(_matrix(vectors, "vectors").astype(np.float64))
    n = matrix.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), dtype=np.int32)
    if n > EXACT_NEIGHBOURS_LIMIT:
        return _cell_neighbours(matrix.astype(np.float32), k, random_state)
    out = np.empty((n, k), dtype=np.int32)
    for start in range(0, n, 2048):
        sims = matrix[start:start + 2048] @ matrix.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        out[start:start + sims.shape[0]] = _top_k(sims, k)
    return out


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of its k largest similarities, largest first."""
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _cell_neighbours(units: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Approximate :func:`nearest_neighbours` of many unit vectors, in time
    that grows about as n^1.5 rather than n²: spherical k-means cells (the
    search index's kind), and for the points of each cell an exact search
    among the points of that cell and of the cells whose centroids are
    nearest its centroid."""
    n = len(units)
    cells = max(2, int(np.sqrt(n)))
    centroids = spherical_kmeans(units, cells, sample=min(n, 64 * cells), seed=seed)
    assigned = nearest_centroids(units, centroids)
    members = [np.flatnonzero(assigned == cell) for cell in range(len(centroids))]
    probed = np.argsort(-(centroids @ centroids.T), axis=1)[:, :min(NEIGHBOUR_CELLS, len(centroids))]
    out = np.empty((n, k), dtype=np.int32)
    for cell, queries in enumerate(members):
        if len(queries) == 0:
            continue
        candidates = np.concatenate([members[other] for other in probed[cell]])
        if len(candidates) <= k:  # a lone point among empty cells: search them all
            candidates = np.arange(n)
        sims = units[queries] @ units[candidates].T
        sims[candidates[None, :] == queries[:, None]] = -np.inf  # not one's own neighbour
        out[queries] = candidates[_top_k(sims, k)]
    return out
