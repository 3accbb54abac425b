"""The invariance model: augmentations, track pairs, the round sampler, the
objective's training and its presets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from sonufy_model import training
from sonufy_model.augment import AugmentSettings, augment
from sonufy_model.datamodule import (
    FixedPairDataset,
    SpectrogramDataModule,
    TrackPairDataset,
    TrackRoundSampler,
    track_groups,
)
from sonufy_model.encoding import encode_spectrograms, load_encoder
from sonufy_model.model import TimeFreqAutoencoder
from sonufy_model.presets import DEFAULT_PRESET, PRESETS

N_MELS, N_FRAMES, TILE = 128, 512, 128
SMALL_FILTERS = (4, 8, 16, 32)


def _track(rng: np.random.Generator, kind: int) -> np.ndarray:
    """A uint8 (128, 512) clip: noise plus a loud band whose place is the track's kind."""
    clip = rng.integers(0, 60, size=(N_MELS, N_FRAMES))
    clip[8 + 14 * kind : 20 + 14 * kind] += 180
    return np.clip(clip, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """16 tracks of distinct kinds; tracks 0-3 are whole songs of 3 excerpts (rows), the rest one."""
    root = tmp_path_factory.mktemp("library")
    rng = np.random.default_rng(5)
    clips, records = [], []
    for track in range(16):
        for _excerpt in range(3 if track < 4 else 1):
            records.append({"track_id": f"t{track:02d}", "shard": str(root / "shard.npy"), "row": len(clips)})
            clips.append(_track(rng, track % 8))
    np.save(root / "shard.npy", np.stack(clips))
    manifest = pl.DataFrame(records)
    manifest.write_parquet(root / "manifest.parquet")
    return {"clips": np.stack(clips), "manifest": manifest, "manifest_path": root / "manifest.parquet"}


# -- augmentations ------------------------------------------------------------


def test_augment_without_stretch_or_masks_returns_the_crop_itself():
    crops = torch.rand(3, N_MELS, TILE)
    views = augment(crops, TILE, AugmentSettings(stretch=0.0, freq_mask_bands=0, time_mask_frames=0))
    torch.testing.assert_close(views, crops, atol=1e-4, rtol=0)


def test_augment_makes_tile_wide_views_in_range_with_a_masked_band_and_span():
    torch.manual_seed(0)
    crops = torch.rand(64, N_MELS, 160) * 0.5 + 0.25  # never 0 on its own
    views = augment(crops, TILE, AugmentSettings(stretch=0.25, freq_mask_bands=16, time_mask_frames=24))
    assert views.shape == (64, N_MELS, TILE)
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    silent_bands = (views == 0).all(dim=2).sum(dim=1)  # per view
    silent_frames = (views == 0).all(dim=1).sum(dim=1)
    assert int(silent_bands.max()) <= 16 and int(silent_frames.max()) <= 24
    assert (silent_bands > 0).float().mean() > 0.5 and (silent_frames > 0).float().mean() > 0.5
    # Views are windows of their crop: a view of a constant-in-time crop equals its column.
    flat = torch.linspace(0.2, 0.8, N_MELS)[None, :, None].expand(2, N_MELS, 160).contiguous()
    flat_views = augment(flat, TILE, AugmentSettings(stretch=0.25, freq_mask_bands=0, time_mask_frames=0))
    torch.testing.assert_close(flat_views, flat[:, :, :TILE], atol=1e-4, rtol=0)


def test_augment_settings_reject_bad_ranges_and_size_crops():
    assert AugmentSettings(stretch=0.25).crop_frames(128) == 160
    with pytest.raises(ValueError, match="stretch"):
        AugmentSettings(stretch=1.0)
    with pytest.raises(ValueError, match="crops"):
        augment(torch.rand(2, N_MELS, 100), TILE, AugmentSettings())


# -- data ---------------------------------------------------------------------


def test_track_pairs_come_from_one_track_at_two_places_and_repeat_per_epoch(library):
    manifest = library["manifest"]
    groups = track_groups(manifest["track_id"].to_list())
    assert [len(g) for g in groups[:5]] == [3, 3, 3, 3, 1]
    dataset = TrackPairDataset(manifest["shard"].to_list(), manifest["row"].to_numpy(), groups, n_frames=N_FRAMES,
                               crops_per_track=2, crop_frames=160, seed=3)
    assert len(dataset) == 32
    for index in range(len(dataset)):
        places = dataset.crop_places(index)
        track_rows = set(groups[index // 2].tolist())
        assert {row for row, _ in places} <= track_rows and places[0] != places[1]
        pair = dataset[index]
        assert pair.shape == (2, N_MELS, 160)
        row, offset = places[1]
        expected = library["clips"][row][:, offset : offset + 160]
        np.testing.assert_allclose(pair[1].numpy(), expected, rtol=1e-6)
    assert dataset.crop_places(5) == dataset.crop_places(5)
    assert dataset.crop_places(5) != dataset.crop_places(len(dataset) + 5)  # the next epoch draws anew
    # Whole songs: pairs draw from several excerpts.
    rows_used = {row for i in range(0, 8) for e in range(20) for row, _ in dataset.crop_places(e * len(dataset) + i)}
    assert rows_used == set(np.concatenate(groups[:4]).tolist())


def test_round_sampler_covers_the_epoch_once_and_keeps_a_track_once_per_round():
    sampler = TrackRoundSampler(n_tracks=10, crops_per_track=3, seed=0)
    sampler.set_epoch(2)
    indices = list(sampler)
    assert sorted(i - 2 * 30 for i in indices) == list(range(30))
    for start in range(0, 30, 10):
        tracks = [(i - 60) // 3 for i in indices[start : start + 10]]
        assert sorted(tracks) == list(range(10))


def test_fixed_pairs_are_the_first_and_last_tiles_of_a_track(library):
    manifest = library["manifest"]
    groups = track_groups(manifest["track_id"].to_list())
    dataset = FixedPairDataset(manifest["shard"].to_list(), manifest["row"].to_numpy(), groups, N_FRAMES, TILE)
    assert len(dataset) == 16
    pair = dataset[0]
    clips = library["clips"]
    np.testing.assert_allclose(pair[0].numpy(), clips[0][:, :TILE])
    np.testing.assert_allclose(pair[1].numpy(), clips[2][:, -TILE:])


def test_datamodule_serves_invariance_batches(library):
    datamodule = SpectrogramDataModule(library["manifest"], batch_size=4, val_fraction=0.25, crops_per_track=2,
                                       seed=1, invariance=True, crop_frames=160)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.shape == (4, 2, N_MELS, 160)
    val = next(iter(datamodule.val_dataloader()))
    assert val.shape[1:] == (2, N_MELS, TILE)
    assert not set(datamodule.train_track_ids) & set(datamodule.val_track_ids)
    assert len(datamodule.val_track_ids) >= 2  # a held-out pair needs another track to be told apart from


# -- the model ----------------------------------------------------------------


def test_invariance_model_has_no_decoder_and_encodes_256_numbers():
    model = TimeFreqAutoencoder(objective="invariance", filters=SMALL_FILTERS, time_pooling="mean").eval()
    assert model.decoder is None and model.augment_settings.crop_frames(TILE) == 160
    assert model.encode(torch.rand(3, N_MELS, TILE)).shape == (3, 256)
    with pytest.raises(RuntimeError, match="no decoder"):
        model.decode(torch.zeros(1, 256))
    with pytest.raises(ValueError, match="crop pairs"):
        model._shared_step(torch.rand(4, N_MELS, TILE), "train")
    with pytest.raises(ValueError, match="objective"):
        TimeFreqAutoencoder(objective="magic")


def _config(library: dict, tmp_path: Path, **overrides) -> training.TrainConfig:
    data = {
        "manifest": str(library["manifest_path"]),
        "output_dir": str(tmp_path / "run"),
        "accelerator": "cpu",
        "devices": 1,
        "filters": list(SMALL_FILTERS),
        "batch_size": 8,
        "val_fraction": 0.25,
        **overrides,
    }
    return training.TrainConfig.from_dict(data)


def test_training_the_invariance_model_tells_held_out_tracks_apart(library, tmp_path):
    config = _config(library, tmp_path, max_epochs=30, learning_rate=3e-3, early_stopping_patience=30,
                     val_fraction=0.4, crops_per_track=2)
    assert config.preset == DEFAULT_PRESET == "invariance" and config.objective == "invariance"
    result = training.train(config)
    assert result.monitor == "val_loss" and math.isnan(result.val_mse)
    assert math.isfinite(result.val_score) and Path(result.checkpoint_path).is_file()
    logs = pl.read_csv(next((tmp_path / "run" / "logs").rglob("metrics.csv")))
    val = logs["val_loss"].drop_nulls()
    # NT-Xent of n held-out pairs is log(2n - 1) for latents that cannot tell tracks apart;
    # training must bring it well below that.
    chance = math.log(2 * result.n_val_tracks - 1)
    assert val.len() >= 10 and float(val.min()) < 0.5 * chance, (chance, val.to_list())
    assert TimeFreqAutoencoder.load_from_checkpoint(result.checkpoint_path).objective == "invariance"
    encoder = load_encoder(result.checkpoint_path)
    assert encoder.encode_tiles == 8
    vectors = encode_spectrograms(encoder, library["clips"])
    assert vectors.shape == (len(library["clips"]), 256) and np.isfinite(vectors).all()


def test_presets_start_a_config_and_its_own_keys_win(library, tmp_path):
    reference = _config(library, tmp_path, preset="reference")
    assert reference.objective == "reconstruction" and reference.monitor == "val_mse"
    assert reference.time_pooling == "flatten" and reference.batch_size == 8  # the config's own key wins
    invariance = _config(library, tmp_path)
    assert invariance.time_pooling == PRESETS["invariance"]["time_pooling"] == "mean"
    with pytest.raises(training.ConfigError, match="unknown preset 'fast'"):
        _config(library, tmp_path, preset="fast")


def test_reference_preset_still_trains_the_seed_autoencoder(library, tmp_path):
    result = training.train(_config(library, tmp_path, preset="reference", max_epochs=1, limit_train_batches=1))
    assert result.monitor == "val_mse" and math.isfinite(result.val_mse) and result.val_mse == result.val_score
    assert TimeFreqAutoencoder.load_from_checkpoint(result.checkpoint_path).decoder is not None


def test_pitch_shift_moves_a_band_within_its_range_and_only_when_asked():
    import librosa

    torch.manual_seed(1)
    crops = torch.zeros(32, N_MELS, 160)
    crops[:, 60] = 1.0  # one loud band, constant in time
    plain = AugmentSettings(stretch=0.0, freq_mask_bands=0, time_mask_frames=0)
    assert {int(v.mean(1).argmax()) for v in augment(crops, TILE, plain)} == {60}
    shifted = augment(crops, TILE, AugmentSettings(stretch=0.0, freq_mask_bands=0, time_mask_frames=0,
                                                   pitch_semitones=3.0))
    peaks = [int(v.mean(1).argmax()) for v in shifted]
    centres = librosa.mel_frequencies(n_mels=N_MELS, fmin=0.0, fmax=8000.0)
    low, high = (int(np.searchsorted(centres, centres[60] * 2 ** (s / 12))) for s in (-3, 3))
    assert len(set(peaks)) > 3 and all(low - 1 <= p <= high for p in peaks), (low, high, peaks)
    with pytest.raises(ValueError, match="pitch_semitones"):
        AugmentSettings(pitch_semitones=-1)


def test_gain_moves_each_view_by_one_level_within_its_range():
    torch.manual_seed(2)
    crops = torch.full((64, N_MELS, TILE), 0.5)
    crops[:, 10] = 0.7
    views = augment(crops, TILE, AugmentSettings(stretch=0.0, freq_mask_bands=0, time_mask_frames=0, gain_db=6.0))
    shift = views - crops
    per_view = shift.mean(dim=(1, 2))
    # One shift per view, the same in every band and frame (the spectrum's shape is kept)...
    assert torch.allclose(shift, per_view[:, None, None].expand_as(shift), atol=1e-5)
    # ...within ±6 dB on the 120 dB absolute scale, and different from view to view.
    assert per_view.abs().max() <= 6 / 120 + 1e-6 and per_view.std() > 1 / 120
    still = augment(crops, TILE, AugmentSettings(stretch=0.0, freq_mask_bands=0, time_mask_frames=0))
    assert torch.allclose(still, crops, atol=1e-5)
    with pytest.raises(ValueError, match="gain_db"):
        AugmentSettings(gain_db=-1)


def test_band_blur_spreads_a_harmonic_keeps_the_level_and_is_off_by_default():
    torch.manual_seed(3)
    crops = torch.full((64, N_MELS, TILE), 0.3)
    crops[:, 60] = 0.9  # one harmonic, constant in time
    plain = AugmentSettings(stretch=0.0, freq_mask_bands=0, time_mask_frames=0)
    assert torch.allclose(augment(crops, TILE, plain), crops, atol=1e-5)
    views = augment(crops, TILE, AugmentSettings(stretch=0.0, freq_mask_bands=0, time_mask_frames=0, blur_bands=3.0))
    # Each view's spectrum is one shape in every frame: the blur acts along the mel axis only...
    assert torch.allclose(views, views[:, :, :1].expand_as(views), atol=1e-5)
    # ...keeps the spectrum's mean (a normalised kernel, the edges far from the harmonic)...
    assert torch.allclose(views.mean(dim=(1, 2)), crops.mean(dim=(1, 2)), atol=1e-4)
    # ...and spreads the harmonic by a width of the view's own, up to 3 bands.
    peak = views[:, 60, 0]
    assert peak.max() <= 0.9 + 1e-5 and peak.min() < 0.5 and peak.std() > 0.02
    assert (views[:, 60 + 12, 0] - 0.3).abs().max() < 0.01  # 4 sigma away: untouched
    with pytest.raises(ValueError, match="blur_bands"):
        AugmentSettings(blur_bands=-1)


def test_segment_shuffle_reorders_whole_segments_of_time_per_view():
    torch.manual_seed(4)
    crops = torch.arange(TILE, dtype=torch.float32).div(TILE)[None, None].expand(32, N_MELS, TILE).contiguous()
    views = augment(crops, TILE, AugmentSettings(stretch=0.0, freq_mask_bands=0, time_mask_frames=0,
                                                 shuffle_segments=4))
    length = TILE // 4
    orders = set()
    for view in views:
        frames = (view[0] * TILE).round().long()
        assert torch.allclose(view, view[:1].expand_as(view), atol=1e-6)  # every band moves alike
        segments = frames.view(4, length)
        # Each segment is one original segment, whole and in its own order of frames.
        assert all(torch.equal(s, torch.arange(s[0], s[0] + length)) and int(s[0]) % length == 0 for s in segments)
        assert sorted(int(s[0]) // length for s in segments) == [0, 1, 2, 3]
        orders.add(tuple(int(s[0]) // length for s in segments))
    assert len(orders) > 5  # a random order per view
    with pytest.raises(ValueError, match="shuffle_segments"):
        AugmentSettings(shuffle_segments=1)


def test_tilt_is_a_line_across_the_bands_through_the_middle_within_its_range():
    torch.manual_seed(5)
    crops = torch.full((64, 9, TILE), 0.5)  # 9 bands: band 4 is the middle
    views = augment(crops, TILE, AugmentSettings(stretch=0.0, freq_mask_bands=0, time_mask_frames=0, tilt_db=12.0))
    assert views.shape == crops.shape
    shift = views - crops
    # One spectrum shape per view, the same in every frame...
    assert torch.allclose(shift, shift[:, :, :1].expand_as(shift), atol=1e-6)
    per_band = shift[:, :, 0]
    # ...a straight line across the bands through the middle band, which stays as it was...
    steps = per_band.diff(dim=1)
    assert torch.allclose(steps, steps[:, :1].expand_as(steps), atol=1e-6)
    assert per_band[:, 4].abs().max() < 1e-6
    # ...rising or falling by at most 12 dB from the lowest band to the highest (120 dB a unit):
    # each end moves by at most 6 dB, and the slopes fill the range both ways.
    rise = (per_band[:, -1] - per_band[:, 0]) * 120
    assert rise.abs().max() <= 12 + 1e-3 and rise.max() > 8 and rise.min() < -8
    assert per_band[:, [0, -1]].abs().max() * 120 <= 6 + 1e-3
    with pytest.raises(ValueError, match="tilt_db"):
        AugmentSettings(tilt_db=-1)


def _mixed_db(a_db: float, b_db: float) -> float:
    return 10 * math.log10(10 ** (a_db / 10) + 10 ** (b_db / 10))


def test_mixing_adds_another_tracks_crop_in_power_some_dB_below_it():
    torch.manual_seed(6)
    plain = {"stretch": 0.0, "freq_mask_bands": 0, "time_mask_frames": 0}
    # Every crop at one level: a mixed view rises by 10·log10(1 + 10^(-r/10)) dB for its drop r in [6, 18].
    crops = torch.full((64, N_MELS, 160), 0.5)
    views = augment(crops, TILE, AugmentSettings(**plain, mix_below_db=6.0))
    assert views.shape == (64, N_MELS, TILE)
    rise = (views - 0.5) * 120
    assert rise.min() >= -1e-4  # mixing never lowers a bin
    most, least = _mixed_db(0, -6), _mixed_db(0, -18)  # 0.97 and 0.07 dB
    assert rise.max() <= most + 1e-3
    per_view = rise.mean(dim=(1, 2))
    assert torch.allclose(rise, per_view[:, None, None].expand_as(rise), atol=1e-4)
    mixed = per_view > 1e-3
    assert 16 <= int(mixed.sum()) <= 48  # about half the views
    assert per_view[mixed].min() >= least - 1e-3 and per_view[mixed].max() > 0.5

    # Crop i is a loud band at mel band 4i over a quiet floor, the same in every frame: a mixed
    # view shows one other crop's band, never its own crop's other copy (i + 8: the model's
    # layout puts a track's two crops half a batch apart), 6 to 18 dB below that crop's level.
    crops = torch.full((16, N_MELS, 160), 0.1)
    for i in range(16):
        crops[i, 4 * i] = 0.9
    others = set()
    for _ in range(8):
        views = augment(crops, TILE, AugmentSettings(**plain, mix_below_db=6.0))
        assert (views - crops[:, :, :TILE]).min() >= -1e-5
        for i, view in enumerate(views[:, ::4, 0]):
            band = view.clone()
            band[i] = 0
            if band.max() < 0.2:
                continue  # not mixed
            j = int(band.argmax())
            assert j not in (i, (i + 8) % 16)
            level = float(band[j]) * 120
            assert _mixed_db(12, 108 - 18) - 1e-3 <= level <= _mixed_db(12, 108 - 6) + 1e-3
            others.add((i, j))
    assert len(others) > 20  # the other crop is drawn per view

    # Two crops are one track: nothing to mix; and mixing is off unless asked.
    two = torch.rand(2, N_MELS, TILE)
    torch.testing.assert_close(augment(two, TILE, AugmentSettings(**plain, mix_below_db=6.0)), two, atol=1e-5, rtol=0)
    torch.testing.assert_close(augment(crops[:, :, :TILE], TILE, AugmentSettings(**plain)), crops[:, :, :TILE],
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mix_below_db"):
        AugmentSettings(mix_below_db=-1)


def test_tilt_and_mixing_are_off_by_default_and_reach_the_checkpoint(library, tmp_path):
    assert AugmentSettings().tilt_db == 0 == AugmentSettings().mix_below_db
    for preset in PRESETS:
        config = _config(library, tmp_path, preset=preset)
        assert config.tilt_db == 0 == config.mix_below_db
    crops = torch.rand(8, N_MELS, 160)
    torch.manual_seed(7)
    default = augment(crops, TILE, AugmentSettings())
    torch.manual_seed(7)
    torch.testing.assert_close(augment(crops, TILE, AugmentSettings(tilt_db=0.0, mix_below_db=0.0)), default,
                               atol=0, rtol=0)
    result = training.train(_config(library, tmp_path, max_epochs=1, limit_train_batches=1, tilt_db=6.0,
                                    mix_below_db=9.0))
    settings = TimeFreqAutoencoder.load_from_checkpoint(result.checkpoint_path).augment_settings
    assert settings.tilt_db == 6.0 and settings.mix_below_db == 9.0
