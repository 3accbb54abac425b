"""Vectors scaled to unit length, as every cosine in Sonufy compares them."""

from __future__ import annotations

import numpy as np


def unit_rows(vectors: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """``vectors`` as ``dtype``, each scaled to unit length along its last axis
    (a row of zeros stays zeros), so that dot products are cosines."""
    vectors = np.asarray(vectors, dtype=dtype)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
