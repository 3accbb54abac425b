"""Preview tasks: download a batch of previews (network), check and record the outcome (DuckDB)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model import previews
from sonufy_model.config import ServiceSettings
from sonufy_model.store import Store


@task(cache_policy=NO_CACHE, task_run_name="pending-previews")
def tracks_without_preview(store: Store, max_attempts: int = 3) -> pl.DataFrame:
    """Tracks with no preview that fewer than ``max_attempts`` runs have quarantined."""
    return store.tracks_without_preview(max_attempts)


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
def record_previews(
    store: Store,
    outcomes: pl.DataFrame,
    run_id: str | None,
    batch_number: int,
    settings: ServiceSettings | None = None,
) -> dict:
    """The downloads suite on the fetched files, then: previews into the previews
    table, failures (fetch errors and broken expectations) into quarantine."""
    counts, failures = previews.record_outcomes(store, outcomes, run_id, settings)
    logger = get_run_logger()
    for row in failures.head(10).iter_rows(named=True):
        logger.warning("quarantined %s: %s", row["track_id"], row["reason"])
    return counts
