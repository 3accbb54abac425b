"""Encoding tasks: latent vectors for a batch of spectrograms, checked, then written."""

from __future__ import annotations

from functools import lru_cache

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model import quality
from sonufy_model.encoding import (
    audio_digests,
    embedding_rows,
    embedding_stats,
    identical_vector_clashes,
    load_encoder,
    track_features,
)
from sonufy_model.schemas import quarantine_rows
from sonufy_model.spectrograms import read_spectrograms
from sonufy_model.store import LATENT_DIM, ModelRecord, Store


@lru_cache(maxsize=2)
def _encoder(checkpoint: str):
    # Loaded once per process and reused by every batch.
    return load_encoder(checkpoint)


@task(cache_policy=NO_CACHE, task_run_name="pending-embeddings[{model.model_version}]")
def spectrograms_without_embedding(store: Store, model: ModelRecord) -> pl.DataFrame:
    return store.spectrograms_without_embedding(model.set_id, model.model_version)


@task(cache_policy=NO_CACHE, task_run_name="encode[batch {batch_number}: {manifest.height} tracks]")
def encode_batch(
    store: Store, model: ModelRecord, manifest: pl.DataFrame, run_id: str | None, batch_number: int
) -> dict:
    """Encode, run the embedding suite, write the passing vectors, quarantine the rest.

    A track with several excerpts gets the mean of their vectors (and texture patterns).
    """
    spectrograms = read_spectrograms(manifest)
    track_ids, raw, texture = track_features(_encoder(model.checkpoint), manifest["track_id"], spectrograms,
                                             model.texture)
    vectors = model.vectors(raw, texture)
    clashes = _identical_vector_clashes(store, model, manifest, spectrograms, track_ids, raw)
    report = quality.check_embeddings(embedding_stats(track_ids, vectors, clashes), LATENT_DIM)
    failed = set(report.failures["track_id"].to_list())
    embeddings = embedding_rows(track_ids, model.model_version, raw, vectors, failed)
    store.record_embeddings(embeddings)
    store.quarantine(quarantine_rows(report.failures, "encode", run_id))
    if failed:
        get_run_logger().warning("batch %d: %d vectors failed the embedding suite", batch_number, len(failed))
    return {"encoded": embeddings.height, "quarantined": len(failed)}


def _identical_vector_clashes(store, model, manifest, spectrograms, track_ids, raw) -> dict[str, str]:
    """Batch tracks whose vector equals another's (in the batch or stored) with different audio."""
    matches = store.stored_identical_vectors(model.model_version, track_ids, raw)
    stored_digests: dict[str, str] = {}
    if matches:  # rare: read the stored tracks' spectrograms to compare their audio
        others = store.spectrogram_manifest(model.set_id).filter(
            pl.col("track_id").is_in(sorted({other for _, other in matches}))
        )
        stored_digests = audio_digests(others["track_id"], read_spectrograms(others))
    digests = audio_digests(manifest["track_id"], spectrograms)
    return identical_vector_clashes(track_ids.to_list(), raw, digests, matches, stored_digests)
