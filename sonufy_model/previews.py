"""Preview audio: where to get each track's 30 s, and the download itself.

Sources are tried in a configured order: Spotify's own ``preview_url`` (null
for apps created after Nov 2024), then Deezer by ISRC, falling back to a
Deezer search by artist and title. Deezer signs preview URLs that expire
within minutes, so a URL is resolved right before each download attempt and
never stored.

Every URL is untrusted input: :class:`UrlPolicy` lets requests go only to
http(s) URLs on allowed hosts, and refuses loopback, link-local and private
addresses unless an exact allow-list entry names them (the stand-in's host,
when the stand-in is configured). It is checked before every request, on
every redirect, and again on the addresses a host name resolves to.

Downloads run concurrently on one aiohttp session: a bound on tracks in
flight, a per-host connection limit, a rate limiter per service (aiolimiter),
timeouts, retries with exponential backoff and jitter that honour
``Retry-After`` (tenacity), a size cap checked against ``Content-Length``
before reading and again while streaming, a check that the bytes decode as
audio of a plausible length, and an atomic write (temporary file, rename).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import itertools
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import aiohttp
import polars as pl
import soundfile as sf
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
from yarl import URL

from sonufy_model.config import ServiceSettings
from sonufy_model.names import normalise_name
from sonufy_model.retries import retry_after_seconds, wait_at_least_retry_after
from sonufy_model.schemas import PREVIEW_SCHEMA, quarantine_rows
from sonufy_model.store import Store

log = logging.getLogger(__name__)

MAX_PREVIEW_BYTES = 4 * 1024 * 1024  # a 30 s mp3 at 320 kbps is ~1.2 MB
MIN_PREVIEW_SECONDS = 20.0
MAX_PREVIEW_SECONDS = 40.0
DOWNLOAD_ATTEMPTS = 4
MAX_REDIRECTS = 3
DEEZER_WINDOW_S = 5.0
_CHUNK_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SAFE_TRACK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ISRC = re.compile(r"[A-Za-z0-9]{12}")
_QUERY_IN_TEXT = re.compile(r"(\w+://[^\s?'\"<>]+)\?[^\s'\"<>]*")

# A previews batch, plus why a track has none (null when it has one).
OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    **PREVIEW_SCHEMA,
    "error": pl.String,
}

DOWNLOAD_STATS_SCHEMA: dict[str, pl.DataType] = {
    "track_id": pl.String,
    "bytes": pl.Int64,
    "decodable": pl.Int64,
    "duration_s": pl.Float64,
}


class TransientError(RuntimeError):
    """Worth another try: a 429, a 5xx, a timeout, a truncated body, an expired URL."""

    def __init__(self, message: str, retry_after_s: float = 0.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(RuntimeError):
    """Not worth another try in this run: too big, refused, an unexpected status."""


class UrlRefused(PermanentError):
    """The URL guard refused a URL before any request was made."""


# --------------------------------------------------------------------------- the URL guard


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Not loopback, private, link-local, shared, reserved, unspecified or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _split_entry(entry: str) -> tuple[str, int | None]:
    """An allow-list entry ("host", "host:port", "[v6]:port") as (host, port or None)."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return _normal_host(host), int(port) if port else None


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs requests may go to.

    ``exact`` entries are trusted as named, loopback or private addresses
    included (that is how the stand-in on 127.0.0.1 is allowed); ``patterns``
    (entries with ``*``, which stands for part of one DNS label) match public
    host names only.
    """

    schemes: frozenset[str]
    exact: frozenset[tuple[str, int | None]]
    patterns: tuple[tuple[re.Pattern[str], int | None], ...]

    @classmethod
    def from_entries(cls, hosts: Iterable[str], schemes: Iterable[str] = ("http", "https")) -> "UrlPolicy":
        exact: set[tuple[str, int | None]] = set()
        patterns: list[tuple[re.Pattern[str], int | None]] = []
        for entry in hosts:
            host, port = _split_entry(entry)
            if not host:
                continue
            if "*" in host:
                regex = "".join("[^.]*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", host))
                patterns.append((re.compile(regex), port))
            else:
                exact.add((host, port))
        return cls(frozenset(s.lower() for s in schemes), frozenset(exact), tuple(patterns))

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> "UrlPolicy":
        """The settings' allow-list plus the hosts of their configured endpoints."""
        return cls.from_entries(settings.url_allow_list(), settings.allowed_schemes)

    def names(self, host: str, port: int | None) -> bool:
        """Whether an exact entry names this host (and port)."""
        host = _normal_host(host)
        return (host, None) in self.exact or (host, port) in self.exact

    def _matches_pattern(self, host: str, port: int | None) -> bool:
        return any(regex.fullmatch(host) and wanted in (None, port) for regex, wanted in self.patterns)

    def check(self, url: str | URL) -> URL:
        """The URL, parsed, if requests may go there; UrlRefused otherwise."""
        shown = _redact(str(url))
        try:
            parsed = url if isinstance(url, URL) else URL(str(url))
        except (ValueError, TypeError) as error:
            raise UrlRefused(f"{shown}: not a URL ({error})") from None
        scheme = (parsed.scheme or "").lower()
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            raise UrlRefused(f"{shown}: scheme {scheme or 'none'!r} is not allowed ({allowed} only)")
        if not parsed.raw_host:
            raise UrlRefused(f"{shown}: no host")
        if parsed.raw_user or parsed.raw_password:
            raise UrlRefused(f"{shown}: credentials in a URL are not allowed")
        host, port = _normal_host(parsed.raw_host), parsed.port
        if self.names(host, port):
            return parsed
        address = _ip(host)
        if address is not None:
            if not _is_public(address):
                raise UrlRefused(f"{shown}: {host} is a loopback, private or link-local address")
            raise UrlRefused(f"{shown}: {host} is not an allowed host")
        if host == "localhost" or host.endswith(".localhost"):
            raise UrlRefused(f"{shown}: {host} is a loopback host")
        if self._matches_pattern(host, port):
            return parsed
        raise UrlRefused(f"{shown}: {host} is not an allowed host")

    def allows(self, url: str | URL) -> bool:
        try:
            self.check(url)
        except UrlRefused:
            return False
        return True


class GuardedResolver(AbstractResolver):
    """DNS that refuses non-public addresses for hosts no exact entry names.

    A host name matched by a pattern (``cdn-preview-*.dzcdn.net``) must not
    resolve to 127.0.0.1 or 10.0.0.5: that would reach our own network.
    """

    def __init__(self, policy: UrlPolicy):
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._policy.names(host, port):
            return results
        public = [r for r in results if (a := _ip(r["host"])) is not None and _is_public(a)]
        if not public:
            raise UrlRefused(f"{host} resolves only to loopback, private or link-local addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


def _redact(url: str) -> str:
    """A URL without its query string (signed URLs carry their signature there) or credentials."""
    return re.sub(r"^(\w+://)[^/@?#]*@", r"\1", str(url).split("?", 1)[0])


def _redact_text(text: str) -> str:
    return _QUERY_IN_TEXT.sub(r"\1", text)


@asynccontextmanager
async def guarded_get(
    session: aiohttp.ClientSession, url: str | URL, policy: UrlPolicy, **kwargs
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET after the guard allowed the URL, following redirects only to allowed URLs."""
    target = policy.check(url)
    for _ in range(MAX_REDIRECTS + 1):
        async with session.get(target, allow_redirects=False, **kwargs) as response:
            location = response.headers.get("Location")
            if response.status in _REDIRECTS and location:
                target = policy.check(response.url.join(URL(location)))
                continue
            yield response
            return
    raise PermanentError(f"{_redact(str(url))}: more than {MAX_REDIRECTS} redirects")


# --------------------------------------------------------------------------- sources


class PreviewSource(Protocol):
    """Somewhere a track's preview may be found."""

    name: str

    async def resolve(self, session: aiohttp.ClientSession, track: dict) -> str | Path | None:
        """A URL to download now, a local file to use as it is, or None when this source has none."""


class SpotifyPreviewSource:
    """Spotify's own preview_url, kept from the catalog scrape (checked by the guard on download)."""

    name = "spotify"

    async def resolve(self, session: aiohttp.ClientSession, track: dict) -> str | None:
        return track.get("preview_url") or None


class DeezerPreviewSource:
    """Deezer's public API: by ISRC, else a search by artist and title.

    Its preview URLs are signed and short-lived, so they are resolved here,
    right before each download attempt. Quota errors arrive as HTTP 200 with
    ``{"error": {"code": 4}}`` and are retried after a pause; code 800 (no
    such ISRC) falls back to the search, whose results must match the
    track's artist and title (normalised), never just the first hit.
    """

    name = "deezer"

    def __init__(
        self,
        api_base: str,
        policy: UrlPolicy | None = None,
        limiter: AsyncLimiter | None = None,
        max_retry_after_s: float = 60.0,
        quota_wait_s: float = 5.0,
        search_limit: int = 10,
    ):
        self.api_base = api_base.rstrip("/")
        self.policy = policy or UrlPolicy.from_settings(ServiceSettings(deezer_api_base=self.api_base))
        self.limiter = limiter
        self.max_retry_after_s = max_retry_after_s
        self.quota_wait_s = quota_wait_s
        self.search_limit = search_limit

    async def resolve(self, session: aiohttp.ClientSession, track: dict) -> str | None:
        isrc = (track.get("isrc") or "").strip()
        if _ISRC.fullmatch(isrc):
            found = await self._api(session, f"/track/isrc:{isrc.upper()}")
            if found is not None and found.get("preview"):
                return found["preview"]
        return await self._search(session, track)

    async def _search(self, session: aiohttp.ClientSession, track: dict) -> str | None:
        artist, title = track.get("artist"), track.get("title")
        if not artist or not title:
            return None
        query = f'artist:"{artist.replace(chr(34), " ")}" track:"{title.replace(chr(34), " ")}"'
        found = await self._api(session, "/search", {"q": query, "limit": str(self.search_limit)})
        wanted = (normalise_name(artist), normalise_name(title))
        for item in (found or {}).get("data") or []:
            if not isinstance(item, dict) or not item.get("preview"):
                continue
            names = {normalise_name(item.get("title")), normalise_name(item.get("title_short"))}
            if normalise_name((item.get("artist") or {}).get("name")) == wanted[0] and wanted[1] in names:
                return item["preview"]
        return None

    async def _api(self, session: aiohttp.ClientSession, path: str, params: dict | None = None) -> dict | None:
        """A Deezer API answer; None for "no data" (code 800)."""
        url = URL(f"{self.api_base}{path}")
        if params:
            url = url.with_query(params)
        if self.limiter is not None:
            await self.limiter.acquire()
        async with guarded_get(session, url, self.policy) as response:
            _raise_for_transient_status(response, str(url), self.max_retry_after_s)
            if response.status != 200:
                raise PermanentError(f"Deezer {path}: HTTP {response.status}")
            try:
                payload = await response.json(content_type=None)
            except ValueError as error:
                raise TransientError(f"Deezer {path}: not JSON ({error})") from error
        if not isinstance(payload, dict):
            raise TransientError(f"Deezer {path}: unexpected answer")
        error = payload.get("error")
        if error:
            code = error.get("code") if isinstance(error, dict) else None
            if code in (4, 700):  # quota exceeded, service busy: HTTP 200 all the same
                raise TransientError(f"Deezer quota exceeded ({path}, code {code})", retry_after_s=self.quota_wait_s)
            if code == 800:
                return None
            message = error.get("message") if isinstance(error, dict) else error
            raise PermanentError(f"Deezer {path}: error {code}: {message}")
        return payload


class FolderPreviewSource:
    """The user's own files: a file whose ISRC tag, else artist and title, match the track.

    The file is analysed where it lies (never copied, never deleted); a whole
    song is analysed on an excerpt, like a folder source's tracks.
    """

    name = "folder"

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ValueError(f"preview folder {self.root} is not a directory")
        self._by_isrc, self._by_name = _folder_index(str(self.root))

    async def resolve(self, session: aiohttp.ClientSession, track: dict) -> Path | None:
        isrc = (track.get("isrc") or "").strip().upper()
        if isrc and isrc in self._by_isrc:
            return self._by_isrc[isrc]
        return self._by_name.get((normalise_name(track.get("artist")), normalise_name(track.get("title"))))


@lru_cache(maxsize=4)
def _folder_index(root: str) -> tuple[dict[str, Path], dict[tuple[str, str], Path]]:
    """ISRC -> file and (artist, title) -> file for every audio file under root (first wins)."""
    from sonufy_model.folder import audio_suffixes, describe_file

    by_isrc: dict[str, Path] = {}
    by_name: dict[tuple[str, str], Path] = {}
    suffixes = audio_suffixes()
    base = Path(root)
    for path in sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
        described = describe_file(path, base)
        if described.get("isrc"):
            by_isrc.setdefault(str(described["isrc"]).replace("-", "").upper(), path)
        by_name.setdefault((normalise_name(described["artist"]), normalise_name(described["title"])), path)
    return by_isrc, by_name


def _local_file(path: Path) -> tuple[int, float]:
    """Size and duration of a local file, or PermanentError if it is not audio."""
    try:
        duration = float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise PermanentError(f"{path}: does not decode as audio ({error})") from error
    if duration < MIN_PREVIEW_SECONDS:
        raise PermanentError(f"{path}: only {duration:.1f} s of audio")
    return path.stat().st_size, duration


def preview_sources(
    settings: ServiceSettings,
    policy: UrlPolicy | None = None,
    limiters: dict[str, AsyncLimiter] | None = None,
) -> list[PreviewSource]:
    policy = policy or UrlPolicy.from_settings(settings)
    limiters = limiters or {}
    known: dict[str, Callable[[], PreviewSource]] = {
        "spotify": lambda: SpotifyPreviewSource(),
        "deezer": lambda: DeezerPreviewSource(
            settings.deezer_api_base,
            policy,
            limiters.get("deezer"),
            settings.max_retry_after_s,
            settings.deezer_quota_wait_s,
        ),
        "folder": lambda: FolderPreviewSource(settings.preview_folder),
    }
    unknown = [name for name in settings.preview_sources if name not in known]
    if unknown:
        raise ValueError(f"unknown preview sources {unknown}; known: {sorted(known)}")
    return [known[name]() for name in settings.preview_sources]


# --------------------------------------------------------------------------- the download


def _raise_for_transient_status(response: aiohttp.ClientResponse, url: str, max_retry_after_s: float = 60.0) -> None:
    if response.status == 429:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if retry_after > max_retry_after_s:
            raise PermanentError(f"{_redact(url)}: HTTP 429, Retry-After {retry_after:.0f} s is too long for this run")
        raise TransientError(f"{_redact(url)}: HTTP 429 (Retry-After {retry_after:g} s)", retry_after_s=retry_after)
    if response.status >= 500:
        raise TransientError(f"{_redact(url)}: HTTP {response.status}")


# Exponential backoff with jitter, but never less than a Retry-After.
_wait = wait_at_least_retry_after(wait_exponential_jitter(multiplier=0.25, max=20.0, jitter=0.5))


_PART_NUMBERS = itertools.count()


def _part_name(destination: Path) -> Path:
    """The temporary name of a download: hidden, with our pid, so a later run can tell it is stale."""
    return destination.with_name(f".{destination.name}.{os.getpid()}-{next(_PART_NUMBERS)}.part")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_partial_downloads(directory: Path) -> int:
    """Delete temporary files left by a process that died mid-download (kill -9)."""
    removed = 0
    for part in Path(directory).glob(".*.part"):
        owner = part.name[: -len(".part")].rpartition(".")[2].partition("-")[0]
        if owner.isdigit() and (int(owner) == os.getpid() or _pid_alive(int(owner))):
            continue
        part.unlink(missing_ok=True)
        removed += 1
    return removed


def _keep_audio(body: bytearray, temporary: Path, destination: Path, shown: str) -> float:
    """Check that ``body`` decodes as a preview's length of audio, then write it atomically; its seconds."""
    try:
        duration = float(sf.info(io.BytesIO(body)).duration)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise TransientError(f"{shown}: does not decode as audio ({_redact_text(str(error))})") from error
    if duration < MIN_PREVIEW_SECONDS:
        raise TransientError(f"{shown}: only {duration:.1f} s of audio (truncated?)")
    try:
        with open(temporary, "wb") as handle:
            handle.write(body)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return duration


async def download(
    session: aiohttp.ClientSession,
    url: str,
    destination: Path,
    *,
    policy: UrlPolicy | None = None,
    max_bytes: int = MAX_PREVIEW_BYTES,
    max_retry_after_s: float = 60.0,
) -> tuple[int, float]:
    """Download ``url`` to ``destination`` atomically; bytes and seconds of audio.

    The URL is checked by ``policy`` (the production allow-list when None)
    before the request. A ``Content-Length`` over ``max_bytes`` is refused
    before the body is read; a body that grows past it is cut off.
    """
    policy = policy or UrlPolicy.from_settings(ServiceSettings())
    shown = _redact(url)
    async with guarded_get(session, url, policy) as response:
        _raise_for_transient_status(response, url, max_retry_after_s)
        if response.status in (403, 410):
            # A signed CDN URL that expired (or was refused): resolve a new one.
            raise TransientError(f"{shown}: HTTP {response.status} (expired or refused URL)")
        if response.status != 200:
            raise PermanentError(f"{shown}: HTTP {response.status}")
        declared = response.content_length
        if declared is not None and declared > max_bytes:
            raise PermanentError(f"{shown}: Content-Length {declared} is over the {max_bytes}-byte cap")
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            if len(body) + len(chunk) > max_bytes:
                raise PermanentError(f"{shown}: body cut off past the {max_bytes}-byte cap")
            body += chunk
        if declared is not None and len(body) < declared:
            raise TransientError(f"{shown}: body cut at {len(body)} of {declared} bytes")
    # The decode check, the write and the rename in a thread: file I/O would stall every download.
    duration = await asyncio.to_thread(_keep_audio, body, _part_name(destination), destination, shown)
    return len(body), duration


# --------------------------------------------------------------------------- a batch of tracks


_RETRYABLE = (TransientError, aiohttp.ClientError, asyncio.TimeoutError)


@dataclass
class _Fetch:
    session: aiohttp.ClientSession
    policy: UrlPolicy
    settings: ServiceSettings
    semaphore: asyncio.Semaphore
    directory: Path


def preview_file_name(track_id: str) -> str:
    """The file a track's preview is stored as; ids are untrusted too."""
    if _SAFE_TRACK_ID.fullmatch(track_id):
        return f"{track_id}.mp3"
    return f"id-{hashlib.sha1(track_id.encode()).hexdigest()[:24]}.mp3"


def _describe(error: BaseException) -> str:
    text = str(error) or ("timed out" if isinstance(error, asyncio.TimeoutError) else "")
    return _redact_text(f"{type(error).__name__}: {text}")


async def _fetch_one(fetch: _Fetch, sources: Sequence[PreviewSource], track: dict) -> dict:
    destination = fetch.directory / preview_file_name(track["track_id"])
    tried: list[str] = []
    for source in sources:
        tries = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(max(1, fetch.settings.download_attempts)),
                wait=_wait,
                retry=retry_if_exception_type(_RETRYABLE),
                reraise=True,
            ):
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    # Tracks in flight are bounded; backoff sleeps hold no slot.
                    async with fetch.semaphore:
                        # Resolve inside the retry: signed URLs expire.
                        url = await source.resolve(fetch.session, track)
                        if url is None:
                            break
                        if isinstance(url, Path):  # the user's own file, used where it lies
                            size, duration = await asyncio.to_thread(_local_file, url)
                            return _outcome(track, source.name, url, size, duration, None)
                        size, duration = await download(
                            fetch.session,
                            url,
                            destination,
                            policy=fetch.policy,
                            max_bytes=fetch.settings.max_preview_bytes,
                            max_retry_after_s=fetch.settings.max_retry_after_s,
                        )
                    return _outcome(track, source.name, destination, size, duration, None)
            tried.append(f"{source.name}: no preview")
        except (PermanentError, *_RETRYABLE) as error:
            after = f" (after {tries} tries)" if tries > 1 else ""
            tried.append(f"{source.name}: {_describe(error)}{after}")
        except OSError:
            raise  # our own disk: the batch fails and is retried as a whole
        except Exception as error:  # a bug or a malformed answer: one track, not the batch
            log.exception("fetching %s from %s failed unexpectedly", track["track_id"], source.name)
            tried.append(f"{source.name}: unexpected {_describe(error)}")
    return _outcome(track, None, None, 0, 0.0, "; ".join(tried) or "no preview source configured")


def _outcome(track, provider, path, size, duration, error) -> dict:
    return {
        "track_id": track["track_id"],
        "provider": provider,
        "path": str(path) if path else None,
        "bytes": size,
        "duration_s": duration,
        "error": error,
    }


async def fetch_previews_async(
    tracks: pl.DataFrame, settings: ServiceSettings, directory: Path
) -> pl.DataFrame:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_partial_downloads(directory)
    policy = UrlPolicy.from_settings(settings)
    limiters = {
        "deezer": AsyncLimiter(settings.deezer_rate_per_s * DEEZER_WINDOW_S, DEEZER_WINDOW_S),
    }
    sources = preview_sources(settings, policy, limiters)
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s, connect=min(10.0, settings.request_timeout_s))
    connector = aiohttp.TCPConnector(
        limit=settings.download_concurrency,
        limit_per_host=settings.download_per_host,
        resolver=GuardedResolver(policy),
    )
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, headers={"User-Agent": "sonufy"}
    ) as session:
        fetch = _Fetch(session, policy, settings, asyncio.Semaphore(settings.download_concurrency), directory)
        outcomes = await asyncio.gather(*(_fetch_one(fetch, sources, track) for track in tracks.iter_rows(named=True)))
    return pl.DataFrame(outcomes, schema=OUTCOME_SCHEMA)


def fetch_previews(tracks: pl.DataFrame, settings: ServiceSettings, directory: Path) -> pl.DataFrame:
    """Download a preview for each track (track_id, isrc, preview_url, artist, title).

    Returns one row per track: provider, path, bytes and duration on success;
    error (every source's reason) on failure. Never raises for one track.
    """
    if tracks.is_empty():
        return pl.DataFrame(schema=OUTCOME_SCHEMA)
    return asyncio.run(fetch_previews_async(tracks, settings, directory))


# --------------------------------------------------------------------------- checking and recording


def download_stats(fetched: pl.DataFrame) -> pl.DataFrame:
    """What the downloads suite checks, read from the files on disk: size, decodable, duration."""
    rows = []
    for track_id, path in fetched.select("track_id", "path").iter_rows():
        size, decodable, duration = -1, 0, -1.0
        if path:
            try:
                size = os.path.getsize(path)
                duration = float(sf.info(path).duration)
                decodable = 1
            except (OSError, sf.LibsndfileError, RuntimeError):
                pass
        rows.append({"track_id": track_id, "bytes": size, "decodable": decodable, "duration_s": duration})
    return pl.DataFrame(rows, schema=DOWNLOAD_STATS_SCHEMA)


def record_outcomes(
    store: Store, outcomes: pl.DataFrame, run_id: str | None = None, settings: ServiceSettings | None = None
) -> tuple[dict, pl.DataFrame]:
    """Check the downloaded files, then record them; quarantine every failure.

    A download that breaks the downloads suite is deleted and quarantined
    with the expectation it broke. Returns counts and the failures
    (track_id, reason).
    """
    from sonufy_model import quality

    max_bytes = settings.max_preview_bytes if settings else MAX_PREVIEW_BYTES
    fetched = outcomes.filter(pl.col("error").is_null())
    failures = outcomes.filter(pl.col("error").is_not_null()).select("track_id", pl.col("error").alias("reason"))
    # The suite is for downloads: a user's own file (provider "folder") is a
    # whole song, checked when it was matched, and never deleted.
    downloaded = fetched.filter(pl.col("provider") != "folder")
    if not downloaded.is_empty():
        report = quality.check_downloads(download_stats(downloaded), max_bytes=max_bytes)
        if not report.success:
            rejected = downloaded.filter(pl.col("track_id").is_in(report.failures["track_id"].implode()))
            for path in rejected["path"]:
                if path:
                    Path(path).unlink(missing_ok=True)
            fetched = fetched.filter(~pl.col("track_id").is_in(report.failures["track_id"].implode()))
            failures = pl.concat([failures, report.failures.select("track_id", "reason")])
    store.record_previews(fetched.select("track_id", "provider", "path", "bytes", "duration_s"))
    store.quarantine(quarantine_rows(failures, "fetch", run_id))
    return {"fetched": fetched.height, "failed": failures.height}, failures
