"""Spectrogram tasks: convert a batch in parallel, check it, store it as a shard."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model import quality, spectrograms
from sonufy_model.audio import MelParams
from sonufy_model.schemas import quarantine_rows
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


@dataclass
class ShardWritten:
    """A batch's shard on disk, ready to be indexed; its failures, ready to quarantine."""

    index: pl.DataFrame
    failures: pl.DataFrame  # track_id, reason
    batch_number: int


@task(cache_policy=NO_CACHE, task_run_name="write-shard[batch {batch_number}]")
def write_spectrogram_shard(
    batch: spectrograms.SpectrogramBatch,
    report: quality.QualityReport,
    params: MelParams,
    directory: Path,
    batch_number: int,
) -> ShardWritten:
    """The passing tracks' spectrograms as one shard (file I/O only: runs on any worker)."""
    passing, failures = batch.checked(report.failures)
    index = spectrograms.write_shard(passing, directory / params.set_id, params.set_id)
    return ShardWritten(index=index, failures=failures, batch_number=batch_number)


@task(cache_policy=NO_CACHE, task_run_name="record-spectrograms[batch {shard.batch_number}]")
def record_spectrograms(store: Store, shard: ShardWritten, run_id: str | None) -> dict:
    """Index the shard in DuckDB and quarantine the failures, in one transaction."""
    failures = quarantine_rows(shard.failures, "spectrogram", run_id)
    store.record_spectrograms(shard.index, failures)
    return {"stored": shard.index["track_id"].n_unique(), "quarantined": failures.height}


@task(cache_policy=NO_CACHE, task_run_name="drop-previews[batch {shard.batch_number}]")
def drop_previews(store: Store, shard: ShardWritten) -> dict:
    """Delete the downloaded mp3s whose spectrograms are now stored (as the seed did)."""
    return {"previews_dropped": store.drop_previews(shard.index["track_id"].unique().to_list())}
