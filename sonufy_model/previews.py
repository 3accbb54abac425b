"""Preview audio: the download itself, a batch of tracks at a time, and its record.

For each track the preview sources (:mod:`sonufy_model.preview_sources`) are
tried in order; a URL is downloaded only where the URL guard
(:mod:`sonufy_model.url_guard`) allows it.

Downloads run concurrently on one aiohttp session: a bound on tracks in
flight, a per-host connection limit, a rate limiter per service (aiolimiter),
timeouts, retries with exponential backoff and jitter that honour
``Retry-After`` (tenacity), a size cap checked against ``Content-Length``
before reading and again while streaming, a check that the bytes decode as
audio of a plausible length, and an atomic write (temporary file, rename).
The downloads suite then checks the files, and the outcomes are recorded:
previews in their table, failures in the quarantine.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import polars as pl
import soundfile as sf
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from sonufy_model.config import ServiceSettings
from sonufy_model.errors import Unreachable
from sonufy_model.preview_sources import PreviewSource, preview_sources
from sonufy_model.retries import wait_at_least_retry_after
from sonufy_model.schemas import PREVIEW_SCHEMA, quarantine_rows
from sonufy_model.store import Store
from sonufy_model.url_guard import (
    GuardedResolver,
    PermanentError,
    TransientError,
    UrlPolicy,
    guarded_get,
    raise_for_transient_status,
    redact_text,
    redact_url,
)

log = logging.getLogger(__name__)

MAX_PREVIEW_BYTES = 4 * 1024 * 1024  # a 30 s mp3 at 320 kbps is ~1.2 MB
MIN_PREVIEW_SECONDS = 20.0
MAX_PREVIEW_SECONDS = 40.0
DOWNLOAD_ATTEMPTS = 4
DEEZER_WINDOW_S = 5.0
_CHUNK_BYTES = 64 * 1024
_SAFE_TRACK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


# --------------------------------------------------------------------------- the download


def _local_file(path: Path) -> tuple[int, float]:
    """Size and duration of a local file, or PermanentError if it is not audio."""
    try:
        duration = float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise PermanentError(f"{path}: does not decode as audio ({error})") from error
    if duration < MIN_PREVIEW_SECONDS:
        raise PermanentError(f"{path}: only {duration:.1f} s of audio")
    return path.stat().st_size, duration


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
        raise TransientError(f"{shown}: does not decode as audio ({redact_text(str(error))})") from error
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
    shown = redact_url(url)
    async with guarded_get(session, url, policy) as response:
        raise_for_transient_status(response, url, max_retry_after_s)
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
    # Per source: tracks it was asked for, and of those the ones whose every
    # try failed to connect (and where to), to tell a service that is down
    # from tracks it has no preview for.
    asked: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    refused_at: dict = field(default_factory=dict)

    def unreachable(self, outcomes: Sequence[dict]) -> Unreachable | None:
        """The error to end the batch with when it fetched nothing and a
        source could not be connected to for any of its tracks: a service
        that is down (or a wrong base URL), not tracks without a preview."""
        if any(outcome["path"] for outcome in outcomes):
            return None
        for name, asked in self.asked.items():
            if asked and self.refused[name] == asked:
                setting = SOURCE_SETTINGS.get(name, "its address")
                return Unreachable(
                    f"{name} could not be reached at {self.refused_at[name]}: none of this batch's {asked} "
                    f"requests connected. Check {setting} and the network; nothing was quarantined, so a "
                    "rerun fetches these tracks once it answers."
                )
        return None


#: The setting that says where each preview source is, for the message of one that cannot be reached.
SOURCE_SETTINGS = {
    "deezer": "SONUFY_DEEZER_API_BASE",
    "spotify": "the preview host (SONUFY_ALLOWED_HOSTS)",
}


def preview_file_name(track_id: str) -> str:
    """The file a track's preview is stored as; ids are untrusted too."""
    if _SAFE_TRACK_ID.fullmatch(track_id):
        return f"{track_id}.mp3"
    return f"id-{hashlib.sha1(track_id.encode()).hexdigest()[:24]}.mp3"


def _describe(error: BaseException) -> str:
    text = str(error) or ("timed out" if isinstance(error, asyncio.TimeoutError) else "")
    return redact_text(f"{type(error).__name__}: {text}")


async def _fetch_one(fetch: _Fetch, sources: Sequence[PreviewSource], track: dict) -> dict:
    destination = fetch.directory / preview_file_name(track["track_id"])
    tried: list[str] = []
    for source in sources:
        tries = 0
        fetch.asked[source.name] += 1
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
            if isinstance(error, aiohttp.ClientConnectorError):
                fetch.refused[source.name] += 1
                fetch.refused_at.setdefault(source.name, f"{error.host}:{error.port}")
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
    down = fetch.unreachable(outcomes)
    if down is not None:
        raise down
    return pl.DataFrame(outcomes, schema=OUTCOME_SCHEMA)


def fetch_previews(tracks: pl.DataFrame, settings: ServiceSettings, directory: Path) -> pl.DataFrame:
    """Download a preview for each track (track_id, isrc, preview_url, artist, title).

    Returns one row per track: provider, path, bytes and duration on success;
    error (every source's reason) on failure. Never raises for one track;
    raises :class:`~sonufy_model.errors.Unreachable` when the batch fetched
    nothing and a source could not be connected to for any of its tracks
    (a service down: quarantining the batch would only spend its attempts).
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
