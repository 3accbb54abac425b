"""Where a run's catalog and audio come from: the stand-in, Spotify, or a folder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sonufy_model.config import ServiceSettings

# Queries for real Spotify when none are configured: this fortnight's releases.
DEFAULT_SPOTIFY_QUERIES = ("tag:new",)


@dataclass
class Source:
    """A run's source: endpoints to scrape, or a folder to scan."""

    name: str
    settings: ServiceSettings = field(default_factory=ServiceSettings)
    queries: list[str] = field(default_factory=list)
    folder: Path | None = None
    # A track to show recommendations for at the end ("artist - title" or id).
    demo_query: str | None = None


def parse_source(source: str) -> tuple[str, Path | None]:
    """("standin" | "spotify" | "folder", folder path); a clear error otherwise."""
    if source in ("standin", "spotify"):
        return source, None
    if source.startswith("folder:") and len(source) > len("folder:"):
        folder = Path(source[len("folder:"):]).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--source {source!r}: {folder} is not a directory")
        return "folder", folder.resolve()
    raise ValueError(f"--source {source!r}: expected 'standin', 'spotify' or 'folder:PATH'")


def standin_config(demo_tracks: int, cache_dir: Path | None = None, new_tracks: int = 0):
    """The stand-in's configuration for a demo catalog of ``demo_tracks`` that
    gained ``new_tracks`` new releases: what ``open_source`` serves, and what a
    benchmark starts to serve the same catalog."""
    from sonufy_demo.standin import StandInConfig

    # Some tracks re-released on compilations (same ISRC, new id), as in real
    # catalogs: the genre searches find both, and the scrape keeps one.
    return StandInConfig(n_tracks=demo_tracks, cache_dir=cache_dir, compilation_share=0.1, new_tracks=new_tracks)


@contextmanager
def open_source(
    source: str, demo_tracks: int = 300, cache_dir: Path | None = None, demo_new_tracks: int = 0
) -> Iterator[Source]:
    """The source, ready to use; the stand-in runs only inside this block.

    ``demo_new_tracks``: tracks the stand-in's catalog has gained since the
    build (released today, found by ``tag:new``), for nightly refreshes."""
    kind, folder = parse_source(source)
    if kind == "folder":
        yield Source(name=source, folder=folder)
        return
    if kind == "spotify":
        settings = ServiceSettings.from_env()
        settings.require_spotify_credentials()
        yield Source(name=kind, settings=settings, queries=list(DEFAULT_SPOTIFY_QUERIES))
        return

    from sonufy_demo.standin import StandIn

    with StandIn(standin_config(demo_tracks, cache_dir, demo_new_tracks)) as standin:
        settings = standin.service_settings()
        first = standin.catalog[0]
        yield Source(
            name=kind,
            settings=settings,
            queries=standin.genre_queries(),
            demo_query=f"{first.artist} - {first.title}",
        )
