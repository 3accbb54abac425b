"""Catalog tasks: scrape Spotify (queries, albums, playlists), parse, check, upsert; scan a folder."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model import catalog, folder, quality
from sonufy_model.config import ServiceSettings
from sonufy_model.quality import QualityReport
from sonufy_model.schemas import quarantine_rows
from sonufy_model.scrape_config import ScrapeConfig
from sonufy_model.store import Store


@task(
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    cache_policy=NO_CACHE,
    task_run_name="scrape[{settings.spotify_api_base}]",
)
def scrape_catalog(
    settings: ServiceSettings, config: ScrapeConfig, known_album_ids: frozenset[str] = frozenset()
) -> catalog.ScrapeResult:
    """Network only: every page of the configured queries, albums and playlists
    (``tag:new``'s albums but those in ``known_album_ids``). New albums start
    Great Expectations' import in the background while their tracks are
    read: the metadata suite comes next."""
    result = catalog.fetch_catalog(settings, config, known_album_ids=known_album_ids,
                                   on_new_albums=lambda _: quality.prepare_in_background())
    logger = get_run_logger()
    for problem in result.problems:
        logger.warning("not scraped: %s", problem)
    for capped in result.capped:
        logger.warning("%s", capped)
    logger.info(
        "fetched %d pages for %d queries, %d albums and %d playlists in %d requests (%d pauses for 429)",
        len(result.pages), len(config.queries), len(config.album_ids), len(config.playlist_ids),
        result.requests, result.pauses,
    )
    if result.known_albums:
        logger.info("%d albums found by tag:new are already in the store: not read again", result.known_albums)
    return result


@task(cache_policy=NO_CACHE, task_run_name="parse-tracks")
def parse_tracks(result: catalog.ScrapeResult) -> pl.DataFrame:
    """Parsing only: the tracks of the pages, one row per track id."""
    tracks, rejected = catalog.parse_scrape(result)
    logger = get_run_logger()
    for item in rejected:
        logger.warning("skipped an item: %s", item)
    logger.info("parsed %d distinct tracks", tracks.height)
    return tracks


@task(cache_policy=NO_CACHE, task_run_name="check-tracks[{tracks.height} tracks]")
def check_tracks(tracks: pl.DataFrame) -> QualityReport:
    """The metadata suite on the parsed tracks, before anything is written."""
    report = quality.check_tracks(tracks)
    logger = get_run_logger()
    for row in report.failures.head(20).iter_rows(named=True):
        logger.warning("quarantined %s: %s", row["track_id"], row["reason"])
    logger.info("%d of %d tracks passed the metadata suite", tracks.height - report.failures.height, tracks.height)
    return report


@task(cache_policy=NO_CACHE, task_run_name="upsert[{tracks.height} tracks]")
def upsert_tracks(store: Store, tracks: pl.DataFrame, report: QualityReport, run_id: str | None = None,
                  scraped: catalog.ScrapeResult | None = None) -> dict:
    """Tracks that passed, one per ISRC, upserted; those that failed quarantined (stage 'scrape');
    the albums ``scraped`` read whole remembered (the nightly's tag:new skips them), but those with
    a failing track."""
    passing = tracks.filter(~pl.col("track_id").is_in(report.failures["track_id"].implode()))
    kept, duplicates = catalog.one_per_isrc(passing)
    failures = quarantine_rows(report.failures, "scrape", run_id)
    albums = scraped.albums_to_remember(report.failures["track_id"].to_list()) if scraped is not None else []
    written = store.record_scraped_tracks(kept, failures, albums)
    get_run_logger().info(
        "%d tracks (%d new or changed), %d re-releases of a recording already kept, %d quarantined",
        kept.height, written, duplicates.height, failures.height,
    )
    return {"tracks": kept.height, "tracks_written": written, "isrc_duplicates": duplicates.height,
            "quarantined_scrape": failures.height}


@task(cache_policy=NO_CACHE, task_run_name="scan[{root}]")
def scan_folder(store: Store, root: str, run_id: str | None = None) -> dict:
    """Ingest a folder of audio files: new and changed files only, tags and all.

    Counts: new_files, changed_files, unchanged_files, audio_by_content (files
    recognised as audio by their first bytes, not their suffix), and the
    skipped ones (skipped_files, skipped_not_audio, skipped_unreadable,
    skipped_needs_ffmpeg)."""
    root = str(Path(root).expanduser().resolve())
    scan = folder.scan_folder(root, known=store.known_files(root))
    logger = get_run_logger()
    for reason in scan.rejected:
        logger.warning("skipped %s", reason)
    store.record_scan(scan.tracks, scan.previews, scan.files, scan.changed_track_ids)
    logger.info(
        "%s: %d new, %d changed, %d unchanged (%d audio by content, not suffix); %s",
        root, scan.new, len(scan.changed_track_ids), scan.unchanged, scan.by_content, scan.skipped_summary(),
    )
    return {"new_files": scan.new, "changed_files": len(scan.changed_track_ids),
            "unchanged_files": scan.unchanged, "audio_by_content": scan.by_content, **scan.skipped_counts()}
