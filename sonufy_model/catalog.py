"""The catalog: track metadata from the Spotify Web API.

What to scrape is configuration (:class:`~sonufy_model.scrape_config.ScrapeConfig`):
search queries, album ids and playlist ids. spotipy does the
client-credentials auth (tokens kept in memory, refreshed before they expire)
and the HTTP; asyncio runs every request concurrently, each spotipy call in a
thread behind a semaphore, since spotipy has no async API. One rate limiter
(aiolimiter, ``ServiceSettings.spotify_rate_per_s``) is shared by all of a
scrape's requests, and a 429 pauses it for all of them. spotipy's own retries
are off: its urllib3 retries obey Retry-After silently and can hang for hours,
so a 429 is handled here, visibly, and a wait longer than
``spotify_max_wait_s`` fails the call instead.

Fetching (network) and parsing (pure) are separate functions, so that each
can be retried on its own. Parsing keeps one row per track id;
:func:`one_per_isrc` then keeps one track per recording.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl
import requests
import spotipy
from spotipy.cache_handler import MemoryCacheHandler
from spotipy.oauth2 import SpotifyClientCredentials

from sonufy_model.config import ServiceSettings
from sonufy_model.ratelimit import SharedLimiter
from sonufy_model.scrape_config import ScrapeConfig
from sonufy_model.schemas import TRACK_SCHEMA

log = logging.getLogger(__name__)

# Development-mode limits in 2026: 10 items a page, offsets up to 1000.
SEARCH_PAGE_SIZE = 10
SEARCH_MAX_OFFSET = 1000
# So a search query yields at most this many tracks (offsets 0..1000, 10 a page).
SEARCH_MAX_ITEMS = SEARCH_MAX_OFFSET + SEARCH_PAGE_SIZE
ALBUM_TRACKS_PAGE_SIZE = 50
PLAYLIST_PAGE_SIZE = 50
# 5xx and dropped connections: this many tries per call, with exponential backoff.
SERVER_ERROR_ATTEMPTS = 8
# A 401 (a token that expired in flight): this many fresh tokens per call.
TOKEN_RETRIES = 2


class RateLimited(RuntimeError):
    """The service kept answering 429 (or 5xx) for longer than we are willing to wait."""


@dataclass(frozen=True)
class SearchPage:
    """One raw page of items, as the API returned it.

    kind says where it came from: "search" (``query`` is the query), "album"
    (``query`` is ``album:ID``; the items are full track objects fetched one
    by one) or "playlist" (``query`` is ``playlist:ID``; the items are
    playlist entries that wrap a track).
    """

    query: str
    offset: int
    paging: dict  # Spotify's paging object: items, next, total...
    kind: str = "search"


@dataclass
class ScrapeResult:
    """Everything one scrape fetched, raw, and what it could not fetch."""

    pages: list[SearchPage] = field(default_factory=list)
    # Albums, playlists, tracks or queries the API refused, with the reason.
    problems: list[str] = field(default_factory=list)
    # Queries that match more tracks than the API pages through (offset cap).
    capped: list[str] = field(default_factory=list)
    # Requests let through the shared limiter, and pauses it made (429s).
    requests: int = 0
    pauses: int = 0


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


def spotify_limiter(settings: ServiceSettings) -> SharedLimiter:
    """The limiter all of one scrape's Spotify requests share."""
    return SharedLimiter(settings.spotify_rate_per_s, name="spotify")


def _message(error: spotipy.SpotifyException) -> str:
    """The API's own words from a SpotifyException (spotipy prefixes the URL)."""
    text = str(error.msg or "").split(":\n", 1)[-1].strip()
    return f"HTTP {error.http_status}" + (f" {text}" if text else "")


@dataclass
class _Spotify:
    """A client, the scrape's shared limiter and its concurrency: every request goes through ``call``."""

    client: spotipy.Spotify
    limiter: SharedLimiter
    semaphore: asyncio.Semaphore
    max_wait_s: float = 600.0

    async def call(self, method: str, *args, **kwargs):
        """One spotipy call in a thread; 429s pause everyone for Retry-After, 5xx back off."""
        waited = 0.0
        attempt = 0
        token_retries = 0
        while True:
            try:
                async with self.semaphore:
                    await self.limiter.acquire()
                    return await asyncio.to_thread(getattr(self.client, method), *args, **kwargs)
            except spotipy.SpotifyException as error:
                status = error.http_status
                if status == 429:
                    retry_after = _retry_after(error)
                    if waited + retry_after > self.max_wait_s:
                        raise RateLimited(
                            f"Spotify {method}: rate limited (429) with Retry-After {retry_after:.0f} s "
                            f"after waiting {waited:.0f} s; more than the {self.max_wait_s:.0f} s allowed"
                            + (f" ({error.reason})" if getattr(error, "reason", None) else "")
                        ) from error
                    # Everyone waits, not only this request: the service said stop.
                    self.limiter.pause(retry_after + random.uniform(0, 0.25), f"429 on {method}, Retry-After")
                    waited += retry_after
                    continue
                if status == 401 and token_retries < TOKEN_RETRIES:
                    # The token expired between spotipy's check and the server's:
                    # forget it, so that the next try fetches a fresh one.
                    token_retries += 1
                    self._forget_token()
                    log.warning("Spotify %s: %s; retrying with a fresh token", method, _message(error))
                    continue
                if status is None or status < 500:
                    raise
                reason = f"server error {status}"
            except (requests.ConnectionError, requests.Timeout) as error:
                reason = f"{type(error).__name__}"
            attempt += 1
            if attempt >= SERVER_ERROR_ATTEMPTS:
                raise RateLimited(f"Spotify {method}: still failing after {attempt} tries ({reason})")
            delay = min(30.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)
            if waited + delay > self.max_wait_s:
                raise RateLimited(f"Spotify {method}: still failing after waiting {waited:.0f} s ({reason})")
            log.warning("Spotify %s: %s; retrying in %.1f s", method, reason, delay)
            waited += delay
            await asyncio.sleep(delay)

    def _forget_token(self) -> None:
        auth = self.client.auth_manager
        cache = getattr(auth, "cache_handler", None)
        if cache is not None:
            cache.save_token_to_cache(None)


def _retry_after(error: spotipy.SpotifyException) -> float:
    raw = (error.headers or {}).get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw not in (None, "") else 1.0
    except (TypeError, ValueError):
        return 1.0


# --------------------------------------------------------------------------- fetching (network)


async def _search_one(spotify: _Spotify, query: str, max_items: int | None, result: ScrapeResult) -> list[SearchPage]:
    """Every page of one query, following ``next``, up to the offset cap or ``max_items``."""
    wanted = max_items or float("inf")
    cap = int(min(wanted, SEARCH_MAX_ITEMS))
    try:
        response = await spotify.call(
            "search", q=query, limit=min(SEARCH_PAGE_SIZE, cap), offset=0, type="track"
        )
    except spotipy.SpotifyException as error:
        result.problems.append(f"query {query!r}: {_message(error)}")
        return []
    paging = response["tracks"]
    pages: list[SearchPage] = []
    fetched = 0
    while True:
        items = paging.get("items") or []
        if fetched + len(items) > cap:
            paging = {**paging, "items": items[: cap - fetched]}
        offset = int(paging.get("offset", 0))
        pages.append(SearchPage(query=query, offset=offset, paging=paging))
        fetched += len(paging.get("items") or [])
        next_offset = offset + int(paging.get("limit") or SEARCH_PAGE_SIZE)
        if fetched >= cap or not paging.get("next"):
            break
        if next_offset > SEARCH_MAX_OFFSET:  # Spotify would answer 400: stop here
            break
        response = await spotify.call("next", paging)
        paging = response["tracks"]
    total = int(paging.get("total") or 0)
    if fetched < min(total, wanted):
        result.capped.append(
            f"query {query!r} matches {total} tracks, but the API pages only up to offset "
            f"{SEARCH_MAX_OFFSET}: kept the first {fetched}; split the query (by year:, genre:...) "
            "to reach the rest"
        )
    return pages


async def _album(spotify: _Spotify, album_id: str, result: ScrapeResult) -> list[SearchPage]:
    """An album's tracks: ids from ``/albums/{id}/tracks`` (no ISRC there), then each ``/tracks/{id}``."""
    try:
        paging = await spotify.call("album_tracks", album_id, limit=ALBUM_TRACKS_PAGE_SIZE, offset=0)
    except spotipy.SpotifyException as error:
        result.problems.append(f"album {album_id}: {_message(error)}")
        return []
    track_ids: list[str] = []
    while True:
        track_ids.extend(item["id"] for item in paging.get("items") or [] if item and item.get("id"))
        if not paging.get("next"):
            break
        paging = await spotify.call("next", paging)

    async def full(track_id: str) -> dict | None:
        # Batch /tracks?ids= is gone in 2026: one request per track, concurrently.
        try:
            return await spotify.call("track", track_id)
        except spotipy.SpotifyException as error:
            result.problems.append(f"album {album_id}: track {track_id}: {_message(error)}")
            return None

    tracks = [track for track in await asyncio.gather(*(full(t) for t in track_ids)) if track is not None]
    paging = {"items": tracks, "total": len(tracks), "offset": 0, "next": None}
    return [SearchPage(query=f"album:{album_id}", offset=0, paging=paging, kind="album")]


async def _playlist(spotify: _Spotify, playlist_id: str, result: ScrapeResult) -> list[SearchPage]:
    """A playlist's entries, page by page (``/playlists/{id}/items``)."""
    query = f"playlist:{playlist_id}"
    try:
        paging = await spotify.call(
            "playlist_items", playlist_id, limit=PLAYLIST_PAGE_SIZE, offset=0, additional_types=("track",)
        )
    except spotipy.SpotifyException as error:
        why = {
            403: " (development-mode apps read only playlists they own or collaborate on)",
            404: " (no such playlist, or not visible to this app)",
        }.get(error.http_status, "")
        result.problems.append(f"playlist {playlist_id}: {_message(error)}{why}")
        return []
    pages = []
    while True:
        pages.append(SearchPage(query=query, offset=int(paging.get("offset", 0)), paging=paging, kind="playlist"))
        if not paging.get("next"):
            break
        paging = await spotify.call("next", paging)
    return pages


async def scrape(
    client: spotipy.Spotify,
    config: ScrapeConfig,
    limiter: SharedLimiter,
    concurrency: int = 4,
    max_wait_s: float = 600.0,
) -> ScrapeResult:
    """Every page of every query, album and playlist of ``config``, all concurrently.

    Pages come back in the configuration's order (queries, albums, playlists),
    whatever order the requests finished in.
    """
    spotify = _Spotify(client, limiter, asyncio.Semaphore(max(1, concurrency)), max_wait_s)
    result = ScrapeResult()
    jobs = [
        *(_search_one(spotify, query, config.max_items_per_query, result) for query in config.queries),
        *(_album(spotify, album_id, result) for album_id in config.album_ids),
        *(_playlist(spotify, playlist_id, result) for playlist_id in config.playlist_ids),
    ]
    for pages in await asyncio.gather(*jobs):
        result.pages.extend(pages)
    result.requests = limiter.granted
    result.pauses = len(limiter.pauses)
    return result


def fetch_catalog(
    settings: ServiceSettings, config: ScrapeConfig, limiter: SharedLimiter | None = None
) -> ScrapeResult:
    """Synchronous entry point: a client and a shared limiter, then the whole scrape."""
    client = spotify_client(settings)
    limiter = limiter or spotify_limiter(settings)
    return asyncio.run(
        scrape(client, config, limiter, settings.spotify_concurrency, settings.spotify_max_wait_s)
    )


def fetch_search_pages(
    settings: ServiceSettings, queries: Sequence[str], max_items_per_query: int | None = None
) -> list[SearchPage]:
    """Every page of track results for each query, queries run concurrently."""
    config = ScrapeConfig(queries=tuple(queries), max_items_per_query=max_items_per_query)
    return fetch_catalog(settings, config).pages


# --------------------------------------------------------------------------- parsing (pure)


def parse_track(item: dict, found_by: str | None = None) -> dict:
    """A Spotify track object as a row of the tracks table.

    Only an id is required: a row with an empty name, a malformed ISRC or an
    implausible duration is still a row, so that the metadata suite
    (quality.check_tracks) can quarantine it and say which expectation it broke.
    """
    track_id = item.get("id")
    if not track_id or not isinstance(track_id, str):
        if item.get("is_local"):
            raise ValueError(f"a local file ({item.get('name')!r}), not in Spotify's catalog")
        raise ValueError(f"track object without an id: {str(item)[:200]}")
    if item.get("type", "track") != "track":
        raise ValueError(f"{track_id} is a {item.get('type')}, not a track")
    artists = [artist for artist in item.get("artists") or [] if isinstance(artist, dict)]
    album = item.get("album") or {}
    return {
        "track_id": track_id,
        "source": "spotify",
        "title": item.get("name") or "",
        "artist": (artists[0].get("name") or "") if artists else "",
        "artists": [artist.get("name") or "" for artist in artists],
        "artist_id": artists[0].get("id") if artists else None,
        "album": album.get("name"),
        "album_id": album.get("id"),
        "release_date": album.get("release_date"),
        "duration_ms": item.get("duration_ms"),
        "isrc": (item.get("external_ids") or {}).get("isrc") or None,
        "explicit": item.get("explicit"),
        "popularity": item.get("popularity"),
        "uri": item.get("uri"),
        "preview_url": item.get("preview_url"),
        "path": None,
        "found_by": found_by,
    }


def _track_of(item: dict, kind: str) -> dict | None:
    """The track object of a page item: playlist entries wrap it (2026: ``item``; before: ``track``)."""
    if kind == "playlist":
        wrapped = item.get("item") or item.get("track")
        return wrapped if isinstance(wrapped, dict) else None
    return item


def parse_search_pages(pages: Sequence[SearchPage]) -> tuple[pl.DataFrame, list[str]]:
    """Tracks of the pages, one row per track id, and the items that were not tracks.

    A track found by several queries, albums or playlists keeps the first that
    found it (in the configuration's order).
    """
    rows: dict[str, dict] = {}
    rejected: list[str] = []
    for page in pages:
        for position, item in enumerate(page.paging.get("items") or []):
            if item is None:
                continue
            where = f"{page.query} @ {page.offset + position}"
            track = _track_of(item, page.kind)
            if track is None:
                rejected.append(f"{where}: a playlist entry without a track (removed from Spotify?)")
                continue
            try:
                row = parse_track(track, found_by=page.query)
            except ValueError as error:
                rejected.append(f"{where}: {error}")
                continue
            rows.setdefault(row["track_id"], row)
    return pl.DataFrame(list(rows.values()), schema=TRACK_SCHEMA), rejected


def parse_scrape(result: ScrapeResult) -> tuple[pl.DataFrame, list[str]]:
    """The tracks of a whole scrape, one row per track id, and what was not a track."""
    return parse_search_pages(result.pages)


def one_per_isrc(tracks: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One track per recording: (kept, dropped), dropped with the ``kept_track_id`` it duplicates.

    The same recording (one ISRC) is often on several albums: the original, a
    best-of, a deluxe reissue, each with its own track id. It is one sound, so
    it is one track here. The canonical one is the earliest release (the
    original album, which is also where Deezer most likely files the ISRC),
    then the smallest track id: a choice that depends only on the rows, never
    on which query or page found them first, so that a rerun, or the same
    catalog scraped in another order, keeps the same track. Rows without an
    ISRC are all kept.
    """
    with_isrc = tracks.filter(pl.col("isrc").is_not_null())
    canonical = (
        with_isrc.sort(["isrc", "release_date", "track_id"], nulls_last=True)
        .unique("isrc", keep="first", maintain_order=True)
        .select("isrc", pl.col("track_id").alias("kept_track_id"))
    )
    joined = tracks.join(canonical, on="isrc", how="left", maintain_order="left")
    is_kept = pl.col("kept_track_id").is_null() | (pl.col("kept_track_id") == pl.col("track_id"))
    kept = joined.filter(is_kept).drop("kept_track_id")
    dropped = joined.filter(~is_kept)
    return kept, dropped
