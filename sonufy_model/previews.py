"""Preview audio: where to get each track's 30 s, and the download itself.

Sources are tried in a configured order: Spotify's own ``preview_url`` (null
for apps created after Nov 2024), then Deezer by ISRC. Deezer signs preview
URLs that expire within minutes, so a URL is resolved right before each
download attempt and never stored.

Downloads run concurrently on one aiohttp session, each with a size cap,
retries with exponential backoff and jitter, a check that the bytes decode as
audio of a plausible length, and an atomic write (temporary file, rename).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import polars as pl
import soundfile as sf
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from sonufy_model.config import ServiceSettings

log = logging.getLogger(__name__)

MAX_PREVIEW_BYTES = 4 * 1024 * 1024  # a 30 s mp3 at 320 kbps is ~1.2 MB
MIN_PREVIEW_SECONDS = 20.0
DOWNLOAD_ATTEMPTS = 4

OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    "track_id": pl.String,
    "provider": pl.String,
    "path": pl.String,
    "bytes": pl.Int64,
    "duration_s": pl.Float64,
    "error": pl.String,
}


class TransientError(RuntimeError):
    """Worth another try: a 429, a 5xx, a timeout, a truncated body."""

    def __init__(self, message: str, retry_after_s: float = 0.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(RuntimeError):
    """Not worth another try: too big, not audio, refused."""


class PreviewSource(Protocol):
    """Somewhere a track's preview may be found."""

    name: str

    async def resolve(self, session: aiohttp.ClientSession, track: dict) -> str | None:
        """A URL to download now, or None when this source has no preview."""


class SpotifyPreviewSource:
    """Spotify's own preview_url, kept from the catalog scrape."""

    name = "spotify"

    async def resolve(self, session: aiohttp.ClientSession, track: dict) -> str | None:
        return track.get("preview_url") or None


class DeezerPreviewSource:
    """Deezer's public API by ISRC; its preview URLs are signed and short-lived."""

    name = "deezer"

    def __init__(self, api_base: str):
        self.api_base = api_base.rstrip("/")

    async def resolve(self, session: aiohttp.ClientSession, track: dict) -> str | None:
        isrc = track.get("isrc")
        if not isrc:
            return None
        url = f"{self.api_base}/track/isrc:{isrc}"
        async with session.get(url) as response:
            _raise_for_transient_status(response, url)
            if response.status != 200:
                raise PermanentError(f"Deezer {url}: HTTP {response.status}")
            payload = await response.json(content_type=None)
        error = payload.get("error") if isinstance(payload, dict) else None
        if error:
            # Deezer reports quota errors as HTTP 200 with code 4.
            if error.get("code") == 4:
                raise TransientError(f"Deezer quota exceeded ({url})", retry_after_s=5.0)
            return None  # code 800: no such ISRC
        return payload.get("preview") or None


def preview_sources(settings: ServiceSettings) -> list[PreviewSource]:
    known = {
        "spotify": lambda: SpotifyPreviewSource(),
        "deezer": lambda: DeezerPreviewSource(settings.deezer_api_base),
    }
    unknown = [name for name in settings.preview_sources if name not in known]
    if unknown:
        raise ValueError(f"unknown preview sources {unknown}; known: {sorted(known)}")
    return [known[name]() for name in settings.preview_sources]


def _raise_for_transient_status(response: aiohttp.ClientResponse, url: str) -> None:
    if response.status == 429:
        retry_after = float(response.headers.get("Retry-After", "1") or 1)
        raise TransientError(f"{_redact(url)}: HTTP 429", retry_after_s=retry_after)
    if response.status >= 500:
        raise TransientError(f"{_redact(url)}: HTTP {response.status}")


def _redact(url: str) -> str:
    """A URL without its query string: signed URLs carry their signature there."""
    return url.split("?", 1)[0]


_BACKOFF = wait_exponential_jitter(multiplier=0.5, max=20.0, jitter=0.5)


def _wait(retry_state) -> float:
    """Exponential backoff with jitter, but never less than a Retry-After."""
    backoff = _BACKOFF(retry_state)
    error = retry_state.outcome.exception() if retry_state.outcome else None
    return max(backoff, getattr(error, "retry_after_s", 0.0))


async def download(session: aiohttp.ClientSession, url: str, destination: Path) -> tuple[int, float]:
    """Download ``url`` to ``destination`` atomically; bytes and seconds of audio."""
    temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        async with session.get(url) as response:
            _raise_for_transient_status(response, url)
            if response.status != 200:
                raise PermanentError(f"{_redact(url)}: HTTP {response.status}")
            declared = response.content_length
            if declared is not None and declared > MAX_PREVIEW_BYTES:
                raise PermanentError(f"{_redact(url)}: {declared} bytes is over the {MAX_PREVIEW_BYTES} cap")
            size = 0
            with open(temporary, "wb") as handle:
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > MAX_PREVIEW_BYTES:
                        raise PermanentError(f"{_redact(url)}: more than {MAX_PREVIEW_BYTES} bytes")
                    handle.write(chunk)
            if declared is not None and size < declared:
                raise TransientError(f"{_redact(url)}: body cut at {size} of {declared} bytes")
        try:
            duration = sf.info(str(temporary)).duration
        except (sf.LibsndfileError, RuntimeError) as error:
            raise TransientError(f"{_redact(url)}: does not decode as audio ({error})") from error
        if duration < MIN_PREVIEW_SECONDS:
            raise TransientError(f"{_redact(url)}: only {duration:.1f} s of audio (truncated?)")
        os.replace(temporary, destination)
        return size, float(duration)
    finally:
        temporary.unlink(missing_ok=True)


async def _fetch_one(
    session: aiohttp.ClientSession,
    sources: Sequence[PreviewSource],
    track: dict,
    directory: Path,
    semaphore: asyncio.Semaphore,
) -> dict:
    destination = directory / f"{track['track_id']}.mp3"
    tried: list[str] = []
    async with semaphore:
        for source in sources:
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(DOWNLOAD_ATTEMPTS),
                    wait=_wait,
                    retry=retry_if_exception_type(
                        (TransientError, aiohttp.ClientError, asyncio.TimeoutError)
                    ),
                    reraise=True,
                ):
                    with attempt:
                        # Resolve inside the retry: signed URLs expire.
                        url = await source.resolve(session, track)
                        if url is None:
                            break
                        size, duration = await download(session, url, destination)
                        return _outcome(track, source.name, destination, size, duration, None)
                tried.append(f"{source.name}: no preview")
            except (TransientError, PermanentError, aiohttp.ClientError, asyncio.TimeoutError, RetryError) as error:
                tried.append(f"{source.name}: {type(error).__name__}: {error}")
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
    directory.mkdir(parents=True, exist_ok=True)
    sources = preview_sources(settings)
    semaphore = asyncio.Semaphore(settings.download_concurrency)
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=settings.download_concurrency, limit_per_host=settings.download_concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        outcomes = await asyncio.gather(
            *(_fetch_one(session, sources, track, directory, semaphore) for track in tracks.iter_rows(named=True))
        )
    return pl.DataFrame(outcomes, schema=OUTCOME_SCHEMA)


def fetch_previews(tracks: pl.DataFrame, settings: ServiceSettings, directory: Path) -> pl.DataFrame:
    """Download a preview for each track (track_id, isrc, preview_url...).

    Returns one row per track: provider, path, bytes and duration on success;
    error (every source's reason) on failure. Never raises for one track.
    """
    if tracks.is_empty():
        return pl.DataFrame(schema=OUTCOME_SCHEMA)
    return asyncio.run(fetch_previews_async(tracks, settings, directory))
