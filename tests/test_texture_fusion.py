"""Block-level texture patterns (sonufy_model.texture) and the hybrid vector
that fuses them with the encoder's (sonufy_model.fusion)."""

from __future__ import annotations

import numpy as np
import pytest

from sonufy_model.fusion import Fusion, fusion_path
from sonufy_model.texture import (
    CONTRAST_BLOCK,
    CONTRAST_GROUPS,
    PATTERN_SETS,
    PATTERNS,
    _modulation_edges,
    block_level_features,
    pattern_sizes,
)
from sonufy_model.vectors import unit_rows

N_MELS, N_FRAMES = 64, 512


def _pattern(features: np.ndarray, name: str) -> np.ndarray:
    bounds = np.cumsum((0, *pattern_sizes(N_FRAMES)))
    index = PATTERNS.index(name)
    return features[:, bounds[index]:bounds[index + 1]]


def _clip(rng: np.random.Generator, envelope: np.ndarray | None = None, bands: slice = slice(0, 0)) -> np.ndarray:
    """A noisy uint8 spectrogram; ``envelope`` (frames,) added to ``bands``."""
    clip = rng.normal(120.0, 4.0, (N_MELS, N_FRAMES))
    if envelope is not None:
        clip[bands] += envelope
    return np.clip(clip, 0, 255).astype(np.uint8)


def test_patterns_have_their_documented_sizes_and_do_not_depend_on_batching():
    rng = np.random.default_rng(0)
    clips = np.stack([_clip(rng) for _ in range(5)])
    features = block_level_features(clips, chunk=2)
    assert features.shape == (5, sum(pattern_sizes(N_FRAMES)))
    assert len(pattern_sizes(N_FRAMES)) == len(PATTERNS)
    assert np.array_equal(features, block_level_features(clips, chunk=5))
    assert np.array_equal(features[3], block_level_features(clips[3:4])[0])  # a clip's patterns are its own


def test_a_pulsing_band_shows_in_the_fluctuation_pattern_and_bands_moving_together_correlate():
    rng = np.random.default_rng(1)
    frames = np.arange(N_FRAMES)
    pulse = 40.0 * (np.sin(2 * np.pi * frames / 16) > 0)  # on and off every 8 frames
    steady, pulsing = block_level_features(np.stack([_clip(rng), _clip(rng, pulse, slice(0, 8))]))
    fluctuation = _pattern(np.stack([steady, pulsing]), "fluctuation").reshape(2, 32, -1)
    # Bands 0-3 of the 32 pooled ones hold mel bands 0-7: they fluctuate (log
    # magnitudes: 2 is e² ≈ 7 times the noise's), the others do not.
    assert fluctuation[1, :4].max() > fluctuation[0].max() + 2
    assert fluctuation[1, 4:].max() < fluctuation[0].max() + 1
    # At the pulse's rate: 16 cycles per 256-frame block, the rfft's bin 16.
    edges = _modulation_edges(256)
    peak = int(np.argmax(fluctuation[1, 0]))
    assert edges[peak] <= 15 < edges[peak + 1]
    correlation = _pattern(np.stack([steady, pulsing]), "correlation")
    first_pair = 0  # bands 0 and 1: the first entry of the upper triangle
    assert correlation[1, first_pair] > 0.9 > abs(correlation[0, first_pair]) + 0.5


def test_sharp_onsets_raise_the_delta_pattern_and_the_spectral_pattern_is_sorted_per_band():
    rng = np.random.default_rng(2)
    frames = np.arange(N_FRAMES)
    clicks = 60.0 * (frames % 32 == 0)
    smooth, clicking = block_level_features(np.stack([_clip(rng), _clip(rng, clicks, slice(0, N_MELS))]))
    assert _pattern(clicking[None], "delta_spectral").max() > 3 * _pattern(smooth[None], "delta_spectral").max()
    spectral = _pattern(smooth[None], "spectral").reshape(32, 10)
    assert np.all(np.diff(spectral, axis=1) >= 0)  # the 0.9 percentile of sorted blocks stays sorted


def test_the_six_pattern_set_adds_spectral_contrast_after_the_five():
    rng = np.random.default_rng(3)
    clips = np.stack([_clip(rng) for _ in range(3)])
    five, six = block_level_features(clips), block_level_features(clips, chunk=2, texture="blocks6")
    assert PATTERN_SETS["blocks6"] == (*PATTERNS, "spectral_contrast")
    assert pattern_sizes(N_FRAMES, texture="blocks6") == (*pattern_sizes(N_FRAMES), CONTRAST_GROUPS * CONTRAST_BLOCK)
    assert six.shape == (3, sum(pattern_sizes(N_FRAMES, texture="blocks6")))
    assert np.array_equal(six[:, :five.shape[1]], five)  # the five are the same numbers in both sets


def test_a_tonal_register_has_more_spectral_contrast_than_noise():
    """One band in each group of the lowest register kept 50 steps above its
    neighbours (a tone over noise): those groups' contrast rises by about that,
    in dB; the other groups' does not."""
    rng = np.random.default_rng(4)
    noise = _clip(rng)
    tonal = noise.astype(np.float32)
    groups = np.array_split(np.arange(N_MELS), CONTRAST_GROUPS)
    for group in groups[:5]:
        tonal[group[0]] += 50
    tonal = np.clip(tonal, 0, 255).astype(np.uint8)
    features = block_level_features(np.stack([noise, tonal]), texture="blocks6")
    contrast = features[:, -CONTRAST_GROUPS * CONTRAST_BLOCK:].reshape(2, CONTRAST_GROUPS, CONTRAST_BLOCK)
    rise = contrast[1] - contrast[0]
    assert np.all(rise[:5] > 50 * 80 / 255 * 0.6)  # 50 steps of 80/255 dB, less the noise's own spread
    assert np.all(np.abs(rise[5:]) < 1e-4)
    assert np.all(np.diff(contrast[0], axis=1) >= 0)  # each group's sorted block stays sorted


def test_an_unknown_pattern_set_is_refused_by_name():
    with pytest.raises(ValueError, match="texture 'blocks7'"):
        block_level_features(np.zeros((1, 64, 512), dtype=np.uint8), texture="blocks7")


def test_too_few_bands_or_frames_are_refused_by_name():
    with pytest.raises(ValueError, match="at least 32 mel bands"):
        block_level_features(np.zeros((1, 16, 512), dtype=np.uint8))
    with pytest.raises(ValueError, match="frames"):
        block_level_features(np.zeros((1, 64, 20), dtype=np.uint8))


def _sample(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 256)).astype(np.float32)
    texture = rng.normal(size=(n, sum(pattern_sizes(N_FRAMES)))).astype(np.float32) * 3 + 10
    return latent, texture


def test_the_fused_halves_weigh_encoder_and_texture_equally():
    latent, texture = _sample(40)
    fusion = Fusion.fit(latent, texture, N_FRAMES)
    joined = Fusion.halves(latent, fusion.texture.transform(texture), fusion.sizes)
    # Each half has unit length; each texture pattern a fifth of the texture half's square.
    assert np.allclose(np.linalg.norm(joined[:, :256], axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(joined[:, 256:], axis=1), 1, atol=1e-5)
    first = joined[:, 256:256 + fusion.sizes[0]]
    assert np.allclose(np.linalg.norm(first, axis=1) ** 2, 1 / len(PATTERNS), atol=1e-5)


def test_a_fusion_of_six_patterns_weighs_each_a_sixth_and_a_saved_five_pattern_fusion_still_loads(tmp_path):
    rng = np.random.default_rng(5)
    latent = rng.normal(size=(30, 256)).astype(np.float32)
    six = rng.normal(size=(30, sum(pattern_sizes(N_FRAMES, texture="blocks6")))).astype(np.float32)
    fusion = Fusion.fit(latent, six, N_FRAMES, pattern_set="blocks6")
    assert len(fusion.sizes) == 6
    joined = Fusion.halves(latent, fusion.texture.transform(six), fusion.sizes)
    last = joined[:, -fusion.sizes[-1]:]
    assert np.allclose(np.linalg.norm(last, axis=1) ** 2, 1 / 6, atol=1e-5)
    # A version fitted on the five (made before "blocks6") keeps its own sizes.
    five = six[:, :sum(pattern_sizes(N_FRAMES))]
    Fusion.fit(latent, five, N_FRAMES).save(tmp_path / "old.fusion.npz")
    loaded = Fusion.load(tmp_path / "old.fusion.npz")
    assert loaded.sizes == pattern_sizes(N_FRAMES) and loaded.transform(latent, five).shape == (30, 256)
    with pytest.raises(ValueError, match="texture numbers per track"):
        loaded.transform(latent, six)


def test_below_129_tracks_the_projection_keeps_every_dot_product_of_each_half():
    latent, texture = _sample(60)
    fusion = Fusion.fit(latent, texture, N_FRAMES)
    vectors = fusion.transform(latent, texture)
    assert vectors.shape == (60, 256) and vectors.dtype == np.float32
    centred = Fusion.halves(latent, fusion.texture.transform(texture), fusion.sizes) - fusion.centre
    for mine, theirs in ((vectors[:, :128], centred[:, :256]), (vectors[:, 128:], centred[:, 256:])):
        assert mine @ mine.T == pytest.approx(theirs @ theirs.T, abs=1e-4)


def test_tracks_encoded_later_land_in_the_same_space_through_the_saved_fusion(tmp_path):
    latent, texture = _sample(30)
    fusion = Fusion.fit(latent[:20], texture[:20], N_FRAMES)
    checkpoint = tmp_path / "epoch=3.ckpt"
    fusion.save(fusion_path(checkpoint))
    assert fusion_path(checkpoint).name == "epoch=3.fusion.npz"
    assert [p.name for p in tmp_path.iterdir()] == ["epoch=3.fusion.npz"]  # no partial file left behind
    loaded = Fusion.load(fusion_path(checkpoint))
    assert np.array_equal(loaded.transform(latent[20:], texture[20:]), fusion.transform(latent[20:], texture[20:]))
    # A near copy of a fitted track is its nearest neighbour among the fitted ones.
    fitted = unit_rows(fusion.transform(latent[:20], texture[:20]))
    copy = unit_rows(loaded.transform(latent[5:6] + 0.01, texture[5:6] + 0.01))
    assert int(np.argmax(fitted @ copy[0])) == 5


def test_texture_of_the_wrong_width_is_refused():
    latent, texture = _sample(10)
    fusion = Fusion.fit(latent, texture, N_FRAMES)
    with pytest.raises(ValueError, match="texture numbers per track"):
        fusion.transform(latent, texture[:, :-1])


def test_a_fused_model_whose_fitted_fusion_is_gone_says_which_file(tmp_path):
    from sonufy_model.store import ModelRecord

    record = ModelRecord("v1", str(tmp_path / "models" / "best.ckpt"), "set", [0.0] * 256, [1.0] * 256, "blocks")
    with pytest.raises(FileNotFoundError, match=r"model v1: its fitted fusion .*best\.fusion\.npz is missing"):
        record.vectors(np.zeros((1, 256), np.float32), np.zeros((1, 3056), np.float32))
    alone = ModelRecord("v0", str(tmp_path / "gone.ckpt"), "set", [1.0] * 256, [2.0] * 256)
    assert alone.fusion is None  # no texture: the standardised encoder vector, no file needed
    assert np.allclose(alone.vectors(np.full((1, 256), 3.0, np.float32), None), 1.0)


def test_the_default_preset_fuses_texture_and_the_reference_does_not():
    from sonufy_model.train_config import ConfigError, TrainConfig

    paths = {"manifest": "m.parquet", "output_dir": "out"}
    assert TrainConfig.from_dict(paths).texture == "blocks6"
    assert TrainConfig.from_dict({**paths, "preset": "reference"}).texture == "none"
    with pytest.raises(ConfigError, match="texture 'bands'"):
        TrainConfig.from_dict({**paths, "texture": "bands"})
