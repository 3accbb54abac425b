"""Spectrogram tasks: convert a batch in parallel, check it, store it as a shard."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model import quality, spectrograms
from sonufy_model.audio import MelParams
from sonufy_model.store import Store


@task(cache_policy=NO_CACHE, task_run_name="pending-spectrograms")
def previews_without_spectrogram(store: Store, params: MelParams) -> pl.DataFrame:
    store.register_spectrogram_set(params.set_id, params.to_dict())
    return store.previews_without_spectrogram(params.set_id)


@task(cache_policy=NO_CACHE, task_run_name="spectrograms[batch {batch_number}: {files.height} files]")
def compute_spectrograms(
    files: pl.DataFrame, params: MelParams, workers: int, batch_number: int
) -> spectrograms.SpectrogramBatch:
    batch = spectrograms.convert(files, params, workers=workers)
    get_run_logger().info(
        "batch %d: %d spectrograms, %d files failed to decode",
        batch_number, len(batch.track_ids), batch.failures.height,
    )
    return batch


@task(cache_policy=NO_CACHE, task_run_name="check-spectrograms[batch {batch_number}]")
def check_spectrograms(
    batch: spectrograms.SpectrogramBatch, params: MelParams, max_failed_share: float, batch_number: int
) -> quality.QualityReport:
    """The spectrogram suite. Bad tracks are quarantined later; a mostly bad batch stops the run."""
    report = quality.check_spectrograms(batch.stats, params)
    logger = get_run_logger()
    for row in report.failures.head(10).iter_rows(named=True):
        logger.warning("spectrogram of %s failed: %s", row["track_id"], row["reason"])
    report.raise_if_failed_share_above(max_failed_share)
    return report


@task(cache_policy=NO_CACHE, task_run_name="store-spectrograms[batch {batch_number}]")
def store_spectrograms(
    store: Store,
    batch: spectrograms.SpectrogramBatch,
    report: quality.QualityReport,
    params: MelParams,
    directory: Path,
    run_id: str | None,
    batch_number: int,
) -> dict:
    """Passing spectrograms into a shard and the index; the rest into quarantine."""
    failed_ids = set(report.failures["track_id"].to_list())
    passing = batch.only(set(batch.track_ids) - failed_ids)
    index = spectrograms.write_shard(passing, directory / params.set_id, params.set_id)
    failures = pl.concat([batch.failures, report.failures]).select(
        "track_id", pl.lit("spectrogram").alias("stage"), "reason", pl.lit(run_id).alias("run_id")
    )
    store.record_spectrograms(index, failures)
    return {"stored": index.height, "quarantined": failures.height}
