"""The hybrid vector: what the encoder learned, fused with block-level
texture statistics (:mod:`sonufy_model.texture`), still 256 numbers.

Why: trained on one user's catalog alone (a few hundred tracks at times), the
encoder ranks same-soundtrack tracks better than classic statistics but still
misses what the texture patterns capture (how sounds start and stop, rhythm,
which registers move together). Side by side, with equal weight, the two rank
same-soundtrack tracks of the development corpus better than either alone in
each of three training seeds (+0.03 to +0.055 precision@10, paired intervals
above zero; docs/model.md).

How: the first half of the vector is the encoder's, the second the
texture's, so that the SQL's two half-similarities (``time_similarity`` and
``frequency_similarity`` for the reference model) say how alike two tracks
are to the encoder and in texture. The encoder's standardised vector is
scaled to unit length; each texture pattern, standardised per column, is
scaled to unit length and weighted 1/√n (n patterns: 5 in the ``blocks``
set, 6 in ``blocks6``), so together they make one unit vector and weigh
what the encoder weighs. Each half is centred and projected on
its first 128 principal axes, fitted once per model version on the same
sample of tracks as the standardisation (a projection keeps every dot
product below 129 tracks, and the largest share of them above). Everything
fitted is saved beside the model's checkpoint, so tracks encoded later land
in the same space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonufy_model.standardise import Standardiser
from sonufy_model.texture import PATTERN_SETS, pattern_sizes
from sonufy_model.vectors import unit_rows

#: TrainConfig.texture values: a pattern set of sonufy_model.texture.PATTERN_SETS
#: ("blocks", "blocks6") fuses those patterns, "none" keeps the encoder's vector alone.
TEXTURES = ("none", *PATTERN_SETS)


def fusion_path(checkpoint: str | Path) -> Path:
    """Where a model version's fitted fusion lives: beside its checkpoint."""
    return Path(checkpoint).with_suffix(".fusion.npz")


@dataclass(frozen=True)
class Fusion:
    texture: Standardiser  # per texture column, over the fitting sample
    sizes: tuple[int, ...]  # the texture patterns' sizes, in order
    centre: np.ndarray  # float32 (latent + texture,): each half's mean over the sample
    projection: np.ndarray  # float32 (latent + texture, dim), block-diagonal: a half onto a half

    @staticmethod
    def halves(latent: np.ndarray, texture: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
        """The encoder's unit vector and the texture's side by side (see the
        module's docstring); ``texture`` standardised."""
        bounds = np.cumsum((0, *sizes))
        if texture.shape[1] != bounds[-1]:
            raise ValueError(f"expected {bounds[-1]} texture numbers per track, got {texture.shape[1]}")
        weight = np.float32(1.0 / np.sqrt(len(sizes)))
        parts = [unit_rows(latent, np.float32)]
        parts += [unit_rows(texture[:, a:b], np.float32) * weight for a, b in zip(bounds[:-1], bounds[1:])]
        return np.concatenate(parts, axis=1)

    @classmethod
    def fit(cls, latent: np.ndarray, texture: np.ndarray, n_frames: int, dim: int = 256,
            pattern_set: str = "blocks") -> Fusion:
        """latent: the sample's standardised encoder vectors; texture: their
        raw texture patterns of the set ``pattern_set``
        (:func:`sonufy_model.texture.block_level_features`, per track);
        n_frames: the spectrograms' frames."""
        sizes = pattern_sizes(n_frames, texture=pattern_set)
        standardiser = Standardiser.fit(texture)
        joined = cls.halves(latent, standardiser.transform(texture), sizes).astype(np.float64)
        centre = joined.mean(axis=0)
        projection = np.zeros((joined.shape[1], dim), dtype=np.float32)
        half = dim // 2
        for rows, columns in ((slice(0, latent.shape[1]), slice(0, half)),
                              (slice(latent.shape[1], None), slice(half, dim))):
            _, _, axes = np.linalg.svd(joined[:, rows] - centre[rows], full_matrices=False)
            kept = min(half, len(axes))
            projection[rows, columns.start:columns.start + kept] = axes[:kept].T
        return cls(standardiser, sizes, centre.astype(np.float32), projection)

    def transform(self, latent: np.ndarray, texture: np.ndarray) -> np.ndarray:
        """(tracks, dim) float32: standardised encoder vectors fused with their texture patterns."""
        if texture.shape[1] != len(self.texture.mean):
            raise ValueError(f"expected {len(self.texture.mean)} texture numbers per track, got {texture.shape[1]} "
                             "(spectrograms of another shape than the model was fitted on)")
        joined = self.halves(latent, self.texture.transform(texture), self.sizes)
        return ((joined - self.centre) @ self.projection).astype(np.float32)
    def save(self, path: str | Path) -> None:
        """Written whole or not at all (a temporary file renamed into place)."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial.npz")
        np.savez(partial, texture_mean=self.texture.mean, texture_scale=self.texture.scale,
                 sizes=np.asarray(self.sizes, dtype=np.int64), centre=self.centre, projection=self.projection)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | Path) -> Fusion:
        with np.load(path) as saved:
            return cls(Standardiser(saved["texture_mean"], saved["texture_scale"]),
                       tuple(int(size) for size in saved["sizes"]), saved["centre"], saved["projection"])
