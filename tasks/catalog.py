"""Catalog tasks: scrape Spotify search pages, parse them, upsert tracks; scan a folder."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model import catalog, folder
from sonufy_model.config import ServiceSettings
from sonufy_model.store import Store


@task(
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    cache_policy=NO_CACHE,
    task_run_name="scrape[{settings.spotify_api_base}]",
)
def scrape_search_pages(
    settings: ServiceSettings, queries: list[str], max_items_per_query: int | None = None
) -> list[catalog.SearchPage]:
    """Network only: every page of search results for the queries."""
    pages = catalog.fetch_search_pages(settings, queries, max_items_per_query)
    get_run_logger().info("fetched %d search pages for %d queries", len(pages), len(queries))
    return pages


@task(cache_policy=NO_CACHE, task_run_name="parse-tracks")
def parse_tracks(pages: list[catalog.SearchPage]) -> pl.DataFrame:
    """Parsing only: the tracks of the pages, one row per track id."""
    tracks, rejected = catalog.parse_search_pages(pages)
    logger = get_run_logger()
    for item in rejected:
        logger.warning("skipped a search result: %s", item)
    logger.info("parsed %d distinct tracks", tracks.height)
    return tracks


@task(cache_policy=NO_CACHE, task_run_name="upsert[{tracks.height} tracks]")
def upsert_tracks(store: Store, tracks: pl.DataFrame) -> int:
    return store.upsert_tracks(tracks)


@task(cache_policy=NO_CACHE, task_run_name="scan[{root}]")
def scan_folder(store: Store, root: str, run_id: str | None = None) -> dict:
    """Ingest a folder of audio files: new and changed files only, tags and all."""
    root = str(Path(root).expanduser().resolve())
    scan = folder.scan_folder(root, known=store.known_files(root))
    logger = get_run_logger()
    for reason in scan.rejected:
        logger.warning("skipped %s", reason)
    store.record_scan(scan.tracks, scan.previews, scan.files, scan.changed_track_ids)
    logger.info(
        "%s: %d new, %d changed, %d unchanged, %d skipped",
        root, scan.new, len(scan.changed_track_ids), scan.unchanged, len(scan.rejected),
    )
    return {"new_files": scan.new, "changed_files": len(scan.changed_track_ids),
            "unchanged_files": scan.unchanged, "skipped_files": len(scan.rejected)}
