"""Where a track's preview may be found: the preview sources, tried in a configured order.

Spotify's own ``preview_url`` (null for apps created after Nov 2024), then
Deezer by ISRC, falling back to a Deezer search by artist and title, or the
user's own files. Deezer signs preview URLs that expire within minutes, so a
source resolves a URL right before each download attempt, and it is never
stored. Every request a source makes goes through the URL guard
(:mod:`sonufy_model.url_guard`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import aiohttp
from aiolimiter import AsyncLimiter
from yarl import URL

from sonufy_model.config import ServiceSettings
from sonufy_model.names import normalise_name
from sonufy_model.url_guard import (
    PermanentError,
    TransientError,
    UrlPolicy,
    guarded_get,
    raise_for_transient_status,
)

_ISRC = re.compile(r"[A-Za-z0-9]{12}")


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
            raise_for_transient_status(response, str(url), self.max_retry_after_s)
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


def preview_sources(
    settings: ServiceSettings,
    policy: UrlPolicy | None = None,
    limiters: dict[str, AsyncLimiter] | None = None,
) -> list[PreviewSource]:
    """The settings' preview sources, in their order; an unknown name is refused."""
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
