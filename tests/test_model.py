"""Tests for the autoencoder, its data pipeline, training entry point and encoder.

Everything runs on CPU in well under a minute: the shards are tiny and most
tests use a narrow variant of the model (same layout, fewer filters). The
full-size reference model is only built to check shapes and its size.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from sonufy_model import training
from sonufy_model.datamodule import EpochShuffleSampler, RandomCropPairDataset, SpectrogramDataModule, split_tracks
from sonufy_model.encoding import encode_spectrograms, load_encoder
from sonufy_model.model import TimeFreqAutoencoder, as_unit_range, nt_xent
from sonufy_model.tiles import fixed_tile_offsets, fixed_tiles

N_MELS, N_FRAMES, TILE = 128, 512, 128
SMALL_FILTERS = (4, 8, 16, 32)
REPO_ROOT = Path(__file__).resolve().parents[1]


def _spectrogram(rng: np.random.Generator, track_class: int) -> np.ndarray:
    """A uint8 (128, 512) "track": noise plus a loud band whose position is its class."""
    spectrogram = rng.integers(0, 50, size=(N_MELS, N_FRAMES))
    band = slice(16 + 40 * track_class, 40 + 40 * track_class)
    spectrogram[band] += 150
    loud_moment = rng.integers(0, N_FRAMES - 32)
    spectrogram[:, loud_moment : loud_moment + 32] += 50
    return np.clip(spectrogram, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """12 tracks of 3 classes in two shards, plus a parquet manifest."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(1234)
    spectrograms = np.stack([_spectrogram(rng, i % 3) for i in range(12)])
    records = []
    for shard_index, rows in enumerate((range(0, 7), range(7, 12))):
        path = root / f"shard-{shard_index}.npy"
        np.save(path, spectrograms[list(rows)])
        records += [
            {"track_id": f"track-{i:02d}", "shard": str(path), "row": row} for row, i in enumerate(rows)
        ]
    manifest = pl.DataFrame(records)
    manifest_path = root / "manifest.parquet"
    manifest.write_parquet(manifest_path)
    return {"spectrograms": spectrograms, "manifest": manifest, "manifest_path": manifest_path}


def _datamodule(shards: dict, **kwargs) -> SpectrogramDataModule:
    options = {"batch_size": 8, "val_fraction": 0.25, "crops_per_track": 4, "seed": 7} | kwargs
    datamodule = SpectrogramDataModule(shards["manifest"], **options)
    datamodule.setup("fit")
    return datamodule


def _cpu_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_fixed_tiles_cover_the_clip_evenly():
    offsets = fixed_tile_offsets(512, 32, 128)
    assert offsets[0] == 0 and offsets[-1] == 512 - 128 and len(offsets) == 32
    assert np.all(np.diff(offsets) > 0)
    assert fixed_tile_offsets(512, 1, 128).tolist() == [0]

    spectrograms = np.random.default_rng(0).integers(0, 256, (3, N_MELS, N_FRAMES), dtype=np.uint8)
    tiles = fixed_tiles(spectrograms, n_tiles=4, tile_frames=TILE)
    assert tiles.shape == (3, 4, N_MELS, TILE) and tiles.dtype == np.float32
    assert fixed_tiles(spectrograms[1], n_tiles=4).shape == (4, N_MELS, TILE)
    start = fixed_tile_offsets(N_FRAMES, 4, TILE)[2]
    np.testing.assert_array_equal(tiles[1, 2], spectrograms[1, :, start : start + TILE] / np.float32(255))


def test_reference_model_shapes_and_latent_layout():
    model = TimeFreqAutoencoder().eval()
    # The seed's reference design has ~7.9 M parameters; this pins the architecture.
    assert sum(p.numel() for p in model.parameters()) == 7_924_993

    tiles = torch.rand(3, N_MELS, TILE)
    with torch.no_grad():
        latent = model.encode(tiles)
        reconstruction = model(tiles)
        assert latent.shape == (3, 256)
        assert reconstruction.shape == (3, 1, N_MELS, TILE)
        assert reconstruction.min() > 0 and reconstruction.max() < 1
        torch.testing.assert_close(model(tiles.unsqueeze(1)), reconstruction)
        # First half from the time branch, second from the frequency branch.
        torch.testing.assert_close(latent[:, :128], model.time_encoder(tiles))
        torch.testing.assert_close(latent[:, 128:], model.frequency_encoder(tiles.transpose(1, 2)))

    with pytest.raises(ValueError, match="expected tiles"):
        model.encode(torch.rand(2, N_MELS, 64))
    with pytest.raises(ValueError, match="divisible by 16"):
        TimeFreqAutoencoder(n_mels=120)


def test_split_is_by_track_deterministic_disjoint_and_non_empty(shards):
    first, second = _datamodule(shards), _datamodule(shards)
    assert first.train_track_ids == second.train_track_ids and first.val_track_ids == second.val_track_ids
    train, val = set(first.train_track_ids), set(first.val_track_ids)
    assert train and val and not train & val
    assert train | val == set(shards["manifest"]["track_id"])
    assert len(first.train_dataset) == len(train) * 4
    assert len(first.val_dataset) == len(val) * 4

    # Validation tiles are the fixed tiles of the validation tracks only.
    manifest = shards["manifest"].filter(pl.col("track_id").is_in(sorted(val))).sort("track_id")
    first_val = manifest.row(0, named=True)
    expected = fixed_tiles(np.load(first_val["shard"])[first_val["row"]], n_tiles=4)
    served = as_unit_range(torch.stack([first.val_dataset[i] for i in range(4)]))
    np.testing.assert_array_equal(served.numpy(), expected)

    # Guarantees at the extremes: one validation track, and one training track.
    ids = [f"t{i}" for i in range(10)]
    assert [len(part) for part in split_tracks(ids, val_fraction=0.0, seed=0)] == [9, 1]
    assert [len(part) for part in split_tracks(ids, val_fraction=0.999, seed=0)] == [1, 9]
    assert split_tracks(["only"], val_fraction=0.5, seed=0) == (["only"], [])


def test_training_crops_are_tile_wide_and_reproducible(shards):
    dataset = _datamodule(shards).train_dataset
    same_seed = _datamodule(shards).train_dataset
    other_seed = _datamodule(shards, seed=8).train_dataset
    n = len(dataset)

    crop = dataset[5]
    # The stored pixels themselves: the model scales them (as_unit_range).
    assert crop.shape == (N_MELS, TILE) and crop.dtype == torch.uint8
    # Item 5 is crop 1 of the second training track, at the drawn offset.
    track = shards["manifest"].filter(pl.col("track_id") == sorted(_datamodule(shards).train_track_ids)[1])
    offset = dataset.crop_offset(5)
    source = np.load(track["shard"][0])[track["row"][0], :, offset : offset + TILE]
    np.testing.assert_array_equal(crop.numpy(), source)

    offsets = [dataset.crop_offset(i) for i in range(2 * n)]  # epochs 0 and 1
    assert offsets == [same_seed.crop_offset(i) for i in range(2 * n)]
    assert offsets[:n] != offsets[n:], "each epoch draws new crops"
    assert offsets[:n] != [other_seed.crop_offset(i) for i in range(n)]

    sampler = EpochShuffleSampler(n, seed=7)
    sampler.set_epoch(3)
    assert sorted(sampler) == list(range(3 * n, 4 * n))

    # Worker processes reopen the memmaps and reproduce the in-process batches.
    dataset[0]  # opens a memmap, which must not travel with the pickled dataset
    assert len(pickle.dumps(dataset)) < 10_000
    in_process = list(DataLoader(dataset, batch_size=8, sampler=sampler))
    with_workers = list(DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=2))
    for a, b in zip(in_process, with_workers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fast_dev_run(shards, tmp_path):
    model = TimeFreqAutoencoder(filters=SMALL_FILTERS)
    _cpu_trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=_datamodule(shards))


class _RecordFirstBatch(L.Callback):
    """Keeps the first training batch and its MSE before any optimizer step."""

    def __init__(self) -> None:
        self.batch: torch.Tensor | None = None
        self.initial_mse = math.nan

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.batch is None:
            self.batch = as_unit_range(batch.clone())
            self.initial_mse = _mse(pl_module, self.batch)


def _mse(model: TimeFreqAutoencoder, batch: torch.Tensor) -> float:
    # Train-mode BatchNorm (batch statistics), i.e. the loss training minimises.
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(batch), batch.unsqueeze(1)).item()


@pytest.mark.filterwarnings("ignore:You requested to overfit:UserWarning")
def test_overfitting_one_batch_lowers_the_mse(shards, tmp_path):
    torch.manual_seed(0)
    # 3e-3 rather than the default 1e-3 so that 30 steps leave a wide margin
    # (about 0.3x the initial MSE here, versus about 0.7x at 1e-3).
    model = TimeFreqAutoencoder(filters=SMALL_FILTERS, learning_rate=3e-3)
    recorder = _RecordFirstBatch()
    trainer = _cpu_trainer(
        tmp_path, overfit_batches=1, max_steps=30, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder]
    )
    trainer.fit(model, datamodule=_datamodule(shards))
    final_mse = _mse(model.train(), recorder.batch)
    assert final_mse < 0.7 * recorder.initial_mse, (recorder.initial_mse, final_mse)


def _small_config(shards: dict, tmp_path: Path, **changes) -> Path:
    """A YAML config for a two-batch, one-epoch run of a small model on the shards."""
    config = {
        "manifest": str(shards["manifest_path"]),
        "output_dir": str(tmp_path / "run"),
        "max_epochs": 1,
        "batch_size": 8,
        "crops_per_track": 2,
        "val_fraction": 0.25,
        "accelerator": "cpu",
        "devices": 1,
        "limit_train_batches": 2,
        "filters": list(SMALL_FILTERS),
        **changes,
    }
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def _run_training(config_path: Path, result_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sonufy_model.training", "--config", str(config_path)]
    command += ["--result-json", str(result_path), *overrides]
    # Run from the repository root so that ``-m`` finds the package.
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_training_entry_point_checkpoints_and_resumes(shards, tmp_path):
    config_path = _small_config(shards, tmp_path)

    first = _run_training(config_path, tmp_path / "first.json")
    assert first.returncode == 0, first.stderr
    result = json.loads((tmp_path / "first.json").read_text())
    assert result["epochs"] == 1 and result["resumed_from"] is None
    # A YAML config starts from the default preset: the invariance model, selected on val_loss.
    assert result["monitor"] == "val_loss" and math.isfinite(result["val_score"])
    assert result["n_train_tracks"] + result["n_val_tracks"] == 12 and result["n_val_tracks"] >= 1
    assert Path(result["checkpoint_path"]).is_file()
    assert Path(result["last_checkpoint_path"]).name == "last.ckpt"

    second = _run_training(config_path, tmp_path / "second.json", "--max-epochs", "2")
    assert second.returncode == 0, second.stderr
    resumed = json.loads((tmp_path / "second.json").read_text())
    assert resumed["resumed_from"] == result["last_checkpoint_path"]
    assert resumed["epochs"] == 2 and math.isfinite(resumed["val_score"])
    # The resumed run logged (so trained) only the new epoch.
    resumed_log = pl.read_csv(tmp_path / "run" / "logs" / "version_1" / "metrics.csv")
    assert resumed_log["epoch"].unique().to_list() == [1]

    encoder = load_encoder(resumed["checkpoint_path"])
    assert encoder.encode_tiles == training.TrainConfig.encode_tiles == 8  # the version's tile count travels with it
    assert not encoder.training
    embeddings = encode_spectrograms(encoder, shards["spectrograms"][:2], n_tiles=4)
    assert embeddings.shape == (2, 256) and np.isfinite(embeddings).all()


def test_uint8_batches_train_as_their_unit_range_floats(shards):
    torch.manual_seed(0)
    model = TimeFreqAutoencoder(filters=SMALL_FILTERS).eval()
    model.log = lambda *args, **kwargs: None
    pixels = torch.from_numpy(shards["spectrograms"][:4, :, :TILE].copy())
    assert pixels.dtype == torch.uint8
    scaled = as_unit_range(pixels)
    assert scaled.dtype == torch.float32 and float(scaled.max()) <= 1.0
    torch.testing.assert_close(scaled, pixels.float() / 255)
    with torch.no_grad():
        torch.testing.assert_close(model._shared_step(pixels, "val"), model._shared_step(scaled, "val"))
    assert as_unit_range(scaled) is scaled  # floats pass as they are


def test_the_decoder_runs_channels_last_with_the_same_numbers():
    torch.manual_seed(0)
    model = TimeFreqAutoencoder(filters=SMALL_FILTERS).eval()
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in model.decoder.parameters() if p.ndim == 4)
    tiles = torch.rand(2, N_MELS, TILE)
    with torch.no_grad():
        fast = model(tiles)
        # The same weights in the plain layout: the layout is speed, never the result.
        model.decoder.to(memory_format=torch.contiguous_format)
        model.decoder_memory_format = torch.contiguous_format
        plain = model(tiles)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_encoder_loads_without_lightning_and_encodes_as_the_training_module(shards, tmp_path):
    torch.manual_seed(3)
    module = TimeFreqAutoencoder(filters=(4, 8, 16, 32), time_pooling="mean", encode_tiles=4,
                                 objective="invariance")
    for parameter in module.parameters():  # BatchNorm running statistics away from their defaults too
        parameter.data.normal_()
    for buffer_name, buffer in module.named_buffers():
        if buffer_name.endswith(("running_mean", "running_var")):
            buffer.data.uniform_(0.5, 1.5)
    checkpoint = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, checkpoint)
    encoder = load_encoder(checkpoint)
    assert not encoder.training and encoder.encode_tiles == 4 and encoder.tile_frames == module.tile_frames
    clips = shards["spectrograms"][:3]
    np.testing.assert_array_equal(encode_spectrograms(encoder, clips), encode_spectrograms(module.eval(), clips))
    # Loading and encoding in a fresh process imports no Lightning (2.3 s of a nightly).
    probe = (f"import sys, numpy as np; from sonufy_model.encoding import load_encoder, encode_spectrograms; "
             f"e = load_encoder({str(checkpoint)!r}); "
             f"encode_spectrograms(e, np.zeros((1, 128, 512), np.uint8)); "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # A file that is not a version's checkpoint is refused by the strict load.
    torch.save({"state_dict": {}, "hyper_parameters": dict(module.hparams)}, tmp_path / "empty.ckpt")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_encoder(tmp_path / "empty.ckpt")


def test_a_compiled_training_checkpoints_a_plain_loadable_model(shards, tmp_path):
    config_path = _small_config(shards, tmp_path, preset="reference", compile=True)
    run = _run_training(config_path, tmp_path / "result.json")
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["epochs"] == 1 and math.isfinite(result["val_score"])
    # The checkpoint holds the plain module's weights (no torch.compile prefix).
    state = torch.load(result["checkpoint_path"], map_location="cpu", weights_only=False)["state_dict"]
    assert not [key for key in state if "_orig_mod" in key]
    encoder = load_encoder(result["checkpoint_path"])
    embeddings = encode_spectrograms(encoder, shards["spectrograms"][:2], n_tiles=4)
    assert embeddings.shape == (2, 256) and np.isfinite(embeddings).all()


def test_encode_spectrograms_is_per_track_and_deterministic(shards):
    torch.manual_seed(0)
    model = TimeFreqAutoencoder(filters=SMALL_FILTERS).eval()
    spectrograms = shards["spectrograms"][:5]

    embeddings = encode_spectrograms(model, spectrograms, n_tiles=32, batch_size=64)
    assert embeddings.shape == (5, 256) and embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    # Larger passes (the default, 512 tiles) only change float summation order.
    np.testing.assert_allclose(embeddings, encode_spectrograms(model, spectrograms), rtol=0, atol=1e-5)
    alone = encode_spectrograms(model, spectrograms[3:4])
    np.testing.assert_allclose(alone[0], embeddings[3], rtol=0, atol=1e-5)
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(fixed_tiles(spectrograms[2], n_tiles=32))).mean(0).numpy()
    np.testing.assert_allclose(embeddings[2], expected, rtol=0, atol=1e-5)


def test_bad_manifest_exits_non_zero_naming_the_path(shards, tmp_path, capsys):
    missing_manifest = tmp_path / "nowhere" / "manifest.parquet"
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump({"manifest": str(missing_manifest), "output_dir": str(tmp_path / "run")}))
    process = _run_training(config_path, tmp_path / "result.json")
    assert process.returncode != 0
    assert str(missing_manifest) in process.stderr
    assert not (tmp_path / "result.json").exists()

    missing_shard = str(tmp_path / "gone.npy")
    broken = shards["manifest"].with_columns(pl.lit(missing_shard).alias("shard"))
    broken.write_parquet(tmp_path / "broken.parquet")
    assert training.main(["--config", str(config_path), "--manifest", str(tmp_path / "broken.parquet")]) != 0
    assert missing_shard in capsys.readouterr().err

    pl.DataFrame(schema={"track_id": pl.String, "shard": pl.String, "row": pl.Int64}).write_parquet(
        tmp_path / "empty.parquet"
    )
    assert training.main(["--config", str(config_path), "--manifest", str(tmp_path / "empty.parquet")]) != 0
    assert "empty.parquet" in capsys.readouterr().err


# --- Contrastive variant (contrastive_weight > 0): crop pairs + NT-Xent -------------------------


def _pair_datamodule(shards: dict, **kwargs) -> SpectrogramDataModule:
    return _datamodule(shards, pairs=True, **kwargs)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`:UserWarning")
def test_contrastive_weight_zero_is_exactly_the_reference():
    n_params = sum(p.numel() for p in TimeFreqAutoencoder().parameters())
    assert n_params == 7_924_993
    # The contrastive term adds no parameters (it works on the latents themselves).
    assert sum(p.numel() for p in TimeFreqAutoencoder(contrastive_weight=0.0).parameters()) == n_params
    assert sum(p.numel() for p in TimeFreqAutoencoder(contrastive_weight=1.0).parameters()) == n_params

    torch.manual_seed(0)
    reference = TimeFreqAutoencoder(filters=SMALL_FILTERS)
    zero = TimeFreqAutoencoder(filters=SMALL_FILTERS, contrastive_weight=0.0)
    zero.load_state_dict(reference.state_dict())
    tiles = torch.rand(6, N_MELS, TILE)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(reference(tiles), tiles.unsqueeze(1))
        torch.testing.assert_close(reference._shared_step(tiles, "train"), expected, rtol=0, atol=0)
        torch.testing.assert_close(zero._shared_step(tiles, "train"), expected, rtol=0, atol=0)
        # With weight > 0, single-tile batches (validation) still score the plain MSE.
        weighted = TimeFreqAutoencoder(filters=SMALL_FILTERS, contrastive_weight=1.0)
        weighted.load_state_dict(reference.state_dict())
        torch.testing.assert_close(weighted._shared_step(tiles, "val"), expected, rtol=0, atol=0)
        # A pair batch adds weight x NT-Xent to the MSE of both crops.
        pairs = tiles.view(3, 2, N_MELS, TILE)
        both = torch.cat([pairs[:, 0], pairs[:, 1]])
        mse = torch.nn.functional.mse_loss(reference(both), both.unsqueeze(1))
        torch.testing.assert_close(zero._shared_step(pairs, "train"), mse)
        latents = reference.encode(both)
        contrastive = nt_xent(latents[:3], latents[3:], 0.1)
        torch.testing.assert_close(weighted._shared_step(pairs, "train"), mse + contrastive)

    with pytest.raises(ValueError, match="contrastive_weight"):
        TimeFreqAutoencoder(contrastive_weight=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        TimeFreqAutoencoder(temperature=0.0)


def test_nt_xent_rewards_matching_views():
    torch.manual_seed(0)
    first = torch.randn(8, 16)
    matched = nt_xent(first, first + 0.01 * torch.randn(8, 16), temperature=0.1)
    shuffled = nt_xent(first, first[torch.randperm(8)], temperature=0.1)
    uninformative = nt_xent(torch.ones(8, 16), torch.ones(8, 16), temperature=0.1)
    assert matched < 0.01 < shuffled
    torch.testing.assert_close(uninformative, torch.tensor(math.log(15.0)))


def test_pair_dataset_returns_two_different_crops_of_one_track(shards):
    datamodule = _pair_datamodule(shards)
    dataset = datamodule.train_dataset
    assert isinstance(dataset, RandomCropPairDataset)
    assert len(dataset) == len(datamodule.train_track_ids) * 4
    assert isinstance(datamodule.val_dataset[0], torch.Tensor) and datamodule.val_dataset[0].shape == (N_MELS, TILE)

    pair = dataset[5]  # crop pair 1 of the second training track
    assert pair.shape == (2, N_MELS, TILE) and pair.dtype == torch.uint8
    track = shards["manifest"].filter(pl.col("track_id") == datamodule.train_track_ids[1])
    spectrogram = np.load(track["shard"][0])[track["row"][0]]
    first, second = dataset.crop_offsets(5)
    assert first != second
    np.testing.assert_array_equal(pair[0].numpy(), spectrogram[:, first : first + TILE])
    np.testing.assert_array_equal(pair[1].numpy(), spectrogram[:, second : second + TILE])
    assert not torch.equal(pair[0], pair[1])

    n = len(dataset)
    offsets = [dataset.crop_offsets(i) for i in range(2 * n)]
    assert all(a != b for a, b in offsets)
    assert offsets == [_pair_datamodule(shards).train_dataset.crop_offsets(i) for i in range(2 * n)]
    assert offsets[:n] != offsets[n:], "each epoch draws new pairs"
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.shape == (8, 2, N_MELS, TILE)


class _RecordFirstPairBatch(L.Callback):
    """Keeps the first training pair batch and its NT-Xent before any optimizer step."""

    def __init__(self) -> None:
        self.batch: torch.Tensor | None = None
        self.initial = math.nan

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.batch is None:
            self.batch = as_unit_range(batch.clone())
            self.initial = _contrastive(pl_module, self.batch)


def _contrastive(model: TimeFreqAutoencoder, pairs: torch.Tensor) -> float:
    with torch.no_grad():
        n = pairs.shape[0]
        latents = model.encode(torch.cat([pairs[:, 0], pairs[:, 1]]))
        return nt_xent(latents[:n], latents[n:], model.temperature).item()


def test_contrastive_training_on_pairs_lowers_the_contrastive_loss(shards, tmp_path):
    torch.manual_seed(0)
    model = TimeFreqAutoencoder(filters=SMALL_FILTERS, learning_rate=3e-3, contrastive_weight=1.0)
    recorder = _RecordFirstPairBatch()
    trainer = _cpu_trainer(tmp_path, max_steps=20, num_sanity_val_steps=0, limit_val_batches=1, callbacks=[recorder])
    trainer.fit(model, datamodule=_pair_datamodule(shards))
    assert recorder.batch is not None and recorder.batch.shape[1] == 2
    final = _contrastive(model.train(), recorder.batch)
    assert final < 0.8 * recorder.initial, (recorder.initial, final)
    metrics = trainer.callback_metrics
    for name in ("train_mse_epoch", "train_contrastive_epoch", "train_loss_epoch", "val_mse", "val_loss"):
        assert name in metrics and math.isfinite(float(metrics[name])), name
    # Validation batches are single tiles: no contrastive term, loss = reconstruction MSE.
    assert float(metrics["val_contrastive"]) == 0.0
    assert float(metrics["val_loss"]) == pytest.approx(float(metrics["val_mse"]))


def test_train_config_passes_the_contrastive_settings_through(shards, tmp_path):
    config = training.TrainConfig(
        manifest=str(shards["manifest_path"]),
        output_dir=str(tmp_path / "run"),
        max_epochs=1,
        batch_size=4,
        crops_per_track=1,
        val_fraction=0.25,
        accelerator="cpu",
        devices=1,
        limit_train_batches=1,
        filters=SMALL_FILTERS,
        contrastive_weight=0.5,
        temperature=0.2,
    )
    result = training.train(config)
    assert math.isfinite(result.val_mse) and Path(result.checkpoint_path).is_file()
    hparams = torch.load(result.checkpoint_path, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["contrastive_weight"] == 0.5 and hparams["temperature"] == 0.2
    encoder = load_encoder(result.checkpoint_path)
    assert encode_spectrograms(encoder, shards["spectrograms"][:2], n_tiles=4).shape == (2, 256)


# --- Time pooling variant ------------------------------------------------------------------------


def test_mean_time_pooling_keeps_the_latent_layout_with_a_smaller_time_branch():
    reference = TimeFreqAutoencoder(filters=SMALL_FILTERS)
    pooled = TimeFreqAutoencoder(filters=SMALL_FILTERS, time_pooling="mean")
    tiles = torch.rand(3, 128, 128)
    assert pooled.encode(tiles).shape == reference.encode(tiles).shape == (3, 256)
    size = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert size(pooled.time_encoder) < size(reference.time_encoder)
    assert size(pooled.frequency_encoder) == size(reference.frequency_encoder)


def test_unknown_time_pooling_is_named_in_the_error():
    with pytest.raises(ValueError, match="'max'"):
        TimeFreqAutoencoder(time_pooling="max")


def test_a_version_encodes_with_its_own_tile_count(shards):
    torch.manual_seed(0)
    spectrograms = shards["spectrograms"][:3]
    eight = TimeFreqAutoencoder(filters=SMALL_FILTERS, encode_tiles=8).eval()
    with torch.no_grad():
        expected = eight.encode(torch.from_numpy(fixed_tiles(spectrograms[1], n_tiles=8))).mean(0).numpy()
    np.testing.assert_allclose(encode_spectrograms(eight, spectrograms)[1], expected, rtol=0, atol=1e-5)
    # Checkpoints from before the setting existed keep the seed's 32.
    assert TimeFreqAutoencoder(filters=SMALL_FILTERS).encode_tiles == 32
    with pytest.raises(ValueError, match="encode_tiles"):
        TimeFreqAutoencoder(encode_tiles=0)
