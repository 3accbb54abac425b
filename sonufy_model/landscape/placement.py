"""Placing tracks on a fitted landscape without UMAP: by their nearest
neighbours among the tracks the fit placed itself.

UMAP's own ``transform`` finds each new vector's n_neighbors nearest fitted
vectors (an approximate-neighbour index built with numba), starts the new
point at a weighted mean of their points and then optimises it for up to a
hundred epochs against the whole fit. Importing UMAP and compiling its numba
code cost seconds of every nightly before any track was placed (35 s for 10
tracks in a fresh process at 1,000 tracks, docs/performance.md), however few
the new tracks. Here the new point is that weighted mean alone, with exact
neighbours from one matrix product: pure numpy, a nearest-neighbour look-up
per new track.

The weights are Shepard's inverse-distance weighting, ``1 / d**2`` with ``d``
the cosine distance (1 - cosine similarity) in the latent space the
landscape was fitted on: the point is a convex combination of its
neighbours' points (it lands inside their hull, never off the map), a vector
equal to a fitted one lands on that track's point (its weight dominates as
its distance goes to 0), and as distances shrink the nearest dominate more
than UMAP's exponential memberships would, which at a near-duplicate still
give the other neighbours most of the weight until the optimisation epochs
pull the point in.

The map drifts from a fresh fit as placed tracks accumulate (they never move
the fitted ones, and a region that only new tracks fill is drawn among its
nearest old ones): :data:`REFIT_PLACED_SHARE` bounds that, and ``sonufy
landscape --refit`` forces a refit at any time.
"""

from __future__ import annotations

import numpy as np

from sonufy_model.vectors import unit_rows

#: k, the fitted neighbours a new track is placed among. Small and fixed, not
#: the fit's n_neighbors (about sqrt(N), up to 500): UMAP's n_neighbors sets
#: how much global structure the fit sees, but a point averaged over 500
#: neighbours' 2-D points lands between the groups they spread over. 10 is
#: the smallest neighbourhood a track landscape is fitted with
#: (MIN_NEIGHBOURS), about an album or a soundtrack; with 1/d^2 weights the
#: nearest few carry the point anyway.
PLACEMENT_NEIGHBOURS = 10

#: When placing the pending tracks would make the placed (not fitted) tracks
#: more than this share of the fitted ones, the run refits UMAP on every
#: track instead of placing. 20%: a library that grew by a fifth since its
#: fit gets a map that is again a fresh fit (new regions drawn as regions
#: rather than squeezed among their nearest old ones), while a 1% nightly
#: refits once in about 20 nights of growth, not every night.
REFIT_PLACED_SHARE = 0.2

#: Added to the cosine distance in the weights, so that an exact duplicate
#: (distance 0) takes its track's point instead of dividing by zero.
_EPSILON = 1e-6
#: Similarities are computed for this many (new x fitted) pairs at a time.
_CHUNK_ELEMENTS = 1 << 24


def nearest_fitted(reference: np.ndarray, vectors: np.ndarray, k: int = PLACEMENT_NEIGHBOURS
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's k nearest reference vectors by cosine: their indices and
    cosine similarities, nearest first (k clipped to the references)."""
    reference, vectors = unit_rows(reference, np.float32), unit_rows(vectors, np.float32)
    if reference.ndim != 2 or vectors.ndim != 2 or reference.shape[1] != vectors.shape[1]:
        raise ValueError(f"vectors of shape {vectors.shape} cannot be placed among references of shape "
                         f"{reference.shape}")
    if reference.shape[0] == 0:
        raise ValueError("no fitted tracks to place new ones among")
    k = max(1, min(k, reference.shape[0]))
    indices = np.empty((vectors.shape[0], k), dtype=np.int64)
    similarities = np.empty((vectors.shape[0], k), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // reference.shape[0])
    for start in range(0, vectors.shape[0], step):
        sims = vectors[start:start + step] @ reference.T
        top = (np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1]
               else np.broadcast_to(np.arange(k), sims.shape).copy())
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        indices[start:start + len(sims)] = np.take_along_axis(top, order, axis=1)
        similarities[start:start + len(sims)] = np.take_along_axis(top_sims, order, axis=1)
    return indices, similarities


def place_by_neighbours(reference: np.ndarray, reference_points: np.ndarray, vectors: np.ndarray,
                        k: int = PLACEMENT_NEIGHBOURS) -> np.ndarray:
    """2-D points for ``vectors``: the inverse-squared-cosine-distance weighted
    mean of the points of their k nearest ``reference`` vectors (whose points
    are ``reference_points``, one row each)."""
    reference_points = np.asarray(reference_points, dtype=np.float64)
    if len(reference_points) != len(reference):
        raise ValueError(f"{len(reference)} reference vectors but {len(reference_points)} points")
    indices, similarities = nearest_fitted(reference, vectors, k)
    distances = np.clip(1.0 - similarities.astype(np.float64), 0.0, 2.0)
    weights = 1.0 / (distances + _EPSILON) ** 2
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, reference_points[indices]).astype(np.float32)


def needs_refit(fitted: int, placed: int, pending: int, share: float = REFIT_PLACED_SHARE) -> bool:
    """Whether placing ``pending`` more tracks would take the placed ones past
    ``share`` of the ``fitted`` ones (nothing pending: never)."""
    return pending > 0 and placed + pending > share * fitted
