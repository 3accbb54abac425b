"""Preview tasks: download a batch of previews (network), record the outcome (DuckDB)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model import previews
from sonufy_model.config import ServiceSettings
from sonufy_model.store import Store


@task(cache_policy=NO_CACHE, task_run_name="pending-previews")
def tracks_without_preview(store: Store) -> pl.DataFrame:
    return store.tracks_without_preview()


@task(
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    cache_policy=NO_CACHE,
    task_run_name="fetch[batch {batch_number}: {tracks.height} tracks]",
)
def fetch_previews(
    tracks: pl.DataFrame, settings: ServiceSettings, directory: Path, batch_number: int
) -> pl.DataFrame:
    """Download the batch's previews. One track's failure is an outcome, not an exception."""
    outcomes = previews.fetch_previews(tracks, settings, directory)
    failed = outcomes.filter(pl.col("error").is_not_null()).height
    get_run_logger().info("batch %d: %d previews fetched, %d failed", batch_number, outcomes.height - failed, failed)
    return outcomes


@task(cache_policy=NO_CACHE, task_run_name="record-previews[batch {batch_number}]")
def record_previews(store: Store, outcomes: pl.DataFrame, run_id: str | None, batch_number: int) -> dict:
    """Fetched previews into the previews table, failures into quarantine with their reason."""
    fetched = outcomes.filter(pl.col("error").is_null())
    failed = outcomes.filter(pl.col("error").is_not_null())
    store.record_previews(fetched.select("track_id", "provider", "path", "bytes", "duration_s"))
    store.quarantine(
        failed.select(
            "track_id",
            pl.lit("fetch").alias("stage"),
            pl.col("error").alias("reason"),
            pl.lit(run_id).alias("run_id"),
        )
    )
    logger = get_run_logger()
    for row in failed.head(10).iter_rows(named=True):
        logger.warning("quarantined %s: %s", row["track_id"], row["error"])
    return {"fetched": fetched.height, "failed": failed.height}
