"""What to scrape: configuration, not code.

A scrape is a list of Spotify search queries, album ids and playlist ids,
read from a YAML file (see ``deployments/scrape.yaml``)::

    queries:
      - 'genre:"dub techno"'
      - tag:new
    album_ids:
      - 4aawyAB9vmqN3uQ7FjRGTy
      - spotify:album:4aawyAB9vmqN3uQ7FjRGTy        # URIs and open.spotify.com links work too
    playlist_ids:
      - 37i9dQZF1DXcBWIGoYBM5M
    max_items_per_query: 200                       # optional; the API stops at offset 1000 anyway

Every mistake is reported with the file and the key it is in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sonufy_model.yaml_files import read_yaml

SPOTIFY_ID = re.compile(r"^[0-9A-Za-z]{22}$")
_URI = re.compile(r"^spotify:(?P<kind>album|playlist):(?P<id>[^:?#/]+)$")
_URL = re.compile(r"^https?://open\.spotify\.com/(?:intl-[a-z-]+/)?(?P<kind>album|playlist)/(?P<id>[^?#/]+)")
KEYS = ("queries", "album_ids", "playlist_ids", "max_items_per_query")


class ScrapeConfigError(ValueError):
    """A scrape configuration that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class ScrapeConfig:
    """Search queries, album ids and playlist ids to scrape, and a cap per query."""

    queries: tuple[str, ...] = ()
    album_ids: tuple[str, ...] = ()
    playlist_ids: tuple[str, ...] = ()
    max_items_per_query: int | None = None
    source: str = field(default="<config>", compare=False)

    def __post_init__(self) -> None:
        where = self.source
        object.__setattr__(self, "queries", _queries(self.queries, where))
        object.__setattr__(self, "album_ids", _ids(self.album_ids, "album", where))
        object.__setattr__(self, "playlist_ids", _ids(self.playlist_ids, "playlist", where))
        cap = self.max_items_per_query
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ScrapeConfigError(f"{where}: max_items_per_query: {cap!r} is not a whole number of at least 1")

    @property
    def empty(self) -> bool:
        return not (self.queries or self.album_ids or self.playlist_ids)

    @classmethod
    def from_mapping(cls, data: object, source: str = "<config>") -> "ScrapeConfig":
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ScrapeConfigError(f"{source}: expected a mapping with keys {', '.join(KEYS)}, got {_kind(data)}")
        unknown = [str(key) for key in data if key not in KEYS]
        if unknown:
            raise ScrapeConfigError(
                f"{source}: unknown key {', '.join(map(repr, unknown))} (expected: {', '.join(KEYS)})"
            )
        lists = {}
        for key in ("queries", "album_ids", "playlist_ids"):
            value = data.get(key)
            if value is None:
                lists[key] = ()
            elif isinstance(value, list):
                lists[key] = tuple(value)
            else:
                raise ScrapeConfigError(f"{source}: {key}: expected a list, got {_kind(value)}")
        config = cls(**lists, max_items_per_query=data.get("max_items_per_query"), source=source)
        if config.empty:
            raise ScrapeConfigError(f"{source}: nothing to scrape: give queries, album_ids or playlist_ids")
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ScrapeConfig":
        path = Path(path).expanduser()
        data = read_yaml(path, "scrape configuration", ScrapeConfigError)
        return cls.from_mapping(data, source=str(path))

    def merged(self, queries: Iterable[str] = ()) -> "ScrapeConfig":
        """This configuration with more queries (from the command line), duplicates dropped."""
        return ScrapeConfig(
            queries=(*self.queries, *queries),
            album_ids=self.album_ids,
            playlist_ids=self.playlist_ids,
            max_items_per_query=self.max_items_per_query,
            source=self.source,
        )


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _queries(values: Iterable[object], where: str) -> tuple[str, ...]:
    out: list[str] = []
    for number, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise ScrapeConfigError(f"{where}: queries[{number}]: {value!r} is not a non-empty search query")
        if value.strip() not in out:
            out.append(value.strip())
    return tuple(out)


def spotify_id(value: object, kind: str) -> str | None:
    """The 22-character id in an id, ``spotify:KIND:ID`` URI or open.spotify.com link; None if none."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    for pattern in (_URI, _URL):
        match = pattern.match(text)
        if match is not None:
            if match["kind"] != kind:
                return None
            text = match["id"]
            break
    return text if SPOTIFY_ID.match(text) else None


def _ids(values: Iterable[object], kind: str, where: str) -> tuple[str, ...]:
    out: list[str] = []
    for number, value in enumerate(values):
        parsed = spotify_id(value, kind)
        if parsed is None:
            raise ScrapeConfigError(
                f"{where}: {kind}_ids[{number}]: {value!r} is not a Spotify {kind} id "
                f"(22 letters and digits, a spotify:{kind}: URI or an open.spotify.com/{kind}/ link)"
            )
        if parsed not in out:
            out.append(parsed)
    return tuple(out)
