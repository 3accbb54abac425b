"""How good are the recommendations? Precision@k of same-label neighbours.

For each track, its k nearest tracks by cosine (itself excluded) are checked
for the same label (style, artist, album...). Chance level is what a random
ranking scores on the same tracks, so a score means something only next to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def precision_at_k(
    vectors: np.ndarray,
    labels: Sequence,
    k: int = 10,
    exclude_groups: Sequence | None = None,
) -> dict[str, float]:
    """Mean precision@k of same-label neighbours, and its chance level.

    exclude_groups: a group per track (e.g. the artist); neighbours of the
    same group are not counted as candidates, as MIR evaluations demand.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(vectors)
    if n != len(labels) or n < 2:
        raise ValueError(f"need at least 2 vectors with one label each, got {n} and {len(labels)}")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    excluded = np.eye(n, dtype=bool)
    if exclude_groups is not None:
        groups = np.asarray(exclude_groups)
        excluded |= groups[:, None] == groups[None, :]
    similarity[excluded] = -np.inf
    same = labels[:, None] == labels[None, :]
    candidates = (~excluded).sum(axis=1)
    usable = candidates >= k
    if not usable.any():
        raise ValueError(f"no track has {k} candidate neighbours")
    top = np.argsort(-similarity[usable], axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(same[usable], top, axis=1)
    chance = (same & ~excluded).sum(axis=1)[usable] / candidates[usable]
    return {
        "precision": float(hits.mean()),
        "chance": float(chance.mean()),
        "k": k,
        "tracks": int(usable.sum()),
    }
