"""Per-dimension standardisation of latent vectors, fitted once per model.

Raw encoder outputs share a large common component (every track looks alike
to a freshly trained encoder in some dimensions), which pushes every cosine
towards 1 and says little. As the seed did with a StandardScaler, each
dimension is centred and scaled over the model's tracks; the fitted mean and
scale are stored with the model version, so vectors added later are
comparable with those encoded first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SCALE = 1e-6


@dataclass(frozen=True)
class Standardiser:
    mean: np.ndarray  # float32 (latent_dim,)
    scale: np.ndarray  # float32 (latent_dim,), > 0

    @classmethod
    def fit(cls, vectors: np.ndarray) -> "Standardiser":
        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.ndim != 2 or len(vectors) < 2:
            raise ValueError(f"fitting a standardiser needs at least 2 vectors, got shape {vectors.shape}")
        scale = vectors.std(axis=0)
        # A dimension that never varies carries no information: leave it at 0
        # after centring instead of dividing by ~0.
        scale = np.where(scale < MIN_SCALE, 1.0, scale)
        return cls(mean=vectors.mean(axis=0).astype(np.float32), scale=scale.astype(np.float32))

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        return ((np.asarray(vectors, dtype=np.float32) - self.mean) / self.scale).astype(np.float32)
