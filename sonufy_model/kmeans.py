"""Spherical (cosine) k-means, the one k-means of Sonufy: the search index's
cells (``search.py``) and the landscape's clusters (``landscape/clusters.py``).

Centroids are unit vectors, each vector belongs to the centroid of largest
inner product, and every iteration scales the centroids back to unit length,
so the cells are the ones a cosine query probes. scikit-learn's KMeans
(Euclidean, centroids inside the sphere) lost recall as the index's
quantiser: docs/decisions/search-index.md.
"""

from __future__ import annotations

import numpy as np


def spherical_kmeans(units: np.ndarray, k: int, *, sample: int | None = None, iterations: int = 12,
                     restarts: int = 1, init: str = "random", seed: int = 0) -> np.ndarray:
    """``k`` unit centroids of unit vectors, fitted on a sample of
    ``sample`` of them (default: max(64 k, 20,000)), starting from ``init``:
    "random" vectors of the sample (the search index: for thousands of
    cells, k-means++ starts cost far more than the iterations), or greedy
    "k-means++" starts (a few clusters: the landscape). With ``restarts`` > 1, the run whose vectors are nearest
    their centroids (largest summed cosine) of that many."""
    if init not in ("random", "k-means++"):
        raise ValueError(f"init must be 'random' or 'k-means++', got {init!r}")
    rng = np.random.default_rng(seed)
    size = min(len(units), sample or max(64 * k, 20_000))
    fit = units[rng.choice(len(units), size, replace=False)] if size < len(units) else units
    best, best_score = None, -np.inf
    for _ in range(restarts):
        if init == "random":
            centroids = fit[rng.choice(len(fit), k, replace=False)].copy()
        else:
            centroids = _plus_plus(fit, k, rng)
        assignment = None
        for _ in range(iterations):
            previous, assignment = assignment, nearest_centroids(fit, centroids)
            sums = np.zeros_like(centroids)
            np.add.at(sums, assignment, fit)
            norms = np.linalg.norm(sums, axis=1)
            empty = norms == 0
            if previous is not None and not empty.any() and np.array_equal(previous, assignment):
                break  # converged: the centroids would not move
            centroids[~empty] = sums[~empty] / norms[~empty, None]
            # An empty cell starts again from a random vector.
            centroids[empty] = fit[rng.choice(len(fit), int(empty.sum()), replace=False)]
        if restarts == 1:
            return centroids.astype(np.float32)
        score = float(np.max(fit @ centroids.T, axis=1).sum())
        if score > best_score:
            best, best_score = centroids, score
    return best.astype(np.float32)


def _plus_plus(fit: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ on the sphere (as scikit-learn's): each next start is
    the best, by the summed 1 - cosine to the nearest start, of 2 + ln k
    vectors drawn with weight 1 - their cosine to the nearest start."""
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(len(fit)))]
    closest = fit @ fit[chosen[0]]
    for _ in range(1, k):
        weights = np.clip(1.0 - closest, 0.0, None)
        total = weights.sum()
        if total <= 0:  # every vector is one of the starts already
            chosen.append(int(rng.integers(len(fit))))
            continue
        candidates = rng.choice(len(fit), trials, p=weights / total)
        options = np.maximum(closest[None, :], fit[candidates] @ fit.T)
        best = int(np.argmax(options.sum(axis=1)))
        chosen.append(int(candidates[best]))
        closest = options[best]
    return fit[chosen].copy()


def nearest_centroids(units: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """The index of each unit vector's nearest centroid (largest inner product)."""
    out = np.empty(len(units), dtype=np.int32)
    for start in range(0, len(units), chunk):
        out[start : start + chunk] = np.argmax(units[start : start + chunk] @ centroids.T, axis=1)
    return out
