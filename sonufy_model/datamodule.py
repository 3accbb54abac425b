"""Spectrogram shards -> 128-frame tiles for training and validation.

Shards are ``.npy`` uint8 arrays ``(N, n_mels, n_frames)``; a manifest maps
``track_id`` to ``(shard, row)``. Shards are memory-mapped, so a dataset only
ever reads the tiles it returns, and the maps are opened lazily in whichever
process reads them (DataLoader workers included) rather than pickled.

Design choices:

* The train/validation split is by **track**, decided by a stable hash of
  ``f"{seed}:{track_id}"``, so tiles of one track never leak across the split
  and adding tracks to the manifest does not reshuffle existing ones.
* Training crops are a pure function of ``(seed, epoch, item)``: any number
  of workers, devices or restarts sees the same crops. The epoch reaches the
  dataset through the sampler (see :class:`EpochShuffleSampler`), which
  Lightning keeps, wrapped and sharded, under DDP.
* With ``pairs=True`` (the contrastive variant of the model) a training item
  is two different random crops of one track, ``(2, n_mels, tile_frames)``,
  again a pure function of ``(seed, epoch, item)``.
* Validation (and test) tiles are fixed, evenly spaced tiles
  (:func:`sonufy_model.tiles.fixed_tile_offsets`), as in batch encoding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sonufy_model.tiles import fixed_tile_offsets

MANIFEST_COLUMNS = ("track_id", "shard", "row")


class ManifestError(ValueError):
    """The manifest or a shard it names is missing or unusable."""


def load_manifest(manifest: str | Path | pl.DataFrame) -> pl.DataFrame:
    """Read and validate a manifest: a parquet path or a DataFrame.

    Checks that the manifest is non-empty, has ``track_id``, ``shard`` and
    ``row`` columns, and that every shard exists, is a uint8
    ``(N, n_mels, n_frames)`` array with one common shape per track, and holds
    the rows the manifest points at. Only the ``.npy`` headers are read.

    Raises:
        ManifestError: naming the offending path.
    """
    if isinstance(manifest, pl.DataFrame):
        frame, source = manifest, "manifest DataFrame"
    else:
        path = Path(manifest)
        if not path.is_file():
            raise ManifestError(f"manifest not found: {path}")
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # polars raises several error types for bad files
            raise ManifestError(f"cannot read manifest {path} as parquet: {exc}") from exc
        source = f"manifest {path}"
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise ManifestError(f"{source} lacks column(s) {missing}; expected {list(MANIFEST_COLUMNS)}")
    frame = frame.select(
        pl.col("track_id").cast(pl.String), pl.col("shard").cast(pl.String), pl.col("row").cast(pl.Int64)
    )
    if frame.is_empty():
        raise ManifestError(f"{source} lists no tracks")
    if frame.null_count().sum_horizontal().item() > 0:
        raise ManifestError(f"{source} has null track_id, shard or row values")
    if frame["row"].min() < 0:
        raise ManifestError(f"{source} has negative rows")

    track_shape: tuple[int, int] | None = None
    for shard, max_row in frame.group_by("shard").agg(pl.col("row").max()).sort("shard").iter_rows():
        if not Path(shard).is_file():
            raise ManifestError(f"shard listed in {source} not found: {shard}")
        try:
            array = np.load(shard, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ManifestError(f"cannot read shard {shard} as .npy: {exc}") from exc
        if array.dtype != np.uint8 or array.ndim != 3:
            raise ManifestError(f"shard {shard} is {array.dtype} {array.shape}, expected uint8 (N, n_mels, n_frames)")
        if track_shape is not None and array.shape[1:] != track_shape:
            raise ManifestError(f"shard {shard} holds {array.shape[1:]} spectrograms, others hold {track_shape}")
        track_shape = array.shape[1:]
        if max_row >= array.shape[0]:
            raise ManifestError(f"{source} points at row {max_row} of shard {shard}, which has {array.shape[0]} rows")
    return frame


def split_tracks(
    track_ids: Sequence[str], val_fraction: float, seed: int, min_val: int = 1
) -> tuple[list[str], list[str]]:
    """Split unique track ids into sorted ``(train, validation)`` lists.

    A track is in validation iff its hash score is below ``val_fraction``, so
    the split of a track never depends on the other tracks, except for two
    guarantees: with at least two tracks the validation split gets at least
    ``min_val`` tracks (the lowest scores) and the training split keeps at
    least one (the highest score).
    """
    scored = sorted((_split_score(track_id, seed), track_id) for track_id in set(track_ids))
    n_val = sum(score < val_fraction for score, _ in scored)
    n_val = min(max(n_val, min_val), len(scored) - 1) if len(scored) >= 2 else 0
    validation = sorted(track_id for _, track_id in scored[:n_val])
    train = sorted(track_id for _, track_id in scored[n_val:])
    return train, validation


def _split_score(track_id: str, seed: int) -> float:
    """Uniform score in [0, 1) from blake2b, stable across processes and runs."""
    digest = hashlib.blake2b(f"{seed}:{track_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _ShardTileDataset(Dataset[torch.Tensor]):
    """Base for datasets reading ``(n_mels, tile_frames)`` tiles out of memmapped shards.

    Memmaps are cached per process: the cache is dropped when pickled (to
    spawn-started workers) and reopened after a fork, so each worker maps the
    shards itself instead of inheriting or copying them.
    """

    def __init__(self, shards: Sequence[str], rows: np.ndarray, tile_frames: int) -> None:
        self.shards = list(shards)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.tile_frames = tile_frames
        self._memmaps: dict[str, np.ndarray] = {}
        self._memmaps_pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_memmaps"] = {}
        return state

    def _memmap(self, shard: str) -> np.ndarray:
        if self._memmaps_pid != os.getpid():
            self._memmaps = {}
            self._memmaps_pid = os.getpid()
        if shard not in self._memmaps:
            self._memmaps[shard] = np.load(shard, mmap_mode="r")
        return self._memmaps[shard]

    def _read_tile(self, track: int, offset: int) -> torch.Tensor:
        """The stored uint8 pixels of ``track``'s tile starting at frame ``offset``.

        Batches travel as uint8, a quarter of float32's bytes through the
        collation and the copy to a GPU; the model scales them to [0, 1]
        (``model.as_unit_range``) on its device, a whole batch at once.
        """
        spectrogram = self._memmap(self.shards[track])[self.rows[track]]
        return torch.from_numpy(np.ascontiguousarray(spectrogram[:, offset : offset + self.tile_frames]))


class RandomCropDataset(_ShardTileDataset):
    """``crops_per_track`` random crops per track per epoch.

    Item ``i`` of epoch ``e`` is crop ``i % crops_per_track`` of track
    ``i // crops_per_track``; its offset is drawn from an RNG seeded by
    ``(seed, e, i)``. Indices past ``len(self)`` carry the epoch:
    ``index = e * len(self) + i`` (this is what :class:`EpochShuffleSampler`
    yields), so plain indices ``0 .. len - 1`` are epoch 0.
    """

    def __init__(
        self,
        shards: Sequence[str],
        rows: np.ndarray,
        n_frames: int,
        crops_per_track: int,
        tile_frames: int,
        seed: int,
    ) -> None:
        super().__init__(shards, rows, tile_frames)
        if n_frames < tile_frames:
            raise ValueError(f"spectrograms have {n_frames} frames, fewer than a {tile_frames}-frame tile")
        self.max_offset = n_frames - tile_frames
        self.crops_per_track = crops_per_track
        self.seed = seed

    def __len__(self) -> int:
        return len(self.shards) * self.crops_per_track

    def crop_offset(self, index: int) -> int:
        """Start frame of the crop for (epoch-encoded) ``index``."""
        epoch, item = divmod(int(index), len(self))
        rng = np.random.default_rng((self.seed, epoch, item))
        return int(rng.integers(0, self.max_offset + 1))

    def __getitem__(self, index: int) -> torch.Tensor:
        item = int(index) % len(self)
        return self._read_tile(item // self.crops_per_track, self.crop_offset(index))


class RandomCropPairDataset(RandomCropDataset):
    """Like :class:`RandomCropDataset`, but item ``i`` is a pair of crops of one track.

    Returns ``(2, n_mels, tile_frames)``: two crops of track
    ``i // crops_per_track`` at different offsets (when the track is longer
    than a tile), drawn from an RNG seeded by ``(seed, epoch, i)`` — the
    positives of the contrastive objective.
    """

    def crop_offsets(self, index: int) -> tuple[int, int]:
        """Start frames of the two crops for (epoch-encoded) ``index``; distinct when possible."""
        epoch, item = divmod(int(index), len(self))
        rng = np.random.default_rng((self.seed, epoch, item))
        first = int(rng.integers(0, self.max_offset + 1))
        if self.max_offset == 0:
            return first, first
        second = int(rng.integers(0, self.max_offset))  # one of the other max_offset offsets
        return first, second + (second >= first)

    def __getitem__(self, index: int) -> torch.Tensor:
        track = (int(index) % len(self)) // self.crops_per_track
        first, second = self.crop_offsets(index)
        return torch.stack([self._read_tile(track, first), self._read_tile(track, second)])


class TrackPairDataset(_ShardTileDataset):
    """Pairs of crops of one *track*, for the invariance objective.

    A track may span several rows (the excerpts of a whole song); item ``i``
    is track ``i // crops_per_track`` and returns ``(2, n_mels,
    crop_frames)``: each crop from a random row of the track at a random
    offset, the two at different places when the track allows it. Crops are
    wider than a tile so that the model's augmentation can stretch them. The
    draws are a pure function of ``(seed, epoch, i)``, as in
    :class:`RandomCropDataset`.

    Args:
        groups: per track, the positions in ``shards``/``rows`` of its rows.
    """

    def __init__(
        self,
        shards: Sequence[str],
        rows: np.ndarray,
        groups: Sequence[np.ndarray],
        n_frames: int,
        crops_per_track: int,
        crop_frames: int,
        seed: int,
    ) -> None:
        crop_frames = min(crop_frames, n_frames)
        super().__init__(shards, rows, crop_frames)
        self.groups = [np.asarray(group, dtype=np.int64) for group in groups]
        self.max_offset = n_frames - crop_frames
        self.crops_per_track = crops_per_track
        self.seed = seed

    def __len__(self) -> int:
        return len(self.groups) * self.crops_per_track

    def crop_places(self, index: int) -> list[tuple[int, int]]:
        """(row position, start frame) of both crops for (epoch-encoded) ``index``."""
        epoch, item = divmod(int(index), len(self))
        group = self.groups[item // self.crops_per_track]
        rng = np.random.default_rng((self.seed, epoch, item))
        places = [(int(rng.choice(group)), int(rng.integers(0, self.max_offset + 1))) for _ in range(2)]
        if places[0] == places[1] and (self.max_offset > 0 or len(group) > 1):
            # Same row and offset: move the second crop to another offset of its row.
            row, offset = places[1]
            if self.max_offset > 0:
                other = int(rng.integers(0, self.max_offset))
                places[1] = (row, other + (other >= offset))
            else:
                places[1] = (int(rng.choice(group[group != row])), offset)
        return places

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.stack([self._read_tile(row, offset) for row, offset in self.crop_places(index)])


class FixedPairDataset(_ShardTileDataset):
    """One fixed pair per track (validation of the invariance objective).

    ``(2, n_mels, tile_frames)``: the first tile of the track's first row and
    the last tile of its last row, as far apart as the track allows, with no
    augmentation, so the validation loss is comparable across epochs.
    """

    def __init__(self, shards: Sequence[str], rows: np.ndarray, groups: Sequence[np.ndarray], n_frames: int,
                 tile_frames: int) -> None:
        super().__init__(shards, rows, tile_frames)
        self.groups = [np.asarray(group, dtype=np.int64) for group in groups]
        self.last_offset = n_frames - tile_frames

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> torch.Tensor:
        group = self.groups[int(index)]
        return torch.stack([self._read_tile(int(group[0]), 0), self._read_tile(int(group[-1]), self.last_offset)])


def track_groups(track_ids: Sequence[str]) -> list[np.ndarray]:
    """Positions of each track's rows, tracks in first-seen order (rows of one track adjacent or not)."""
    positions: dict[str, list[int]] = {}
    for position, track_id in enumerate(track_ids):
        positions.setdefault(track_id, []).append(position)
    return [np.asarray(group) for group in positions.values()]


class FixedTileDataset(_ShardTileDataset):
    """``tiles_per_track`` fixed, evenly spaced tiles per track (validation/test)."""

    def __init__(
        self, shards: Sequence[str], rows: np.ndarray, n_frames: int, tiles_per_track: int, tile_frames: int
    ) -> None:
        super().__init__(shards, rows, tile_frames)
        self.offsets = fixed_tile_offsets(n_frames, tiles_per_track, tile_frames)

    def __len__(self) -> int:
        return len(self.shards) * len(self.offsets)

    def __getitem__(self, index: int) -> torch.Tensor:
        track, tile = divmod(int(index), len(self.offsets))
        return self._read_tile(track, int(self.offsets[tile]))


class EpochShuffleSampler(Sampler[int]):
    """Shuffles a :class:`RandomCropDataset` per epoch, passing the epoch in the indices.

    Lightning calls :meth:`set_epoch` before every training epoch (under DDP
    through its ``DistributedSamplerWrapper``, which shards this sampler's
    output across ranks). The yielded indices are
    ``epoch * len(dataset) + permuted item``, so the epoch travels with each
    index into worker processes, persistent or not.
    """

    def __init__(self, dataset_length: int, seed: int) -> None:
        self.dataset_length = dataset_length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.dataset_length

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.dataset_length)
        return iter((self.epoch * self.dataset_length + order).tolist())


class TrackRoundSampler(EpochShuffleSampler):
    """Like :class:`EpochShuffleSampler`, for datasets of ``crops_per_track`` items per track.

    The epoch is ``crops_per_track`` rounds, each a fresh permutation of the
    tracks with one item of each: a batch holds a track at most once (but at
    a round's boundary), so no item's in-batch negatives include its own
    track, which a contrastive loss would push apart.
    """

    def __init__(self, n_tracks: int, crops_per_track: int, seed: int) -> None:
        super().__init__(n_tracks * crops_per_track, seed)
        self.n_tracks = n_tracks
        self.crops_per_track = crops_per_track

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        rounds = [rng.permutation(self.n_tracks) * self.crops_per_track + r for r in range(self.crops_per_track)]
        return iter((self.epoch * self.dataset_length + np.concatenate(rounds)).tolist())


class SpectrogramDataModule(L.LightningDataModule):
    """Train/validation tiles from a spectrogram manifest, split by track.

    Args:
        manifest: parquet path or DataFrame with ``track_id, shard, row``.
        batch_size: tiles per batch *per device* (Lightning does not divide
            it across DDP ranks; ``sonufy_model.training`` does).
        val_fraction: target share of tracks held out for validation.
        crops_per_track: random training crops per training track per epoch.
        val_tiles_per_track: fixed tiles per validation track.
        tile_frames: tile width in frames.
        num_workers: DataLoader worker processes.
        seed: split hash salt and crop/shuffle RNG seed.
        pairs: training items are pairs of crops of one track,
            ``(2, n_mels, tile_frames)`` (:class:`RandomCropPairDataset`),
            for the contrastive objective; ``crops_per_track`` then counts
            pairs. Validation tiles stay single.
        invariance: the invariance objective's data: training items are
            pairs of ``crop_frames``-wide crops of one track, from any of its
            rows (:class:`TrackPairDataset`), in rounds that keep a track
            once per batch (:class:`TrackRoundSampler`); validation items
            are one fixed pair per track (:class:`FixedPairDataset`).
            ``crops_per_track`` counts pairs.
        crop_frames: width of the invariance objective's training crops.

    Validation and test dataloaders serve the same tiles: the held-out tracks.
    """

    def __init__(
        self,
        manifest: str | Path | pl.DataFrame,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        crops_per_track: int = 8,
        val_tiles_per_track: int = 4,
        tile_frames: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        pairs: bool = False,
        invariance: bool = False,
        crop_frames: int = 128,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1 or crops_per_track < 1 or val_tiles_per_track < 1:
            raise ValueError("batch_size, crops_per_track and val_tiles_per_track must be positive")
        self.manifest = manifest
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.crops_per_track = crops_per_track
        self.val_tiles_per_track = val_tiles_per_track
        self.tile_frames = tile_frames
        self.num_workers = num_workers
        self.seed = seed
        self.pairs = pairs
        self.invariance = invariance
        self.crop_frames = crop_frames
        self.spectrogram_shape: tuple[int, int] | None = None  # (n_mels, n_frames), known after setup
        self.train_track_ids: list[str] = []
        self.val_track_ids: list[str] = []
        self.train_dataset: RandomCropDataset | TrackPairDataset | None = None
        self.val_dataset: FixedTileDataset | FixedPairDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest, split tracks and build both datasets (once)."""
        if self.train_dataset is not None:
            return
        frame = load_manifest(self.manifest)
        # A long file may have several excerpts (rows of one track_id): each is
        # a training example, and the split by track keeps them on one side.
        n_mels, n_frames = np.load(frame["shard"][0], mmap_mode="r").shape[1:]
        self.spectrogram_shape = (n_mels, n_frames)
        self.train_track_ids, self.val_track_ids = split_tracks(
            # The invariance objective's validation loss tells held-out tracks
            # apart: it needs two of them at least.
            frame["track_id"].to_list(), self.val_fraction, self.seed, min_val=2 if self.invariance else 1
        )
        train = frame.filter(pl.col("track_id").is_in(self.train_track_ids)).sort("track_id", "shard", "row")
        val = frame.filter(pl.col("track_id").is_in(self.val_track_ids)).sort("track_id", "shard", "row")
        if self.invariance:
            train_ids, val_ids = train["track_id"].to_list(), val["track_id"].to_list()
            self.train_dataset = TrackPairDataset(
                train["shard"].to_list(), train["row"].to_numpy(), track_groups(train_ids), n_frames=n_frames,
                crops_per_track=self.crops_per_track, crop_frames=self.crop_frames, seed=self.seed,
            )
            self.val_dataset = FixedPairDataset(
                val["shard"].to_list(), val["row"].to_numpy(), track_groups(val_ids), n_frames=n_frames,
                tile_frames=self.tile_frames,
            )
            return
        train_class = RandomCropPairDataset if self.pairs else RandomCropDataset
        self.train_dataset = train_class(
            train["shard"].to_list(),
            train["row"].to_numpy(),
            n_frames=n_frames,
            crops_per_track=self.crops_per_track,
            tile_frames=self.tile_frames,
            seed=self.seed,
        )
        self.val_dataset = FixedTileDataset(
            val["shard"].to_list(),
            val["row"].to_numpy(),
            n_frames=n_frames,
            tiles_per_track=self.val_tiles_per_track,
            tile_frames=self.tile_frames,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_dataset)
        if isinstance(dataset, TrackPairDataset):
            sampler = TrackRoundSampler(len(dataset.groups), dataset.crops_per_track, self.seed)
        else:
            sampler = EpochShuffleSampler(len(dataset), self.seed)
        return self._loader(dataset, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_dataset))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_dataset))

    def _loader(self, dataset: Dataset, sampler: Sampler[int] | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    @staticmethod
    def _require(dataset: Dataset | None) -> Dataset:
        if dataset is None:
            raise RuntimeError("call setup() before requesting dataloaders")
        return dataset
