"""The catalog: track metadata from the Spotify Web API.

spotipy does the client-credentials auth (tokens kept in memory, refreshed
before they expire) and the HTTP; asyncio runs the queries concurrently, each
spotipy call in a thread behind a semaphore, since spotipy has no async API.
spotipy's own retries are off: its urllib3 retries obey Retry-After silently
and can hang for hours, so a 429 is handled here, visibly.

Fetching pages (network) and parsing them (pure) are separate functions, so
that each can be retried on its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import requests
import spotipy
from spotipy.cache_handler import MemoryCacheHandler
from spotipy.oauth2 import SpotifyClientCredentials

from sonufy_model.config import ServiceSettings
from sonufy_model.store import TRACK_SCHEMA

log = logging.getLogger(__name__)

# Development-mode limits in 2026: 10 items a page, offsets up to 1000.
SEARCH_PAGE_SIZE = 10
SEARCH_MAX_OFFSET = 1000


class RateLimited(RuntimeError):
    """The service kept answering 429 for longer than we are willing to wait."""


@dataclass(frozen=True)
class SearchPage:
    """One raw page of search results, as the API returned it."""

    query: str
    offset: int
    paging: dict  # Spotify's paging object: items, next, total...


def spotify_client(settings: ServiceSettings) -> spotipy.Spotify:
    """A spotipy client for ``settings``' endpoints, with retries left to us."""
    settings.require_spotify_credentials()
    auth = SpotifyClientCredentials(
        client_id=settings.spotify_client_id,
        client_secret=str(settings.spotify_client_secret),
        cache_handler=MemoryCacheHandler(),
        requests_timeout=settings.request_timeout_s,
    )
    # spotipy reads the token URL from the instance, so the stand-in (or a
    # proxy) can take the accounts service's place.
    auth.OAUTH_TOKEN_URL = f"{settings.spotify_accounts_base}/api/token"
    # A plain requests.Session: spotipy's default session mounts a urllib3
    # retry policy that, even with retries=0, turns a 429 or 5xx into
    # SpotifyException(429, "Max Retries") without the Retry-After header.
    client = spotipy.Spotify(
        auth_manager=auth,
        requests_session=requests.Session(),
        requests_timeout=settings.request_timeout_s,
        retries=0,
        status_retries=0,
        backoff_factor=0,
    )
    client.prefix = f"{settings.spotify_api_base}/v1/"
    return client


async def _call(client: spotipy.Spotify, method: str, *args, max_wait_s: float = 600.0, **kwargs):
    """One spotipy call in a thread; 429s wait Retry-After, 5xx back off."""
    waited = 0.0
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(getattr(client, method), *args, **kwargs)
        except spotipy.SpotifyException as error:
            attempt += 1
            if error.http_status == 429:
                retry_after = float((error.headers or {}).get("Retry-After", 1) or 1)
                delay = retry_after + random.uniform(0, 0.25)
                reason = "rate limited (429), Retry-After"
            elif error.http_status is not None and error.http_status >= 500 and attempt <= 4:
                delay = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
                reason = f"server error {error.http_status}"
            else:
                raise
            if waited + delay > max_wait_s:
                raise RateLimited(
                    f"Spotify {method}: still failing after waiting {waited:.0f} s ({reason})"
                ) from error
            log.warning("Spotify %s: %s; retrying in %.1f s", method, reason, delay)
            waited += delay
            await asyncio.sleep(delay)


async def _search_one(
    client: spotipy.Spotify, query: str, semaphore: asyncio.Semaphore, max_items: int | None
) -> list[SearchPage]:
    pages: list[SearchPage] = []
    async with semaphore:
        result = await _call(client, "search", q=query, limit=SEARCH_PAGE_SIZE, offset=0, type="track")
    paging = result["tracks"]
    while True:
        pages.append(SearchPage(query=query, offset=int(paging.get("offset", 0)), paging=paging))
        fetched = sum(len(page.paging.get("items") or []) for page in pages)
        next_offset = int(paging.get("offset", 0)) + SEARCH_PAGE_SIZE
        if not paging.get("next") or next_offset > SEARCH_MAX_OFFSET:
            break
        if max_items is not None and fetched >= max_items:
            break
        async with semaphore:
            result = await _call(client, "next", paging)
        paging = result["tracks"]
    return pages


async def search_pages(
    client: spotipy.Spotify,
    queries: Sequence[str],
    concurrency: int = 4,
    max_items_per_query: int | None = None,
) -> list[SearchPage]:
    """Every page of track results for each query, queries run concurrently."""
    semaphore = asyncio.Semaphore(max(1, concurrency))
    per_query = await asyncio.gather(
        *(_search_one(client, query, semaphore, max_items_per_query) for query in queries)
    )
    return [page for pages in per_query for page in pages]


def fetch_search_pages(
    settings: ServiceSettings, queries: Sequence[str], max_items_per_query: int | None = None
) -> list[SearchPage]:
    """Synchronous entry point: a client, then all queries' pages."""
    client = spotify_client(settings)
    return asyncio.run(
        search_pages(client, queries, settings.spotify_concurrency, max_items_per_query)
    )


def parse_track(item: dict, found_by: str | None = None) -> dict:
    """A Spotify track object as a row of the tracks table."""
    artists = item.get("artists") or []
    album = item.get("album") or {}
    track_id = item.get("id")
    if not track_id or not item.get("name") or not artists:
        raise ValueError(f"track object without id, name or artists: {str(item)[:200]}")
    return {
        "track_id": track_id,
        "source": "spotify",
        "title": item["name"],
        "artist": artists[0].get("name") or "",
        "artists": [artist.get("name") or "" for artist in artists],
        "artist_id": artists[0].get("id"),
        "album": album.get("name"),
        "album_id": album.get("id"),
        "release_date": album.get("release_date"),
        "duration_ms": item.get("duration_ms"),
        "isrc": (item.get("external_ids") or {}).get("isrc"),
        "explicit": item.get("explicit"),
        "popularity": item.get("popularity"),
        "uri": item.get("uri"),
        "preview_url": item.get("preview_url"),
        "path": None,
        "found_by": found_by,
    }


def parse_search_pages(pages: Sequence[SearchPage]) -> tuple[pl.DataFrame, list[str]]:
    """Tracks of the pages, one row per track id, and the items that were not tracks.

    A track found by several queries keeps the first query that found it.
    """
    rows: dict[str, dict] = {}
    rejected: list[str] = []
    for page in pages:
        for item in page.paging.get("items") or []:
            if item is None:
                continue
            try:
                row = parse_track(item, found_by=page.query)
            except ValueError as error:
                rejected.append(f"{page.query} @ {page.offset}: {error}")
                continue
            rows.setdefault(row["track_id"], row)
    return pl.DataFrame(list(rows.values()), schema=TRACK_SCHEMA), rejected
