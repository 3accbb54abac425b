"""The catalog: track metadata from the Spotify Web API.

What to scrape is configuration (:class:`~sonufy_model.scrape_config.ScrapeConfig`):
search queries, album ids and playlist ids. spotipy does the
client-credentials auth (tokens kept in memory, refreshed before they expire)
and the HTTP; asyncio runs every request concurrently, each spotipy call in a
thread behind a semaphore, since spotipy has no async API. One rate limiter
(aiolimiter, ``ServiceSettings.spotify_rate_per_s``) is shared by all of a
scrape's requests, and a 429 pauses it for all of them. spotipy's own retries
are off: its urllib3 retries obey Retry-After silently and can hang for hours,
so retries are tenacity's, here, visibly (:class:`_CallRetries`), and a wait
longer than ``spotify_max_wait_s`` fails the call instead.

Fetching (network) and parsing (pure) are separate functions, so that each
can be retried on its own. Parsing keeps one row per track id;
:func:`one_per_isrc` then keeps one track per recording.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import polars as pl
import requests
import spotipy
from spotipy.cache_handler import MemoryCacheHandler
from spotipy.oauth2 import SpotifyClientCredentials, SpotifyOauthError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from sonufy_model.config import ServiceSettings
from sonufy_model.errors import BadCredentials, RateLimited, ServiceError, Unreachable  # noqa: F401 (re-exported)
from sonufy_model.ratelimit import SharedLimiter
from sonufy_model.retries import retry_after_seconds
from sonufy_model.schemas import TRACK_SCHEMA
from sonufy_model.scrape_config import ScrapeConfig

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


def _service(url: str | None) -> str:
    """scheme://host[:port] of a request's URL, to name what could not be reached."""
    if not url:
        return "the service"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class SearchPage:
    """One raw page of items, as the API returned it.

    kind says where it came from: "search" (``query`` is the query), "album"
    (``query`` is ``album:ID``, or the album-only query such as ``tag:new``
    that found the albums; the items are full track objects) or "playlist"
    (``query`` is ``playlist:ID``; the items are playlist entries that wrap a
    track).
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
    # Albums an album-only query (tag:new) found among known_album_ids (read whole before): not read again.
    known_albums: int = 0
    # Albums whose every track the scrape read (by any query, album or
    # playlist; counted against the album's total_tracks): album id -> track ids.
    albums_read: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def albums_to_remember(self, failed_track_ids: Collection[str]) -> list[str]:
        """The albums read whole none of whose tracks is in ``failed_track_ids``
        (those failing the metadata suite are read again, to retry them)."""
        failed = set(failed_track_ids)
        return [album for album, tracks in self.albums_read.items() if not failed.intersection(tracks)]


def spotify_client(settings: ServiceSettings) -> spotipy.Spotify:
    """A spotipy client for ``settings``' endpoints, with retries left to us."""
    settings.require_spotify_credentials()
    auth = SpotifyClientCredentials(
        client_id=settings.spotify_client_id,
        client_secret=settings.spotify_client_secret.get_secret_value(),
        cache_handler=MemoryCacheHandler(),
        requests_timeout=settings.request_timeout_s,
    )
    # spotipy reads the token URL from the instance, so the stand-in (or a
    # proxy) can take the accounts service's place.
    auth.OAUTH_TOKEN_URL = f"{settings.spotify_accounts_base}/api/token"
    return api_client(settings, auth)


def api_client(settings: ServiceSettings, auth) -> spotipy.Spotify:
    """spotipy on ``settings``' Web API with the auth manager ``auth``, its
    own retries off (ours are tenacity's: :class:`_CallRetries`)."""
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

        async def once():
            async with self.semaphore:
                await self.limiter.acquire()
                return await asyncio.to_thread(getattr(self.client, method), *args, **kwargs)

        try:
            return await _CallRetries(self, method).retrying()(once)
        except SpotifyOauthError as error:  # raised while fetching a token, not by the API
            token_url = getattr(self.client.auth_manager, "OAUTH_TOKEN_URL", None)
            raise BadCredentials(
                f"Spotify's accounts service ({_service(token_url)}) refused the client credentials "
                f"({error.error}: {error.error_description}): check SPOTIFY_CLIENT_ID and SPOTIFY_CLIENT_SECRET"
            ) from error

    def _forget_token(self) -> None:
        auth = self.client.auth_manager
        cache = getattr(auth, "cache_handler", None)
        if cache is not None:
            cache.save_token_to_cache(None)


class _CallRetries:
    """tenacity's policy for one Spotify call, and what the call has spent on retries.

    Three kinds of failure are tried again, each within its own budget:

    - a 429 pauses the shared limiter for Retry-After (everyone waits, not only
      this request: the service said stop), and the call tries again when the
      pause ends, as long as the waits add up to no more than ``max_wait_s``;
    - a 401 (a token that expired between spotipy's check and the server's)
      tries again at once with a fresh token, ``TOKEN_RETRIES`` times;
    - a 5xx or a dropped connection backs off exponentially with jitter,
      ``SERVER_ERROR_ATTEMPTS`` tries in all, within ``max_wait_s`` too.

    Anything else, and a 401 past its budget, is raised as it is; a spent
    429 or 5xx budget raises :class:`RateLimited`.
    """

    def __init__(self, spotify: _Spotify, method: str):
        self.spotify = spotify
        self.method = method
        self.waited = 0.0
        self.server_errors = 0
        self.token_retries = 0
        # The failure being handled: its kind ("429", "401" or "5xx"), its Retry-After, a reason.
        self.kind = ""
        self.retry_after = 0.0
        self.reason = ""

    def retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(self._worth_retrying),
            after=self._note,
            wait=self._wait,
            stop=self._stop,
            before_sleep=self._before_retry,
            retry_error_callback=self._give_up,
        )

    def _worth_retrying(self, error: BaseException) -> bool:
        kind = _kind(error)
        return kind in ("429", "5xx") or (kind == "401" and self.token_retries < TOKEN_RETRIES)

    def _note(self, retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception()
        self.kind = _kind(error)
        if self.kind == "429":
            self.retry_after = retry_after_seconds((error.headers or {}).get("Retry-After"))
        elif self.kind == "401":
            self.token_retries += 1
        else:
            self.server_errors += 1
            status = getattr(error, "http_status", None)
            self.reason = f"server error {status}" if status is not None else type(error).__name__

    def _wait(self, retry_state: RetryCallState) -> float:
        if self.kind != "5xx":
            return 0.0  # a 429 waits in the limiter's pause, a 401 not at all
        return min(30.0, 0.25 * 2**self.server_errors) * random.uniform(0.5, 1.0)

    def _stop(self, retry_state: RetryCallState) -> bool:
        if self.kind == "429":
            return self.waited + self.retry_after > self.spotify.max_wait_s
        if self.kind == "5xx":
            return (
                self.server_errors >= SERVER_ERROR_ATTEMPTS
                or self.waited + retry_state.upcoming_sleep > self.spotify.max_wait_s
            )
        return False

    def _before_retry(self, retry_state: RetryCallState) -> None:
        method = self.method
        if self.kind == "429":
            # Everyone waits, not only this request: the service said stop.
            self.spotify.limiter.pause(self.retry_after + random.uniform(0, 0.25), f"429 on {method}, Retry-After")
            self.waited += self.retry_after
        elif self.kind == "401":
            # Forget the token, so that the next try fetches a fresh one.
            self.spotify._forget_token()
            error = retry_state.outcome.exception()
            log.warning("Spotify %s: %s; retrying with a fresh token", method, _message(error))
        else:
            log.warning("Spotify %s: %s; retrying in %.1f s", method, self.reason, retry_state.upcoming_sleep)
            self.waited += retry_state.upcoming_sleep

    def _give_up(self, retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception()
        method, max_wait_s = self.method, self.spotify.max_wait_s
        if self.kind == "429":
            raise RateLimited(
                f"Spotify {method}: rate limited (429) with Retry-After {self.retry_after:.0f} s "
                f"after waiting {self.waited:.0f} s; more than the {max_wait_s:.0f} s allowed"
                + (f" ({error.reason})" if getattr(error, "reason", None) else "")
            ) from error
        if isinstance(error, requests.ConnectionError) and not isinstance(error, requests.Timeout):
            url = getattr(getattr(error, "request", None), "url", None)
            raise Unreachable(
                f"Spotify {method}: cannot reach {_service(url)} ({self.server_errors} tries, "
                f"{self.waited:.0f} s): check SONUFY_SPOTIFY_API_BASE, SONUFY_SPOTIFY_ACCOUNTS_BASE and the network"
            ) from error
        if self.server_errors >= SERVER_ERROR_ATTEMPTS:
            raise RateLimited(f"Spotify {method}: still failing after {self.server_errors} tries ({self.reason})")
        raise RateLimited(f"Spotify {method}: still failing after waiting {self.waited:.0f} s ({self.reason})")


def _kind(error: BaseException) -> str | None:
    """Which retry budget a failed call's error draws on, if any."""
    if isinstance(error, spotipy.SpotifyException):
        status = error.http_status
        if status in (429, 401):
            return str(status)
        return "5xx" if status is not None and status >= 500 else None
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return "5xx"
    return None


# --------------------------------------------------------------------------- fetching (network)


#: Search filters Spotify applies to album searches only: ``tag:new`` (albums
#: of the last two weeks) and ``tag:hipster``. A query with one is searched for
#: albums, and each album not already known is then read track by track.
ALBUM_ONLY_FILTER = re.compile(r"(?<!\S)tag:(?:new|hipster)(?!\S)", re.IGNORECASE)
_QUOTED = re.compile(r'"[^"]*"')


def is_album_query(query: str) -> bool:
    """Whether Spotify answers ``query`` with albums only (it has ``tag:new`` or ``tag:hipster``,
    outside quotes)."""
    return ALBUM_ONLY_FILTER.search(_QUOTED.sub(" ", query)) is not None


async def _search_pages(
    spotify: _Spotify, query: str, kind: str, cap: int, result: ScrapeResult
) -> tuple[list[dict], int] | None:
    """The paging objects of one search for ``kind`` ("track" or "album"), up to
    ``cap`` items or the offset cap, and the total the API reported; None when
    the API refused the query (the reason goes to ``result.problems``)."""
    try:
        response = await spotify.call("search", q=query, limit=min(SEARCH_PAGE_SIZE, cap), offset=0, type=kind)
    except spotipy.SpotifyException as error:
        if error.http_status == 404:
            # /search exists wherever the Web API does: a 404 says the base
            # URL is not the API's, which no other query would fare better with.
            raise ServiceError(
                f"Spotify's search answered HTTP 404 at {spotify.client.prefix}search: no Web API there; "
                "check SONUFY_SPOTIFY_API_BASE (the API's origin, without /v1)"
            ) from error
        result.problems.append(f"query {query!r}: {_message(error)}")
        return None
    paging = response[kind + "s"]
    pagings: list[dict] = []
    fetched = 0
    while True:
        items = paging.get("items") or []
        if fetched + len(items) > cap:
            paging = {**paging, "items": items[: cap - fetched]}
        pagings.append(paging)
        fetched += len(paging.get("items") or [])
        next_offset = int(paging.get("offset", 0)) + int(paging.get("limit") or SEARCH_PAGE_SIZE)
        if fetched >= cap or not paging.get("next"):
            break
        if next_offset > SEARCH_MAX_OFFSET:  # Spotify would answer 400: stop here
            break
        response = await spotify.call("next", paging)
        paging = response[kind + "s"]
    return pagings, int(paging.get("total") or 0)


def _note_capped(result: ScrapeResult, query: str, kind: str, fetched: int, total: int, wanted: float) -> None:
    if fetched < min(total, wanted):
        result.capped.append(
            f"query {query!r} matches {total} {kind}s, but the API pages only up to offset "
            f"{SEARCH_MAX_OFFSET}: kept the first {fetched}; split the query (by year:, genre:...) "
            "to reach the rest"
        )


async def _search_one(spotify: _Spotify, query: str, max_items: int | None, result: ScrapeResult) -> list[SearchPage]:
    """Every page of one track search, following ``next``, up to the offset cap or ``max_items``."""
    wanted = max_items or float("inf")
    found = await _search_pages(spotify, query, "track", int(min(wanted, SEARCH_MAX_ITEMS)), result)
    if found is None:
        return []
    pagings, total = found
    pages = [SearchPage(query=query, offset=int(paging.get("offset", 0)), paging=paging) for paging in pagings]
    _note_capped(result, query, "track", sum(len(paging.get("items") or []) for paging in pagings), total, wanted)
    return pages


async def _search_new_albums(
    spotify: _Spotify,
    query: str,
    max_items: int | None,
    known_album_ids: frozenset[str],
    claimed: set[str],
    result: ScrapeResult,
    on_new_albums: Callable[[int], object] | None = None,
) -> list[SearchPage]:
    """The tracks of the albums an album-only query (``tag:new``) finds, but
    for albums an earlier scrape read whole (``known_album_ids``) or claimed
    by an earlier query of this scrape: a night with nothing new costs the
    album pages only (10 albums a page), not a page per 10 tracks.

    ``max_items`` caps the tracks, counted by each album's ``total_tracks``.
    ``on_new_albums`` is called with the number of new albums, when there
    are any, before their tracks are read.
    """
    wanted = max_items or float("inf")
    found = await _search_pages(spotify, query, "album", SEARCH_MAX_ITEMS, result)
    if found is None:
        return []
    pagings, total = found
    albums = [album for paging in pagings for album in paging.get("items") or [] if album and album.get("id")]
    _note_capped(result, query, "album", len(albums), total, float("inf"))
    fresh: list[dict] = []
    tracks = 0
    for album in albums:
        if album["id"] in known_album_ids:
            result.known_albums += 1
        elif album["id"] not in claimed and tracks < wanted:
            claimed.add(album["id"])
            fresh.append(album)
            tracks += int(album.get("total_tracks") or 0)
    if fresh and on_new_albums is not None:
        on_new_albums(len(fresh))
    found_tracks = await asyncio.gather(*(_album_tracks(spotify, album, result) for album in fresh))
    items = [track for album_tracks in found_tracks for track in album_tracks]
    if len(items) > wanted:
        items = items[: int(wanted)]
    paging = {"items": items, "total": len(items), "offset": 0, "next": None}
    return [SearchPage(query=query, offset=0, paging=paging, kind="album")]


def _phrase(text: str) -> str:
    """A search filter's value as a quoted phrase (quotes inside it dropped)."""
    return '"' + " ".join(str(text).replace('"', " ").split()) + '"'


async def _album_tracks(spotify: _Spotify, album: dict, result: ScrapeResult) -> list[dict]:
    """Full track objects (with ISRCs) of an album found by search.

    A track search on the album's name, year and artist returns full objects
    ten at a time, so an album of 12 tracks costs 2 requests; only the tracks
    that search did not return (kept by album id, so a namesake album's tracks
    never count) are read as ``/albums/{id}/tracks`` plus one ``/tracks/{id}``
    each, the exact but slower way."""
    album_id = album["id"]
    expected = int(album.get("total_tracks") or 0)
    query = f"album:{_phrase(album.get('name') or '')}"
    year = str(album.get("release_date") or "")[:4]
    if year.isdigit():
        query += f" year:{year}"
    artists = [artist.get("name") for artist in album.get("artists") or [] if isinstance(artist, dict)]
    if artists and artists[0] and album.get("album_type") != "compilation":
        query += f" artist:{_phrase(artists[0])}"
    tracks: dict[str, dict] = {}
    if expected:
        # A few pages beyond the album's own: namesakes may rank among its tracks.
        found = await _search_pages(spotify, query, "track", min(SEARCH_MAX_ITEMS, expected + 2 * SEARCH_PAGE_SIZE),
                                    result)
        for paging in found[0] if found is not None else []:
            for item in paging.get("items") or []:
                if item and item.get("id") and (item.get("album") or {}).get("id") == album_id:
                    tracks.setdefault(item["id"], item)
    if len(tracks) < expected or not expected:
        ids = await _album_track_ids(spotify, album_id, result)
        missing = [track_id for track_id in ids if track_id not in tracks]
        for track in await _full_tracks(spotify, album_id, missing, result):
            tracks[track["id"]] = track
    return list(tracks.values())


async def _album_track_ids(spotify: _Spotify, album_id: str, result: ScrapeResult) -> list[str]:
    """An album's track ids, in order, from ``/albums/{id}/tracks`` (no ISRC there)."""
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
    return track_ids


async def _full_tracks(spotify: _Spotify, album_id: str, track_ids: Sequence[str], result: ScrapeResult) -> list[dict]:
    """Full track objects, one ``/tracks/{id}`` each (batch ``/tracks?ids=`` is gone in 2026), concurrently."""

    async def full(track_id: str) -> dict | None:
        try:
            return await spotify.call("track", track_id)
        except spotipy.SpotifyException as error:
            result.problems.append(f"album {album_id}: track {track_id}: {_message(error)}")
            return None

    return [track for track in await asyncio.gather(*(full(t) for t in track_ids)) if track is not None]


async def _album(spotify: _Spotify, album_id: str, result: ScrapeResult) -> list[SearchPage]:
    """An album's tracks: ids from ``/albums/{id}/tracks``, then each ``/tracks/{id}``."""
    track_ids = await _album_track_ids(spotify, album_id, result)
    if not track_ids:
        return []
    tracks = await _full_tracks(spotify, album_id, track_ids, result)
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
    known_album_ids: Collection[str] = (),
    on_new_albums: Callable[[int], object] | None = None,
) -> ScrapeResult:
    """Every page of every query, album and playlist of ``config``, all concurrently.

    Pages come back in the configuration's order (queries, albums, playlists),
    whatever order the requests finished in. A query with an album-only filter
    (``tag:new``) is an album search, and albums in ``known_album_ids`` are
    not read again; ``on_new_albums(n)`` hears of the others before their
    tracks are read (a nightly starts what new tracks will need meanwhile).
    """
    spotify = _Spotify(client, limiter, asyncio.Semaphore(max(1, concurrency)), max_wait_s)
    result = ScrapeResult()
    known, claimed = frozenset(known_album_ids), set()

    def search(query: str):
        if is_album_query(query):
            return _search_new_albums(spotify, query, config.max_items_per_query, known, claimed, result,
                                      on_new_albums)
        return _search_one(spotify, query, config.max_items_per_query, result)

    jobs = [
        *(search(query) for query in config.queries),
        *(_album(spotify, album_id, result) for album_id in config.album_ids),
        *(_playlist(spotify, playlist_id, result) for playlist_id in config.playlist_ids),
    ]
    for pages in await asyncio.gather(*jobs):
        result.pages.extend(pages)
    result.albums_read = albums_read_whole(result.pages)
    result.requests = limiter.granted
    result.pauses = len(limiter.pauses)
    return result


def fetch_catalog(
    settings: ServiceSettings,
    config: ScrapeConfig,
    limiter: SharedLimiter | None = None,
    known_album_ids: Collection[str] = (),
    on_new_albums: Callable[[int], object] | None = None,
) -> ScrapeResult:
    """Synchronous entry point: a client and a shared limiter, then the whole scrape."""
    client = spotify_client(settings)
    limiter = limiter or spotify_limiter(settings)
    return asyncio.run(scrape(
        client, config, limiter, settings.spotify_concurrency, settings.spotify_max_wait_s, known_album_ids,
        on_new_albums,
    ))


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


def albums_read_whole(pages: Sequence[SearchPage]) -> dict[str, tuple[str, ...]]:
    """The albums whose every track is among the pages' full track objects
    (as many distinct tracks as the album's ``total_tracks``): album id -> track ids."""
    found: dict[str, set[str]] = {}
    totals: dict[str, int] = {}
    for page in pages:
        for item in page.paging.get("items") or []:
            track = _track_of(item, page.kind) if isinstance(item, dict) else None
            album = (track or {}).get("album")
            if not isinstance(album, dict) or not album.get("id") or not track.get("id"):
                continue
            found.setdefault(album["id"], set()).add(track["id"])
            totals[album["id"]] = int(album.get("total_tracks") or 0)
    return {album: tuple(sorted(ids)) for album, ids in found.items() if 0 < totals[album] <= len(ids)}


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
