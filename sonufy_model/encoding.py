"""Batch inference: spectrograms -> one embedding per track.

A track's embedding is the mean of its encoder outputs over the fixed,
evenly spaced tiles of :func:`sonufy_model.tiles.fixed_tiles`, so it depends
only on the audio: not on which other tracks share the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from sonufy_model.fusion import Fusion
from sonufy_model.spectrograms import read_spectrograms
from sonufy_model.standardise import Standardiser
from sonufy_model.store import LATENT_DIM
from sonufy_model.texture import block_level_features
from sonufy_model.tiles import fixed_tiles

if TYPE_CHECKING:  # torch and Lightning load where a model is, not where this module is imported
    import torch

    from sonufy_model.encoder_net import TileEncoder
    from sonufy_model.model import TimeFreqAutoencoder

# Tracks the latent standardisation is fitted on: enough for 256 means and
# standard deviations, few enough to take seconds.
STANDARDISER_SAMPLE = 2000


def load_encoder(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> TileEncoder:
    """The encoder of a trained version, on ``device``, in eval mode
    (BatchNorm uses running statistics): torch alone, without Lightning
    (:mod:`sonufy_model.encoder_net`)."""
    from sonufy_model.encoder_net import TileEncoder

    return TileEncoder.from_checkpoint(checkpoint_path, device)


def encode_spectrograms(
    model: TileEncoder | TimeFreqAutoencoder,
    spectrograms_uint8: np.ndarray,
    n_tiles: int | None = None,
    batch_size: int = 512,
) -> np.ndarray:
    """Embed each track as the mean of its fixed tiles' latents.

    Args:
        model: the autoencoder; it runs in eval mode on its own device (its
            previous train/eval mode is restored afterwards).
        spectrograms_uint8: ``(N, n_mels, n_frames)`` uint8 spectrograms; a
            memmap works and is read one chunk of tracks at a time.
        n_tiles: fixed tiles per track; default: the model version's own
            (``model.encode_tiles``).
        batch_size: tiles per forward pass, rounded down to whole tracks
            (at least one track). Tiles of several tracks share a pass: on 2
            CPU cores 512 tiles a pass run ~4x faster than 64.

    Returns:
        float32 array ``(N, latent_dim)``: time half then frequency half.
    """
    if spectrograms_uint8.dtype != np.uint8 or spectrograms_uint8.ndim != 3:
        raise ValueError(
            f"expected uint8 spectrograms (N, n_mels, n_frames), got {spectrograms_uint8.dtype} "
            f"{spectrograms_uint8.shape}"
        )
    n_tiles = n_tiles or getattr(model, "encode_tiles", 32)
    device = next(model.parameters()).device
    tracks_per_pass = max(1, batch_size // n_tiles)
    embeddings = np.empty((len(spectrograms_uint8), model.latent_dim), dtype=np.float32)
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(spectrograms_uint8), tracks_per_pass):
                chunk = spectrograms_uint8[start : start + tracks_per_pass]
                tiles = fixed_tiles(chunk, n_tiles, model.tile_frames)  # (k, n_tiles, n_mels, tile_frames)
                latents = model.encode(torch.from_numpy(tiles).flatten(0, 1).to(device))
                embeddings[start : start + len(chunk)] = (
                    latents.view(len(chunk), n_tiles, -1).mean(dim=1).float().cpu().numpy()
                )
    finally:
        model.train(was_training)
    return embeddings


def mean_per_track(clip_track_ids: pl.Series, per_clip: np.ndarray) -> tuple[pl.Series, np.ndarray]:
    """One vector per track: the mean of its clips' vectors, tracks in first-seen order."""
    track_ids = clip_track_ids.unique(maintain_order=True)
    position = {track_id: i for i, track_id in enumerate(track_ids)}
    index = np.fromiter((position[t] for t in clip_track_ids), dtype=np.int64, count=len(clip_track_ids))
    sums = np.zeros((len(track_ids), per_clip.shape[1]), dtype=np.float64)
    np.add.at(sums, index, per_clip)
    counts = np.bincount(index, minlength=len(track_ids))[:, None]
    return track_ids, (sums / counts).astype(per_clip.dtype)


def audio_digests(clip_track_ids: pl.Series, spectrograms_uint8: np.ndarray) -> dict[str, str]:
    """Per track, a digest of its spectrograms (its clips in order): equal
    digests mean identical audio, as far as the model can hear."""
    digests: dict[str, "hashlib._Hash"] = {}
    for track_id, clip in zip(clip_track_ids.to_list(), spectrograms_uint8):
        digests.setdefault(track_id, hashlib.sha1()).update(np.ascontiguousarray(clip).tobytes())
    return {track_id: digest.hexdigest() for track_id, digest in digests.items()}


def identical_vector_clashes(
    track_ids: list[str],
    raw: np.ndarray,
    digests: dict[str, str],
    stored_matches: list[tuple[str, str]] = (),
    stored_digests: dict[str, str] | None = None,
) -> dict[str, str]:
    """Tracks whose vector equals another track's although their audio differs:
    track -> that other track. Identical audio (a re-release, the same file
    twice) may share a vector; different audio with one vector is a collapsed
    or broken encoder, and must not be recommended as a perfect match.

    track_ids/raw: a batch, one vector per track; digests: the batch's
    :func:`audio_digests`; stored_matches: (batch track, stored track) pairs
    whose stored vectors are identical; stored_digests: those stored tracks'
    digests (a track without one counts as different audio).
    """
    stored_digests = stored_digests or {}
    clashes: dict[str, str] = {}
    first_with_vector: dict[bytes, str] = {}
    for track_id, vector in zip(track_ids, raw):
        other = first_with_vector.setdefault(np.ascontiguousarray(vector).tobytes(), track_id)
        if other != track_id and digests.get(other) != digests.get(track_id):
            clashes[track_id] = other
    for track_id, other in stored_matches:
        if stored_digests.get(other) is None or stored_digests[other] != digests.get(track_id):
            clashes.setdefault(track_id, other)
    return clashes


def embedding_stats(track_ids: pl.Series, vectors: np.ndarray, clashes: Mapping[str, str]) -> pl.DataFrame:
    """What the embedding suite (:func:`sonufy_model.quality.check_embeddings`)
    checks, one row per track of ``track_ids``: its vector's length, how many
    of its values are not finite, its norm (non-finite values counted as 0),
    and the track it has an identical vector with although their audio
    differs (``clashes``, :func:`identical_vector_clashes`; null for none)."""
    return pl.DataFrame(
        {
            "track_id": track_ids,
            "length": np.full(len(vectors), vectors.shape[1], dtype=np.int64),
            "non_finite": (~np.isfinite(vectors)).sum(axis=1).astype(np.int64),
            "norm": np.linalg.norm(np.nan_to_num(vectors), axis=1).astype(np.float64),
            "identical_vector_of": [clashes.get(t) for t in track_ids],
        },
        schema_overrides={"identical_vector_of": pl.String},
    )


def embedding_rows(
    track_ids: pl.Series, model_version: str, raw: np.ndarray, vectors: np.ndarray, failed: Collection[str] = ()
) -> pl.DataFrame:
    """Rows for the embeddings table (``Store.record_embeddings``): each track
    of ``track_ids`` not in ``failed``, with its ``raw`` and standardised
    vector (``vectors``) in ``model_version``, in the order of ``track_ids``."""
    keep = ~track_ids.is_in(list(failed)).to_numpy()
    return pl.DataFrame(
        {
            "track_id": track_ids.filter(pl.Series(keep)),
            "model_version": model_version,
        }
    ).with_columns(
        pl.Series("raw", raw[keep], dtype=pl.Array(pl.Float32, LATENT_DIM)),
        pl.Series("vector", vectors[keep], dtype=pl.Array(pl.Float32, LATENT_DIM)),
    )


def standardiser_sample(manifest: pl.DataFrame, n_tracks: int = STANDARDISER_SAMPLE) -> pl.DataFrame:
    """The rows of ``manifest`` (a spectrogram manifest, several excerpts a
    track possible) of an evenly spaced sample of its tracks, every excerpt of
    a sampled track kept: all tracks up to ``2 * n_tracks - 1``, then every
    k-th in first-seen order (k = tracks // n_tracks)."""
    track_ids = manifest["track_id"].unique(maintain_order=True)
    sampled = track_ids.gather_every(max(1, track_ids.len() // n_tracks))
    return manifest.filter(pl.col("track_id").is_in(sampled.implode()))


def track_features(
    encoder: TileEncoder | TimeFreqAutoencoder, clip_track_ids: pl.Series, spectrograms_uint8: np.ndarray, texture: str
) -> tuple[pl.Series, np.ndarray, np.ndarray | None]:
    """Per track, in first-seen order of ``clip_track_ids`` (one per
    spectrogram): its raw encoder vector and, where ``texture`` names a
    pattern set ("blocks", "blocks6"), its texture patterns (:mod:`sonufy_model.texture`; else None), each the
    mean over the track's clips."""
    track_ids, raw = mean_per_track(clip_track_ids, encode_spectrograms(encoder, spectrograms_uint8))
    if texture == "none":
        return track_ids, raw, None
    return track_ids, raw, mean_per_track(clip_track_ids, block_level_features(spectrograms_uint8, texture=texture))[1]


def fit_vector_space(
    encoder: TileEncoder | TimeFreqAutoencoder, manifest: pl.DataFrame, texture: str,
    n_tracks: int = STANDARDISER_SAMPLE,
) -> tuple[Standardiser, Fusion | None]:
    """What turns a model version's raw vectors into the ones cosine compares,
    fitted on a sample of ``manifest``'s tracks (:func:`standardiser_sample`),
    each described as tracks are stored (the mean over its excerpts): the
    latent standardisation and, where ``texture`` names a pattern set, the fusion with
    texture patterns (:mod:`sonufy_model.fusion`; else None)."""
    sample = standardiser_sample(manifest, n_tracks)
    spectrograms = read_spectrograms(sample)
    _, raw, patterns = track_features(encoder, sample["track_id"], spectrograms, texture)
    standardiser = Standardiser.fit(raw)
    if patterns is None:
        return standardiser, None
    return standardiser, Fusion.fit(standardiser.transform(raw), patterns, spectrograms.shape[2], pattern_set=texture)
