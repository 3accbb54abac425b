"""A local stand-in for Spotify's Web API and accounts service and Deezer's public API and CDN.

The Sonufy pipeline talks to Spotify (metadata) and Deezer (previews). For
demos and tests it talks to this server instead: the real clients (spotipy,
plain HTTP for Deezer) are only pointed at other base URLs. The server answers
with JSON shaped like the real services as of 2026 (Spotify's development-mode
restrictions included), serves synthetic previews from
:mod:`sonufy_demo.synth`, and can inject the failures a real crawl meets:
429s with ``Retry-After``, 5xx, latency, Deezer's quota errors (HTTP 200 with
an error body), connection resets, truncated or non-audio mp3 downloads and
expired signed CDN URLs. It also serves a few playlists the app owns (and
refuses others, as 2026's development mode does), can re-release tracks on
compilations (a new track id, the same ISRC) and can serve malformed track
objects, so that deduplication and the metadata checks meet real cases.

It also acts as a listener's account for ``--to-spotify``: the Authorization
Code flow with PKCE (``/authorize`` approves at once and redirects with a
code; the token endpoint checks the ``code_verifier`` against the S256
``code_challenge`` and rotates refresh tokens), ``/v1/me``, the user's
playlists (``GET``/``POST /v1/me/playlists``) and a playlist's items
(``POST`` adds, ``PUT`` replaces, at most 100 a request, as in 2026).

Run it in the foreground with ``python -m sonufy_demo.standin --port 8765``,
or in-process with ``with StandIn(StandInConfig(n_tracks=60)) as server: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import concurrent.futures
import datetime
import hashlib
import hmac
import json
import random
import re
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import BasicAuth, web

from sonufy_demo.synth import (
    CatalogTrack,
    PreviewCache,
    build_catalog,
    build_compilations,
    build_new_releases,
    is_new_release,
)
from sonufy_model.config import ServiceSettings

__all__ = ["DEFECTS", "DEMO_PLAYLIST_IDS", "Faults", "StandIn", "StandInConfig", "main"]

_SEARCH_MAX_LIMIT = 10  # development-mode cap since February 2026
_SEARCH_MAX_OFFSET = 1000
_ALBUM_TRACKS_MAX_LIMIT = 50
_PLAYLIST_ITEMS_MAX_LIMIT = 50
_PLAYLIST_WRITE_MAX_ITEMS = 100  # uris per add or replace request
_MY_PLAYLISTS_MAX_LIMIT = 50
_AUTHORIZATION_CODE_TTL_S = 600
_TRACK_URI = re.compile(r"^spotify:track:([0-9A-Za-z]{22})$")
_PLAYLIST_WRITE_SCOPES = frozenset({"playlist-modify-private", "playlist-modify-public"})
_DEEZER_DEFAULT_LIMIT = 25
_DEEZER_MAX_LIMIT = 100
_TRUNCATED_BYTES = (2048, 8192)  # a broken download keeps only a few KB
_RESET_AFTER_SHARE = (0.1, 0.6)  # a reset preview download sends this share of its body first
# What a CDN error page served as audio looks like: HTML, not mp3 frames.
_GARBAGE_BODY = (
    b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head><body>"
    + b"<p>The server is temporarily unable to service your request.</p>" * 300
    + b"</body></html>"
)
_EXPIRED_TOKEN_MEMORY_S = 86_400  # remember expired tokens this long, to answer "expired" rather than "invalid"
_SHUTDOWN_TIMEOUT_S = 2.0
_PREVIEW_ROUTES = ("/deezer-cdn/", "/spotify-cdn/")
_RESET_MID_BODY = web.RequestKey("reset_mid_body", bool)  # set by the fault middleware, read by _mp3
_BASE62_ID = re.compile(r"^[0-9A-Za-z]{22}$")
_QUERY_TOKEN = re.compile(
    r'(?P<field>[A-Za-z_]+):(?:"(?P<quoted>[^"]*)"|(?P<bare>\S+))'  # field:"two words" or field:word
    r'|"(?P<phrase>[^"]*)"'  # "a quoted phrase"
    r"|(?P<word>\S+)"  # a free word
)
_QUERY_FIELDS = frozenset({"artist", "track", "album", "genre", "year", "isrc", "tag"})
_YEAR_RANGE = re.compile(r"^(\d{4})(?:-(\d{4}))?$")

#: Endpoints Spotify closed to development-mode apps (November 2024 and February 2026).
_REMOVED_ENDPOINTS = (
    "/v1/tracks",
    "/v1/albums",
    "/v1/artists",
    "/v1/browse/new-releases",
    "/v1/browse/categories",
    "/v1/browse/featured-playlists",
    "/v1/recommendations",
    "/v1/recommendations/available-genre-seeds",
    "/v1/audio-features",
    "/v1/audio-features/{track_id}",
    "/v1/audio-analysis/{track_id}",
    "/v1/artists/{artist_id}/top-tracks",
    "/v1/artists/{artist_id}/related-artists",
    "/v1/playlists/{playlist_id}/tracks",  # renamed to /items in February 2026
)
#: Writes Spotify closed in February 2026 (POST /me/playlists creates a playlist now).
_REMOVED_WRITES = (
    "/v1/users/{user_id}/playlists",
    "/v1/playlists/{playlist_id}/tracks",
)

#: Spotify's own id of "Various Artists", the album artist of compilations.
_VARIOUS_ARTISTS_ID = "0LyfQWJT6nXafLPZqxe9Of"
#: Spotify's editorial playlists (ids starting like this) are not the app's: 403 since 2026.
_EDITORIAL_PLAYLIST_PREFIX = "37i9dQZF1"
#: What a malformed track object gets wrong (Faults.malformed_share).
DEFECTS = ("isrc", "name", "duration", "artist")


@dataclass
class Faults:
    """Failures to inject, each as a share of the requests it can affect.

    ``rate_429``, ``rate_5xx`` and ``deezer_quota_rate`` hit API routes (``/v1/*``,
    ``/deezer/*``; never the token endpoint), ``truncate_share`` hits preview
    downloads, ``latency_ms`` is added to every request. ``reset_rate`` cuts the
    connection of requests to ``reset_routes`` (before any answer on API
    routes, part-way through the body on preview downloads), ``garbage_share``
    answers preview downloads with a body that is not audio (served as
    ``audio/mpeg`` all the same), and ``expired_url_share`` signs Deezer preview
    URLs that have already expired. Decisions come from a
    ``random.Random(seed)``, so a run with the same requests in the same order
    meets the same faults; a fault left at 0 draws no random number.
    """

    rate_429: float = 0.0
    retry_after_s: int = 1
    rate_5xx: float = 0.0
    latency_ms: int = 0
    truncate_share: float = 0.0
    deezer_quota_rate: float = 0.0
    reset_rate: float = 0.0
    reset_routes: tuple[str, ...] = ("/v1/", "/deezer/", "/deezer-cdn/", "/spotify-cdn/")
    garbage_share: float = 0.0
    expired_url_share: float = 0.0
    seed: int = 0
    # Share of tracks whose track objects come malformed, the same way every
    # time (a hyphenated ISRC, an empty name, a 0 ms duration or an artist
    # without a name; see StandIn.defect_of). Draws no random number.
    malformed_share: float = 0.0


@dataclass
class StandInConfig:
    """What the stand-in serves and how it behaves; the defaults mimic 2026's real services."""

    n_tracks: int = 300
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port
    client_id: str = "sonufy-demo"
    client_secret: str = "sonufy-demo-secret"
    token_ttl_s: int = 3600
    preview_url_share: float = 0.0  # Spotify's preview_url is null for new apps since November 2024
    deezer_missing_share: float = 0.0  # share of ISRCs Deezer does not know
    signed_url_ttl_s: int = 300
    cache_dir: Path | None = None  # None: a temporary directory removed on stop()
    today: datetime.date | None = None
    faults: Faults = field(default_factory=Faults)
    # Share of tracks also released on a later compilation: a new track id, the
    # same ISRC (see synth.build_compilations). Search and the album and track
    # endpoints serve them; Deezer knows each ISRC once, as the original.
    compilation_share: float = 0.0
    # Tracks by new artists released today, in addition to the catalog (see
    # synth.build_new_releases): what a nightly refresh finds with tag:new.
    # A stand-in with more of them is the same catalog a few nights later.
    new_tracks: int = 0
    # The listener's account (--to-spotify): the redirect URIs registered for
    # the app (any other is refused, as Spotify does), the user's id, and
    # whether the listener refuses the app at /authorize.
    redirect_uris: tuple[str, ...] = ("http://127.0.0.1:8888/callback",)
    user_id: str = "sonufy-listener"
    authorize_denies: bool = False


# --------------------------------------------------------------------------- helpers


def _unit_interval(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1), used to pick which tracks have a property."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _origin(request: web.Request) -> str:
    """Scheme and host the client used, so absolute URLs point back at this server."""
    return str(request.url.origin())


def _spotify_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"status": status, "message": message}}, status=status, headers=headers)


def _deezer_error(kind: str, message: str, code: int) -> web.Response:
    """Deezer reports errors with HTTP 200 and an ``error`` object."""
    return web.json_response({"error": {"type": kind, "message": message, "code": code}})


def _page_params(query: Mapping[str, str], max_limit: int) -> tuple[int, int] | web.Response:
    """``limit`` (1..max_limit, default 20) and ``offset`` (>= 0) of a paged endpoint, or its 400."""
    limit = _int_param(query, "limit", 20)
    if limit is None or not 1 <= limit <= max_limit:
        return _spotify_error(400, "Invalid limit")
    offset = _int_param(query, "offset", 0)
    if offset is None or offset < 0:
        return _spotify_error(400, "Invalid offset")
    return limit, offset


def _int_param(query: Mapping[str, str], name: str, default: int) -> int | None:
    """The integer query parameter ``name``, ``default`` when absent, None when not an integer."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Query:
    """A parsed search string: free words plus ``field:value`` filters (Spotify's syntax, also Deezer's)."""

    words: tuple[str, ...]
    filters: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> "_Query":
        words: list[str] = []
        filters: list[tuple[str, str]] = []
        for match in _QUERY_TOKEN.finditer(text):
            name = (match["field"] or "").lower()
            if name in _QUERY_FIELDS:
                value = match["quoted"] if match["quoted"] is not None else match["bare"]
                filters.append((name, value.lower().strip()))
            elif match["phrase"] is not None:
                words.extend(match["phrase"].lower().split())
            else:
                words.append(match.group(0).lower())
        return cls(tuple(words), tuple(filters))


@dataclass(frozen=True)
class _Record:
    """The searchable view of a track or an album (lower-cased)."""

    text: str  # what free words are matched against
    artist: str
    track: str
    album: str
    genre: str
    year: int
    isrcs: frozenset[str]
    new: bool

    def matches(self, query: _Query) -> bool:
        if not all(word in self.text for word in query.words):
            return False
        return all(self._matches_filter(name, value) for name, value in query.filters)

    def _matches_filter(self, name: str, value: str) -> bool:
        if name in ("artist", "track", "album"):
            return all(word in getattr(self, name) for word in value.split())
        if name == "genre":
            return " ".join(value.split()) == self.genre
        if name == "year":
            bounds = _YEAR_RANGE.match(value)
            if bounds is None:
                return False
            low = int(bounds[1])
            return low <= self.year <= int(bounds[2] or low)
        if name == "isrc":
            return value.upper() in self.isrcs
        return name == "tag" and value == "new" and self.new


@dataclass(frozen=True)
class _Album:
    album_id: str
    name: str
    artist_id: str
    artist: str
    release_date: str
    tracks: tuple[CatalogTrack, ...]  # in track-number order
    deezer_id: int
    album_type: str = "album"


class _CatalogIndex:
    """Look-ups and search records over a synthetic catalog, built once at start-up."""

    def search(self, kind: str, text: str, query: _Query) -> list:
        """The tracks or albums (``kind``) matching a search, most popular
        first. Remembered per query text: the catalog does not change while
        serving, and filtering 20,000 records on every page cost the stand-in
        124 ms a page, time a benchmark would charge to the client."""
        found = self._searched.get((kind, text))
        if found is None:
            if kind == "track":
                found = [t for t in self.tracks_by_rank if self.track_records[t.track_id].matches(query)]
            else:
                found = [a for a in self.albums_by_rank if self.album_records[a.album_id].matches(query)]
            self._searched[(kind, text)] = found
        return found

    def __init__(self, catalog: list[CatalogTrack], today: datetime.date, compilations: list[CatalogTrack] = ()):
        self._searched: dict[tuple[str, str], list] = {}
        # Deezer knows each recording once, as the original; Spotify serves re-releases too.
        self.by_deezer_id = {track.deezer_id: track for track in catalog}
        self.by_isrc = {track.isrc: track for track in catalog}
        self.deezer_tracks_by_rank = sorted(catalog, key=lambda track: (-track.popularity, track.index))
        catalog = [*catalog, *compilations]
        self.by_id = {track.track_id: track for track in catalog}
        self.artist_deezer_ids: dict[str, int] = {}
        grouped: dict[str, list[CatalogTrack]] = collections.defaultdict(list)
        for track in catalog:
            grouped[track.album_id].append(track)
            self.artist_deezer_ids.setdefault(track.artist_id, 1_000 + len(self.artist_deezer_ids))
        self.albums: dict[str, _Album] = {}
        for number, (album_id, tracks) in enumerate(grouped.items()):
            first = tracks[0]
            various = len({track.artist_id for track in tracks}) > 1
            self.albums[album_id] = _Album(
                album_id=album_id,
                name=first.album,
                artist_id=_VARIOUS_ARTISTS_ID if various else first.artist_id,
                artist="Various Artists" if various else first.artist,
                release_date=first.release_date,
                tracks=tuple(sorted(tracks, key=lambda track: track.track_number)),
                deezer_id=300_000 + number,
                album_type="compilation" if various else "album",
            )
        # Search answers in a stable order: most popular first.
        self.tracks_by_rank = sorted(catalog, key=lambda track: (-track.popularity, track.index))
        self.track_records = {
            track.track_id: _Record(
                text=f"{track.title} {track.artist} {track.album} {track.style}".lower(),
                artist=track.artist.lower(),
                track=track.title.lower(),
                album=track.album.lower(),
                genre=track.style,
                year=int(track.release_date[:4]),
                isrcs=frozenset({track.isrc}),
                new=is_new_release(track.release_date, today),
            )
            for track in catalog
        }
        self.albums_by_rank = sorted(
            self.albums.values(),
            key=lambda album: (-max(track.popularity for track in album.tracks), album.tracks[0].index),
        )
        self.album_records = {
            album.album_id: _Record(
                text=f"{album.name} {album.artist} {album.tracks[0].style}".lower(),
                artist=album.artist.lower(),
                track=" | ".join(track.title.lower() for track in album.tracks),
                album=album.name.lower(),
                genre=album.tracks[0].style,
                year=int(album.release_date[:4]),
                isrcs=frozenset(track.isrc for track in album.tracks),
                new=is_new_release(album.release_date, today),
            )
            for album in self.albums.values()
        }


@dataclass(frozen=True)
class _Grant:
    """An authorization code /authorize issued, until the token endpoint takes it (once)."""

    redirect_uri: str
    code_challenge: str
    scope: str
    expires: float


@dataclass
class _UserPlaylist:
    """A playlist in the listener's account: what ``POST /v1/me/playlists`` made and the items since."""

    playlist_id: str
    name: str
    description: str
    public: bool
    track_ids: list[str] = field(default_factory=list)
    snapshots: int = 1


@dataclass(frozen=True)
class _Playlist:
    playlist_id: str
    name: str
    owner_id: str
    # Catalog tracks, or (name, artist, duration_ms) for a local file.
    entries: tuple[CatalogTrack | tuple[str, str, int], ...]
    added_at: str = "2026-01-01T00:00:00Z"


#: The demo playlists' ids: fixed, readable, and valid base62 ids.
DEMO_PLAYLIST_IDS = {
    "each_style": "SonufyDemoEachStyle001",
    "deep_cuts": "SonufyDemoDeepCuts0002",
    "reissues": "SonufyDemoReissues0003",
}


def _demo_playlists(
    catalog: list[CatalogTrack], compilations: list[CatalogTrack], owner_id: str
) -> dict[str, _Playlist]:
    """A few playlists the app owns, over the demo catalog.

    "each style": the first track of every style, and a local file (no id, as in
    real playlists); "deep cuts": every third track (more than one page from 150
    tracks up); "reissues": each re-released track next to its original (the
    first five tracks when there are no compilations).
    """
    first_of_style: dict[str, CatalogTrack] = {}
    for track in catalog:
        first_of_style.setdefault(track.style, track)
    by_isrc = {track.isrc: track for track in catalog}
    reissues: list[CatalogTrack] = []
    for track in compilations:
        reissues.extend((track, by_isrc[track.isrc]))
    playlists = [
        _Playlist(DEMO_PLAYLIST_IDS["each_style"], "Sonufy Demo: One of Each Style", owner_id,
                  (*first_of_style.values(), ("My Demo Tape", "Me", 181_000))),
        _Playlist(DEMO_PLAYLIST_IDS["deep_cuts"], "Sonufy Demo: Deep Cuts", owner_id, tuple(catalog[::3])),
        _Playlist(DEMO_PLAYLIST_IDS["reissues"], "Sonufy Demo: Reissues", owner_id,
                  tuple(reissues) if reissues else tuple(catalog[:5])),
    ]
    return {playlist.playlist_id: playlist for playlist in playlists}


# --------------------------------------------------------------------------- server


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StandIn:
    """The stand-in services, served by aiohttp on a daemon thread with its own event loop.

    ``start()`` returns once the server listens; ``stop()`` shuts it down. The
    catalog is available before ``start()``; URLs only after. ``stats`` counts
    requests per route (``"GET /v1/search"``), injected faults (``"fault 429"``,
    ``"fault 5xx"``, ``"fault deezer quota"``, ``"fault truncated"``, ``"fault reset"``,
    ``"fault garbage"``, ``"fault expired url"``) and issued
    tokens (``"tokens issued"``; the listener's: ``"codes issued"``, ``"user
    tokens issued"``, ``"tokens refreshed"``) and requests refused for an
    expired token (``"expired token"``); it is written on the server thread only, so
    reading it afterwards from another thread is safe enough.
    """

    def __init__(self, config: StandInConfig | None = None):
        self.config = config or StandInConfig()
        self.today = self.config.today or datetime.date.today()
        self.catalog: list[CatalogTrack] = build_catalog(self.config.n_tracks, seed=self.config.seed, today=self.today)
        self.stats: collections.Counter[str] = collections.Counter()
        #: Re-releases of catalog tracks (same ISRC, new track id), served in addition to ``catalog``.
        self.compilations: list[CatalogTrack] = build_compilations(
            self.catalog, self.config.compilation_share, seed=self.config.seed, today=self.today
        )
        #: The demo playlists the app "owns", by id (see _demo_playlists).
        self.playlists: dict[str, _Playlist] = _demo_playlists(self.catalog, self.compilations, self.config.client_id)
        #: Tracks released today (config.new_tracks), served as part of ``catalog``.
        self.new_releases: list[CatalogTrack] = build_new_releases(
            self.config.new_tracks, len(self.catalog) + len(self.compilations), seed=self.config.seed, today=self.today
        )
        self.catalog = [*self.catalog, *self.new_releases]
        self._index = _CatalogIndex(self.catalog, self.today, self.compilations)
        self._fault_rng = random.Random(self.config.faults.seed)
        self._url_key = secrets.token_bytes(32)
        self._tokens: dict[str, float] = {}  # access token -> expiry (unix time)
        self._user_scopes: dict[str, frozenset[str]] = {}  # a listener's access token -> its scopes
        self._codes: dict[str, _Grant] = {}  # authorization code -> what it was issued for
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> scope (each used once: rotated)
        #: The listener's playlists, by id, in the order made.
        self.user_playlists: dict[str, _UserPlaylist] = {}
        self._render_locks: dict[str, asyncio.Lock] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._temp_dir: tempfile.TemporaryDirectory[str] | None = None
        self._cache: PreviewCache | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._startup_error: BaseException | None = None

    def genre_queries(self, cap: int = _SEARCH_MAX_OFFSET) -> list[str]:
        """One ``genre:"..."`` search per style, split into ``year:A-B`` ranges
        where a style has more than ``cap`` searchable tracks (re-releases
        included), so that a scrape reaches every track under the search's
        offset cap: what a user of the real API does with a large genre.
        A catalog small enough keeps one query per style."""
        years_by_genre: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        for record in self._index.track_records.values():
            years_by_genre[record.genre][record.year] += 1
        queries: list[str] = []
        for genre in sorted(years_by_genre, key=lambda g: min(t.index for t in self.catalog if t.style == g)):
            years = years_by_genre[genre]
            if sum(years.values()) <= cap:
                queries.append(f'genre:"{genre}"')
                continue
            first, previous, count = None, 0, 0
            for year in sorted(years):
                if first is not None and count + years[year] > cap:
                    queries.append(f'genre:"{genre}" year:{first}-{previous}')
                    first, count = None, 0
                if first is None:
                    first = year
                count += years[year]
                previous = year
            queries.append(f'genre:"{genre}" year:{first}-{previous}')
        return queries

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "StandIn":
        """Start serving; returns once the socket listens. A StandIn starts only once."""
        if self._thread is not None:
            raise RuntimeError("this StandIn was already started")
        if self.config.cache_dir is None:
            self._temp_dir = tempfile.TemporaryDirectory(prefix="sonufy-standin-")
            cache_dir = Path(self._temp_dir.name)
        else:
            cache_dir = Path(self.config.cache_dir)
        self._cache = PreviewCache(cache_dir)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sonufy-render")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="sonufy-standin", daemon=True)
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._release_resources()
            raise RuntimeError(f"stand-in failed to start: {self._startup_error}") from self._startup_error
        return self

    def service_settings(self, **changes) -> ServiceSettings:
        """Settings that point Sonufy's real clients at this stand-in, with its demo credentials."""
        return ServiceSettings(
            spotify_client_id=self.config.client_id,
            spotify_client_secret=self.config.client_secret,
            spotify_api_base=self.spotify_api_base,
            spotify_accounts_base=self.spotify_accounts_base,
            deezer_api_base=self.deezer_api_base,
            **changes,
        )

    def stop(self) -> None:
        """Close the server, wait for the thread and remove the temporary preview cache."""
        if self._thread is None or self._loop is None or not self._thread.is_alive():
            self._release_resources()
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._release_resources()

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as error:  # reported to start(), which re-raises it
            self._startup_error = error
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _listen(self) -> None:
        self._runner = web.AppRunner(self._build_app(), shutdown_timeout=_SHUTDOWN_TIMEOUT_S, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self._port = self._runner.addresses[0][1]

    def _release_resources(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None

    # ------------------------------------------------------------------ public URLs

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the stand-in is not started")
        return f"http://{self.config.host}:{self._port}"

    @property
    def spotify_api_base(self) -> str:
        """Where the Web API lives; its paths start with ``/v1``."""
        return self.base_url

    @property
    def spotify_accounts_base(self) -> str:
        """Where the accounts service lives; the token endpoint is ``/api/token``."""
        return self.base_url

    @property
    def deezer_api_base(self) -> str:
        return f"{self.base_url}/deezer"

    # ------------------------------------------------------------------ app

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._count_middleware(), self._fault_middleware(), self._auth_middleware()])
        router = app.router
        router.add_post("/api/token", self._token)
        router.add_get("/authorize", self._authorize)

        def get(path: str, handler: Handler) -> None:
            # spotipy asks for some paths with a trailing slash ("tracks/?ids=", "albums/{id}/tracks/").
            router.add_get(path, handler)
            router.add_get(path + "/", handler)

        get("/v1/search", self._search)
        get("/v1/tracks/{track_id}", self._track)
        get("/v1/albums/{album_id}", self._album)
        get("/v1/albums/{album_id}/tracks", self._album_tracks)
        get("/v1/playlists/{playlist_id}/items", self._playlist_items)
        router.add_post("/v1/playlists/{playlist_id}/items", self._add_items)
        router.add_put("/v1/playlists/{playlist_id}/items", self._replace_items)
        get("/v1/me", self._me)
        get("/v1/me/playlists", self._my_playlists)
        router.add_post("/v1/me/playlists", self._create_playlist)
        for path in _REMOVED_ENDPOINTS:
            get(path, self._removed)
        for path in _REMOVED_WRITES:
            router.add_post(path, self._removed)
        router.add_route("*", "/v1/{tail:.*}", self._unknown_spotify_path)
        router.add_get("/spotify-cdn/mp3-preview/{track_id}", self._spotify_preview)
        get("/deezer/track/{key}", self._deezer_track)
        get("/deezer/search", self._deezer_search)
        router.add_get(r"/deezer-cdn/preview/{deezer_id:\d+}.mp3", self._deezer_preview)
        return app

    def _count_middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            route = resource.canonical.rstrip("/") if resource is not None else "<unmatched>"
            self.stats[f"{request.method} {route}"] += 1
            return await handler(request)

        return count

    def _fault_middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        faults = self.config.faults

        @web.middleware
        async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
            if faults.latency_ms:
                await asyncio.sleep(faults.latency_ms / 1000)
            if (
                faults.reset_rate
                and request.path.startswith(tuple(faults.reset_routes))
                and self._fault_rng.random() < faults.reset_rate
            ):
                self.stats["fault reset"] += 1
                if request.path.startswith(_PREVIEW_ROUTES):
                    request[_RESET_MID_BODY] = True  # _mp3 cuts the body part-way
                else:
                    assert request.transport is not None
                    request.transport.abort()  # the client sees the server disconnect
                    return web.Response(status=500)  # never written: the transport is gone
            if not request.path.startswith(("/v1/", "/deezer/")):
                return await handler(request)
            roll = self._fault_rng.random()
            if roll < faults.rate_429:
                self.stats["fault 429"] += 1
                return _spotify_error(429, "API rate limit exceeded", {"Retry-After": str(faults.retry_after_s)})
            if roll < faults.rate_429 + faults.rate_5xx:
                self.stats["fault 5xx"] += 1
                status = self._fault_rng.choice((502, 503))
                return _spotify_error(status, "Bad gateway." if status == 502 else "Service unavailable")
            if request.path.startswith("/deezer/") and self._fault_rng.random() < faults.deezer_quota_rate:
                self.stats["fault deezer quota"] += 1
                return _deezer_error("Exception", "Quota limit exceeded", 4)
            return await handler(request)

        return inject

    def _auth_middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith("/v1/"):
                return await handler(request)
            header = request.headers.get("Authorization")
            if not header:
                return _spotify_error(401, "No token provided")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return _spotify_error(400, "Only valid bearer authentication supported")
            expiry = self._tokens.get(token.strip())
            if expiry is None:
                return self._invalid_token("Invalid access token")
            if time.time() >= expiry:
                self.stats["expired token"] += 1
                return self._invalid_token("The access token expired")
            return await handler(request)

        return require_token

    @staticmethod
    def _invalid_token(message: str) -> web.Response:
        challenge = f'Bearer realm="spotify", error="invalid_token", error_description="{message}"'
        return _spotify_error(401, message, {"WWW-Authenticate": challenge})

    # ------------------------------------------------------------------ accounts service

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") in ("authorization_code", "refresh_token"):
            return self._listener_token(form)
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            try:
                credentials = BasicAuth.decode(header)
            except ValueError:
                credentials = None
            client_id, client_secret = (credentials.login, credentials.password) if credentials else (None, None)
        valid_client = hmac.compare_digest(str(client_id), self.config.client_id) and hmac.compare_digest(
            str(client_secret), self.config.client_secret
        )
        if not valid_client:
            return web.json_response({"error": "invalid_client", "error_description": "Invalid client"}, status=400)
        grant_type = form.get("grant_type")
        if grant_type != "client_credentials":
            description = (
                "grant_type parameter is missing"
                if not grant_type
                else "grant_type must be client_credentials, authorization_code or refresh_token"
            )
            return web.json_response({"error": "unsupported_grant_type", "error_description": description}, status=400)
        self.stats["tokens issued"] += 1
        return web.json_response(
            {"access_token": self._issue_token(), "token_type": "Bearer", "expires_in": self.config.token_ttl_s}
        )

    def _issue_token(self) -> str:
        """A new access token, valid for ``token_ttl_s``; expired ones are forgotten after a day."""
        now = time.time()
        self._tokens = {
            token: expiry for token, expiry in self._tokens.items() if expiry > now - _EXPIRED_TOKEN_MEMORY_S
        }
        token = "BQ" + secrets.token_urlsafe(64)
        self._tokens[token] = now + self.config.token_ttl_s
        return token

    @staticmethod
    def _oauth_error(error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=400)

    async def _authorize(self, request: web.Request) -> web.Response:
        """The listener's consent page, approved at once: a redirect to ``redirect_uri``
        with a single-use code (or ``error=access_denied`` when the listener refuses).
        A wrong client or redirect URI is an error page, as Spotify shows, not a redirect."""
        query = request.query
        if query.get("client_id") != self.config.client_id:
            return web.Response(status=400, text="INVALID_CLIENT: Invalid client")
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in self.config.redirect_uris:
            return web.Response(status=400, text="INVALID_CLIENT: Invalid redirect URI")
        state = {"state": query["state"]} if "state" in query else {}

        def back(**params: str) -> web.Response:
            separator = "&" if "?" in redirect_uri else "?"
            raise web.HTTPFound(f"{redirect_uri}{separator}{urlencode({**params, **state})}")

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return back(error="invalid_request")
        if self.config.authorize_denies:
            return back(error="access_denied")
        code = secrets.token_urlsafe(48)
        self._codes[code] = _Grant(redirect_uri, query["code_challenge"], query.get("scope", ""),
                                   time.time() + _AUTHORIZATION_CODE_TTL_S)
        self.stats["codes issued"] += 1
        return back(code=code)

    def _listener_token(self, form: Mapping[str, str]) -> web.Response:
        """The token endpoint for a public client (PKCE, no secret): a code and
        its verifier, or a refresh token, for an access token and a new refresh token."""
        if form.get("client_id") != self.config.client_id:
            return self._oauth_error("invalid_client", "Invalid client")
        if form.get("grant_type") == "authorization_code":
            grant = self._codes.pop(str(form.get("code", "")), None)  # once, whatever happens next
            if grant is None or grant.expires < time.time():
                return self._oauth_error("invalid_grant", "Invalid authorization code")
            if form.get("redirect_uri") != grant.redirect_uri:
                return self._oauth_error("invalid_grant", "Invalid redirect URI")
            verifier = str(form.get("code_verifier", ""))
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
            if not verifier or not hmac.compare_digest(digest, grant.code_challenge):
                return self._oauth_error("invalid_grant", "code_verifier was incorrect")
            scope = grant.scope
            self.stats["user tokens issued"] += 1
        else:
            scope = self._refresh_tokens.pop(str(form.get("refresh_token", "")), None)
            if scope is None:
                return self._oauth_error("invalid_grant", "Invalid refresh token")
            self.stats["tokens refreshed"] += 1
        token = self._issue_token()
        self._user_scopes[token] = frozenset(scope.split())
        refresh = "AQ" + secrets.token_urlsafe(64)
        self._refresh_tokens[refresh] = scope
        return web.json_response({"access_token": token, "token_type": "Bearer", "scope": scope,
                                  "expires_in": self.config.token_ttl_s, "refresh_token": refresh})

    # ------------------------------------------------------------------ Spotify Web API

    def _has_preview_url(self, track: CatalogTrack) -> bool:
        return _unit_interval("spotify-preview", track.track_id) < self.config.preview_url_share

    @staticmethod
    def _artist_json(origin: str, artist_id: str, name: str) -> dict:
        return {
            "external_urls": {"spotify": f"https://open.spotify.com/artist/{artist_id}"},
            "href": f"{origin}/v1/artists/{artist_id}",
            "id": artist_id,
            "name": name,
            "type": "artist",
            "uri": f"spotify:artist:{artist_id}",
        }

    def _album_json(self, origin: str, album: _Album) -> dict:
        return {
            "album_type": album.album_type,
            "artists": [self._artist_json(origin, album.artist_id, album.artist)],
            "external_urls": {"spotify": f"https://open.spotify.com/album/{album.album_id}"},
            "href": f"{origin}/v1/albums/{album.album_id}",
            "id": album.album_id,
            "images": [],
            "name": album.name,
            "release_date": album.release_date,
            "release_date_precision": "day",
            "total_tracks": len(album.tracks),
            "type": "album",
            "uri": f"spotify:album:{album.album_id}",
        }

    def _track_json(self, origin: str, track: CatalogTrack, simplified: bool = False) -> dict:
        """A full track object, or the simplified one album endpoints return (no album, ISRC, popularity)."""
        body = {
            "artists": [self._artist_json(origin, track.artist_id, track.artist)],
            "disc_number": 1,
            "duration_ms": track.duration_ms,
            "explicit": track.explicit,
            "external_urls": {"spotify": f"https://open.spotify.com/track/{track.track_id}"},
            "href": f"{origin}/v1/tracks/{track.track_id}",
            "id": track.track_id,
            "is_local": False,
            "name": track.title,
            "preview_url": (
                f"{origin}/spotify-cdn/mp3-preview/{track.track_id}" if self._has_preview_url(track) else None
            ),
            "track_number": track.track_number,
            "type": "track",
            "uri": f"spotify:track:{track.track_id}",
        }
        if not simplified:
            body["album"] = self._album_json(origin, self._index.albums[track.album_id])
            body["external_ids"] = {"isrc": track.isrc}
            body["popularity"] = track.popularity
        defect = self.defect_of(track.track_id)
        if defect == "isrc" and not simplified:
            isrc = track.isrc
            body["external_ids"] = {"isrc": f"{isrc[:2]}-{isrc[2:5]}-{isrc[5:7]}-{isrc[7:]}".lower()}
        elif defect == "name":
            body["name"] = ""
        elif defect == "duration":
            body["duration_ms"] = 0
        elif defect == "artist":
            body["artists"][0]["name"] = ""
        return body

    def defect_of(self, track_id: str) -> str | None:
        """What the track's objects get wrong under ``Faults.malformed_share`` (one of DEFECTS), or None."""
        share = self.config.faults.malformed_share
        if not share or _unit_interval("malformed", track_id) >= share:
            return None
        return DEFECTS[int(_unit_interval("defect", track_id) * len(DEFECTS))]

    @staticmethod
    def _paging(
        request: web.Request,
        items: list[dict],
        *,
        limit: int,
        offset: int,
        total: int,
        params: dict[str, str],
        max_offset: int | None = None,
    ) -> dict:
        """Spotify's paging object; ``next`` stops at the end and, for search, at the offset cap."""

        def url(at: int) -> str:
            return f"{_origin(request)}{request.path}?{urlencode({**params, 'offset': at, 'limit': limit})}"

        next_offset = offset + limit
        has_next = limit > 0 and next_offset < total and (max_offset is None or next_offset <= max_offset)
        return {
            "href": url(offset),
            "items": items,
            "limit": limit,
            "next": url(next_offset) if has_next else None,
            "offset": offset,
            "previous": url(max(0, offset - limit)) if offset > 0 else None,
            "total": total,
        }

    async def _search(self, request: web.Request) -> web.Response:
        params = request.query
        text = params.get("q") or params.get("query") or ""
        if not text.strip():
            return _spotify_error(400, "No search query")
        types = params.get("type", "")
        if not types:
            return _spotify_error(400, "Missing parameter type")
        kinds = [kind.strip() for kind in types.split(",")]
        for kind in kinds:
            if kind not in ("track", "album"):
                return _spotify_error(400, f"Bad search type field {kind}")
        limit = _int_param(params, "limit", 5)
        if limit is None or not 0 <= limit <= _SEARCH_MAX_LIMIT:
            return _spotify_error(400, "Invalid limit")
        offset = _int_param(params, "offset", 0)
        if offset is None or not 0 <= offset <= _SEARCH_MAX_OFFSET:
            return _spotify_error(400, "Invalid offset")
        query = _Query.parse(text)
        link_params = {"query": text, "type": types}
        if "market" in params:
            link_params["market"] = params["market"]
        origin = _origin(request)
        body = {}
        for kind in kinds:
            if kind == "track":
                tracks = self._index.search("track", text, query)
                items = [self._track_json(origin, track) for track in tracks[offset:offset + limit]]
                total = len(tracks)
            else:
                albums = self._index.search("album", text, query)
                items = [self._album_json(origin, album) for album in albums[offset:offset + limit]]
                total = len(albums)
            body[kind + "s"] = self._paging(
                request, items, limit=limit, offset=offset, total=total, params=link_params,
                max_offset=_SEARCH_MAX_OFFSET,
            )
        return web.json_response(body)

    async def _track(self, request: web.Request) -> web.Response:
        track_id = request.match_info["track_id"]
        if not _BASE62_ID.match(track_id):
            return _spotify_error(400, "Invalid base62 id")
        track = self._index.by_id.get(track_id)
        if track is None:
            return _spotify_error(404, "Resource not found")
        return web.json_response(self._track_json(_origin(request), track))

    def _album_or_error(self, album_id: str) -> _Album | web.Response:
        if not _BASE62_ID.match(album_id):
            return _spotify_error(400, "Invalid base62 id")
        return self._index.albums.get(album_id) or _spotify_error(404, "Resource not found")

    async def _album(self, request: web.Request) -> web.Response:
        album = self._album_or_error(request.match_info["album_id"])
        if isinstance(album, web.Response):
            return album
        origin = _origin(request)
        body = self._album_json(origin, album)
        page = album.tracks[:_ALBUM_TRACKS_MAX_LIMIT]
        body["tracks"] = {
            "href": f"{origin}/v1/albums/{album.album_id}/tracks?offset=0&limit={_ALBUM_TRACKS_MAX_LIMIT}",
            "items": [self._track_json(origin, track, simplified=True) for track in page],
            "limit": _ALBUM_TRACKS_MAX_LIMIT,
            "next": None,
            "offset": 0,
            "previous": None,
            "total": len(album.tracks),
        }
        if len(album.tracks) > _ALBUM_TRACKS_MAX_LIMIT:
            body["tracks"]["next"] = (
                f"{origin}/v1/albums/{album.album_id}/tracks?offset={_ALBUM_TRACKS_MAX_LIMIT}"
                f"&limit={_ALBUM_TRACKS_MAX_LIMIT}"
            )
        return web.json_response(body)

    async def _album_tracks(self, request: web.Request) -> web.Response:
        album = self._album_or_error(request.match_info["album_id"])
        if isinstance(album, web.Response):
            return album
        page = _page_params(request.query, _ALBUM_TRACKS_MAX_LIMIT)
        if isinstance(page, web.Response):
            return page
        limit, offset = page
        origin = _origin(request)
        items = [self._track_json(origin, track, simplified=True) for track in album.tracks[offset:offset + limit]]
        return web.json_response(
            self._paging(request, items, limit=limit, offset=offset, total=len(album.tracks), params={})
        )

    async def _playlist_items(self, request: web.Request) -> web.Response:
        """A playlist's entries (2026: ``/items``, each entry's object under ``item``, ``track`` kept too).

        Development-mode apps read only playlists they own or collaborate on:
        the demo playlists here; an editorial playlist answers 403, any other 404.
        """
        playlist_id = request.match_info["playlist_id"]
        if not _BASE62_ID.match(playlist_id):
            return _spotify_error(400, "Invalid base62 id")
        playlist = self.playlists.get(playlist_id)
        mine = self.user_playlists.get(playlist_id)
        if mine is not None and self._listener(request) is None:  # the listener's own, read by the listener
            playlist = _Playlist(mine.playlist_id, mine.name, self.config.user_id,
                                 tuple(self._index.by_id[track_id] for track_id in mine.track_ids))
        if playlist is None:
            if playlist_id.startswith(_EDITORIAL_PLAYLIST_PREFIX):
                return _spotify_error(403, "Forbidden")
            return _spotify_error(404, "Resource not found")
        page = _page_params(request.query, _PLAYLIST_ITEMS_MAX_LIMIT)
        if isinstance(page, web.Response):
            return page
        limit, offset = page
        origin = _origin(request)
        added_by = {
            "id": playlist.owner_id,
            "type": "user",
            "uri": f"spotify:user:{playlist.owner_id}",
            "href": f"{origin}/v1/users/{playlist.owner_id}",
        }
        items = []
        for entry in playlist.entries[offset:offset + limit]:
            if isinstance(entry, CatalogTrack):
                obj = self._track_json(origin, entry)
            else:  # a local file: in the playlist, not in the catalog
                name, artist, duration_ms = entry
                obj = {
                    "album": {"id": None, "name": "Local Files", "type": "album", "uri": None},
                    "artists": [{"id": None, "name": artist, "type": "artist", "uri": None}],
                    "duration_ms": duration_ms,
                    "explicit": False,
                    "external_ids": {},
                    "id": None,
                    "is_local": True,
                    "name": name,
                    "popularity": 0,
                    "preview_url": None,
                    "type": "track",
                    "uri": f"spotify:local:{artist}:Local+Files:{name}:{duration_ms // 1000}".replace(" ", "+"),
                }
            items.append({
                "added_at": playlist.added_at,
                "added_by": added_by,
                "is_local": obj["is_local"],
                "item": obj,
                "track": obj,  # deprecated since February 2026, still sent
            })
        params = {}
        if "additional_types" in request.query:
            params["additional_types"] = request.query["additional_types"]
        return web.json_response(
            self._paging(request, items, limit=limit, offset=offset, total=len(playlist.entries), params=params)
        )

    # ------------------------------------------------------------------ the listener's account

    def _listener(self, request: web.Request, write: bool = False) -> web.Response | None:
        """None when the request's token is the listener's (with a playlist
        write scope when ``write``), else the error Spotify answers."""
        token = request.headers.get("Authorization", "").partition(" ")[2].strip()
        scopes = self._user_scopes.get(token)
        if scopes is None:
            return _spotify_error(401, "This request requires user authentication")
        if write and not scopes & _PLAYLIST_WRITE_SCOPES:
            return _spotify_error(403, "Insufficient client scope")
        return None

    def _user_json(self, origin: str) -> dict:
        user_id = self.config.user_id
        return {"display_name": "Sonufy Listener", "external_urls": {"spotify": f"https://open.spotify.com/user/{user_id}"},
                "href": f"{origin}/v1/users/{user_id}", "id": user_id, "type": "user", "uri": f"spotify:user:{user_id}"}

    def _user_playlist_json(self, origin: str, playlist: _UserPlaylist) -> dict:
        """A playlist object as 2026 has it: its items' count under ``items`` (``tracks`` before February)."""
        return {
            "collaborative": False, "description": playlist.description,
            "external_urls": {"spotify": f"https://open.spotify.com/playlist/{playlist.playlist_id}"},
            "href": f"{origin}/v1/playlists/{playlist.playlist_id}", "id": playlist.playlist_id, "images": [],
            "items": {"href": f"{origin}/v1/playlists/{playlist.playlist_id}/items", "total": len(playlist.track_ids)},
            "name": playlist.name, "owner": self._user_json(origin), "public": playlist.public,
            "snapshot_id": self._snapshot(playlist), "type": "playlist",
            "uri": f"spotify:playlist:{playlist.playlist_id}",
        }

    @staticmethod
    def _snapshot(playlist: _UserPlaylist) -> str:
        return base64.urlsafe_b64encode(f"{playlist.playlist_id}:{playlist.snapshots}".encode()).decode()

    async def _me(self, request: web.Request) -> web.Response:
        return self._listener(request) or web.json_response(self._user_json(_origin(request)))

    async def _my_playlists(self, request: web.Request) -> web.Response:
        """The listener's playlists, newest first, at most 50 a page."""
        refused = self._listener(request)
        if refused is not None:
            return refused
        page = _page_params(request.query, _MY_PLAYLISTS_MAX_LIMIT)
        if isinstance(page, web.Response):
            return page
        limit, offset = page
        newest_first = list(reversed(self.user_playlists.values()))
        items = [self._user_playlist_json(_origin(request), p) for p in newest_first[offset:offset + limit]]
        return web.json_response(
            self._paging(request, items, limit=limit, offset=offset, total=len(newest_first), params={}))

    async def _create_playlist(self, request: web.Request) -> web.Response:
        refused = self._listener(request, write=True)
        if refused is not None:
            return refused
        body = await self._json_body(request)
        if not isinstance(body, dict) or not str(body.get("name") or "").strip():
            return _spotify_error(400, "Missing required field: name")
        playlist_id = "".join(secrets.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
                              for _ in range(22))
        playlist = _UserPlaylist(playlist_id, str(body["name"]), str(body.get("description") or ""),
                                 bool(body.get("public", True)))
        self.user_playlists[playlist_id] = playlist
        return web.json_response(self._user_playlist_json(_origin(request), playlist), status=201)

    @staticmethod
    async def _json_body(request: web.Request):
        try:
            return await request.json() if request.can_read_body else None
        except json.JSONDecodeError:
            return None

    async def _uris_to_write(self, request: web.Request) -> tuple[_UserPlaylist, list[str]] | web.Response:
        """The listener's playlist a write names, and the track ids of its uris
        (a JSON list, ``{"uris": [...]}`` or ``?uris=a,b``), or the error Spotify answers."""
        refused = self._listener(request, write=True)
        if refused is not None:
            return refused
        playlist_id = request.match_info["playlist_id"]
        if not _BASE62_ID.match(playlist_id):
            return _spotify_error(400, "Invalid base62 id")
        playlist = self.user_playlists.get(playlist_id)
        if playlist is None:
            if playlist_id in self.playlists:
                return _spotify_error(403, "You cannot add tracks to a playlist you don't own.")
            return _spotify_error(404, "Resource not found")
        body = await self._json_body(request)
        uris = body.get("uris") if isinstance(body, dict) else body
        if uris is None and request.query.get("uris"):
            uris = request.query["uris"].split(",")
        if not isinstance(uris, list):
            return _spotify_error(400, "No uris provided")
        if len(uris) > _PLAYLIST_WRITE_MAX_ITEMS:
            return _spotify_error(400, f"You can add a maximum of {_PLAYLIST_WRITE_MAX_ITEMS} tracks per request.")
        track_ids = []
        for uri in uris:
            match = _TRACK_URI.match(str(uri))
            if match is None:
                return _spotify_error(400, f"Invalid track uri: {uri}")
            if match[1] not in self._index.by_id:
                return _spotify_error(400, "Payload contains a non-existing ID")
            track_ids.append(match[1])
        return playlist, track_ids

    async def _add_items(self, request: web.Request) -> web.Response:
        found = await self._uris_to_write(request)
        if isinstance(found, web.Response):
            return found
        playlist, track_ids = found
        position = _int_param(request.query, "position", len(playlist.track_ids))
        body = await self._json_body(request)
        if isinstance(body, dict) and isinstance(body.get("position"), int):
            position = body["position"]
        if position is None or not 0 <= position <= len(playlist.track_ids):
            return _spotify_error(400, "Index out of bounds")
        playlist.track_ids[position:position] = track_ids
        playlist.snapshots += 1
        return web.json_response({"snapshot_id": self._snapshot(playlist)}, status=201)

    async def _replace_items(self, request: web.Request) -> web.Response:
        found = await self._uris_to_write(request)
        if isinstance(found, web.Response):
            return found
        playlist, track_ids = found
        playlist.track_ids[:] = track_ids
        playlist.snapshots += 1
        return web.json_response({"snapshot_id": self._snapshot(playlist)})

    # ------------------------------------------------------------------ refusals

    async def _removed(self, request: web.Request) -> web.Response:
        return _spotify_error(403, "Forbidden: this endpoint is not available to apps in development mode")

    async def _unknown_spotify_path(self, request: web.Request) -> web.Response:
        return _spotify_error(404, "Service not found")

    # ------------------------------------------------------------------ previews

    async def _mp3(self, request: web.Request, track: CatalogTrack) -> web.StreamResponse:
        """The track's preview, rendered off the event loop, once even under concurrent requests."""
        assert self._cache is not None and self._executor is not None
        faults = self.config.faults
        lock = self._render_locks.setdefault(track.track_id, asyncio.Lock())
        async with lock:
            data = await asyncio.get_running_loop().run_in_executor(self._executor, self._cache.get, track)
        if self._fault_rng.random() < faults.truncate_share:
            self.stats["fault truncated"] += 1
            data = data[: self._fault_rng.randint(*_TRUNCATED_BYTES)]
        elif faults.garbage_share and self._fault_rng.random() < faults.garbage_share:
            self.stats["fault garbage"] += 1
            data = _GARBAGE_BODY
        if request.get(_RESET_MID_BODY):
            # Announce the whole body, send part of it, then drop the connection.
            response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: int(len(data) * self._fault_rng.uniform(*_RESET_AFTER_SHARE))])
            assert request.transport is not None
            request.transport.abort()
            return response
        return web.Response(body=data, content_type="audio/mpeg")

    async def _spotify_preview(self, request: web.Request) -> web.Response:
        track = self._index.by_id.get(request.match_info["track_id"])
        if track is None or not self._has_preview_url(track):
            return web.Response(status=404, text="Not found")
        return await self._mp3(request, track)

    def _signed_preview_url(self, origin: str, track: CatalogTrack) -> str:
        """A CDN URL signed like Akamai's ``hdnea`` tokens: expiry, path ACL and an HMAC over both."""
        path = f"/deezer-cdn/preview/{track.deezer_id}.mp3"
        expires = int(time.time()) + self.config.signed_url_ttl_s
        faults = self.config.faults
        if faults.expired_url_share and self._fault_rng.random() < faults.expired_url_share:
            self.stats["fault expired url"] += 1
            expires = int(time.time()) - 60  # signed by a node whose clock is ahead, or held too long
        token = f"exp={expires}~acl={path}"
        signature = hmac.new(self._url_key, token.encode(), hashlib.sha256).hexdigest()
        return f"{origin}{path}?hdnea={token}~hmac={signature}"

    def _signature_problem(self, request: web.Request) -> str | None:
        """Why the request's ``hdnea`` token is refused, or None when it is valid."""
        token = request.query.get("hdnea", "")
        signed, _, signature = token.rpartition("~hmac=")
        expected = hmac.new(self._url_key, signed.encode(), hashlib.sha256).hexdigest()
        if not signed or not hmac.compare_digest(signature, expected):
            return "Invalid URL signature"
        fields = dict(part.partition("=")[::2] for part in signed.split("~"))
        if fields.get("acl") != request.path:
            return "Invalid URL signature"
        if not fields.get("exp", "").isdigit() or time.time() > int(fields["exp"]):
            return "URL signature expired"
        return None

    async def _deezer_preview(self, request: web.Request) -> web.Response:
        problem = self._signature_problem(request)
        if problem is not None:
            return web.Response(status=403, text=problem)
        track = self._deezer_track_or_none(int(request.match_info["deezer_id"]))
        if track is None:
            return web.Response(status=404, text="Not found")
        return await self._mp3(request, track)

    # ------------------------------------------------------------------ Deezer API

    def _in_deezer(self, track: CatalogTrack) -> bool:
        return _unit_interval("deezer-missing", track.isrc) >= self.config.deezer_missing_share

    def _deezer_track_or_none(self, deezer_id: int) -> CatalogTrack | None:
        track = self._index.by_deezer_id.get(deezer_id)
        return track if track is not None and self._in_deezer(track) else None

    def _deezer_track_json(self, origin: str, track: CatalogTrack, in_search: bool = False) -> dict:
        """Deezer's track object; search results carry fewer fields (no ISRC, no position)."""
        album = self._index.albums[track.album_id]
        artist_id = self._index.artist_deezer_ids[track.artist_id]
        body = {
            "id": track.deezer_id,
            "readable": True,
            "title": track.title,
            "title_short": track.title,
            "title_version": "",
            "link": f"https://www.deezer.com/track/{track.deezer_id}",
            "duration": track.duration_ms // 1000,
            "rank": track.popularity * 10_000,
            "explicit_lyrics": track.explicit,
            "explicit_content_lyrics": 1 if track.explicit else 0,
            "explicit_content_cover": 0,
            "preview": self._signed_preview_url(origin, track),
            "artist": {
                "id": artist_id,
                "name": track.artist,
                "link": f"https://www.deezer.com/artist/{artist_id}",
                "type": "artist",
            },
            "album": {"id": album.deezer_id, "title": album.name, "cover_xl": None, "type": "album"},
            "type": "track",
        }
        if not in_search:
            body["isrc"] = track.isrc
            body["track_position"] = track.track_number
            body["disk_number"] = 1
            body["release_date"] = track.release_date
        return body

    async def _deezer_track(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if key.lower().startswith("isrc:"):
            track = self._index.by_isrc.get(key[5:].upper())
            track = track if track is not None and self._in_deezer(track) else None
        else:
            track = self._deezer_track_or_none(int(key)) if key.isdigit() else None
        if track is None:
            return _deezer_error("DataException", "no data", 800)
        return web.json_response(self._deezer_track_json(_origin(request), track))

    async def _deezer_search(self, request: web.Request) -> web.Response:
        params = request.query
        text = params.get("q", "")
        index = _int_param(params, "index", 0)
        limit = _int_param(params, "limit", _DEEZER_DEFAULT_LIMIT)
        if not text.strip():
            return _deezer_error("MissingParameterException", "Missing parameters: q", 501)
        if index is None or limit is None:
            return _deezer_error("ParameterException", "Wrong parameter", 500)
        index, limit = max(0, index), min(max(1, limit), _DEEZER_MAX_LIMIT)
        query = _Query.parse(text)
        matches = [
            track
            for track in self._index.deezer_tracks_by_rank
            if self._in_deezer(track) and self._index.track_records[track.track_id].matches(query)
        ]
        origin = _origin(request)
        body: dict = {
            "data": [self._deezer_track_json(origin, track, in_search=True) for track in matches[index:index + limit]],
            "total": len(matches),
        }

        def url(at: int) -> str:
            return f"{origin}/deezer/search?{urlencode({'q': text, 'index': at, 'limit': limit})}"

        if index > 0:
            body["prev"] = url(max(0, index - limit))
        if index + limit < len(matches):
            body["next"] = url(index + limit)
        return web.json_response(body)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    """Serve the stand-in in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m sonufy_demo.standin",
        description="Local stand-in for the Spotify Web API, Spotify accounts and Deezer (API and CDN).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--tracks", type=int, default=300, help="catalog size")
    parser.add_argument("--seed", type=int, default=0, help="catalog seed")
    parser.add_argument("--preview-url-share", type=float, default=0.0, help="share of non-null Spotify preview_url")
    parser.add_argument("--deezer-missing-share", type=float, default=0.0, help="share of ISRCs unknown to Deezer")
    parser.add_argument("--token-ttl", type=int, default=3600, help="access token lifetime, seconds")
    parser.add_argument("--signed-url-ttl", type=int, default=300, help="Deezer preview URL lifetime, seconds")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep rendered previews here")
    parser.add_argument("--rate-429", type=float, default=0.0, help="share of API requests answered 429")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After of injected 429s, seconds")
    parser.add_argument("--rate-5xx", type=float, default=0.0, help="share of API requests answered 502/503")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay added to every request")
    parser.add_argument("--truncate-share", type=float, default=0.0, help="share of preview downloads cut short")
    parser.add_argument("--deezer-quota-rate", type=float, default=0.0, help="share of Deezer calls over quota")
    parser.add_argument("--reset-rate", type=float, default=0.0, help="share of requests whose connection is cut")
    parser.add_argument("--garbage-share", type=float, default=0.0,
                        help="share of preview downloads that are not audio")
    parser.add_argument("--expired-url-share", type=float, default=0.0,
                        help="share of Deezer preview URLs issued already expired")
    parser.add_argument("--compilation-share", type=float, default=0.0,
                        help="share of tracks also on a later compilation (new track id, same ISRC)")
    parser.add_argument("--malformed-share", type=float, default=0.0,
                        help="share of tracks whose track objects are malformed")
    parser.add_argument("--fault-seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = StandInConfig(
        n_tracks=args.tracks,
        seed=args.seed,
        host=args.host,
        port=args.port,
        token_ttl_s=args.token_ttl,
        preview_url_share=args.preview_url_share,
        deezer_missing_share=args.deezer_missing_share,
        signed_url_ttl_s=args.signed_url_ttl,
        cache_dir=args.cache_dir,
        compilation_share=args.compilation_share,
        faults=Faults(
            rate_429=args.rate_429,
            retry_after_s=args.retry_after,
            rate_5xx=args.rate_5xx,
            latency_ms=args.latency_ms,
            truncate_share=args.truncate_share,
            deezer_quota_rate=args.deezer_quota_rate,
            reset_rate=args.reset_rate,
            garbage_share=args.garbage_share,
            expired_url_share=args.expired_url_share,
            malformed_share=args.malformed_share,
            seed=args.fault_seed,
        ),
    )
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    with StandIn(config) as server:
        print(f"Sonufy stand-in listening on {server.base_url} ({len(server.catalog)} tracks)")
        print(f"  Spotify API      {server.spotify_api_base}/v1/")
        print(f"  Spotify token    {server.spotify_accounts_base}/api/token")
        print(f"  Deezer API       {server.deezer_api_base}")
        print(f"  playlists        {', '.join(server.playlists)}")
        print(f"  client id        {config.client_id}")
        print(f"  client secret    {config.client_secret}", flush=True)
        stop_requested.wait()
    print("stand-in stopped", flush=True)


if __name__ == "__main__":
    main()
