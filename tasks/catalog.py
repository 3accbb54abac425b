"""Catalog tasks: scrape Spotify search pages, parse them, upsert tracks; scan a folder."""

from __future__ import annotations

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
def scan_folder(store: Store, root: str, run_id: str | None = None) -> int:
    """Ingest a folder of audio files: tracks, and the files as their audio."""
    tracks, files, rejected = folder.scan_folder(root)
    logger = get_run_logger()
    for reason in rejected:
        logger.warning("skipped %s", reason)
    store.upsert_tracks(tracks)
    store.record_previews(files)
    logger.info("found %d audio files under %s (%d skipped)", tracks.height, root, len(rejected))
    return tracks.height
