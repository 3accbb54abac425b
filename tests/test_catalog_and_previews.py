"""Scraping and fetching against the stand-in, over real HTTP on loopback."""

from __future__ import annotations

import polars as pl
import pytest

from sonufy_model import catalog, previews
from sonufy_model.config import ServiceSettings
from sonufy_model.demo.standin import Faults, StandIn, StandInConfig


def _settings(standin: StandIn, **changes) -> ServiceSettings:
    return standin.service_settings(**changes)


def _tracks(standin: StandIn, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "track_id": [t.track_id for t in standin.catalog[:n]],
            "isrc": [t.isrc for t in standin.catalog[:n]],
            "preview_url": [None] * n,
        },
        schema={"track_id": pl.String, "isrc": pl.String, "preview_url": pl.String},
    )


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    with StandIn(StandInConfig(n_tracks=60, cache_dir=tmp_path_factory.mktemp("cache"))) as server:
        yield server


def test_search_follows_every_page_and_parses_each_track_once(standin):
    style = standin.catalog[0].style
    queries = [f'genre:"{style}"', f'genre:"{style}"', f'genre:"{standin.catalog[1].style}"']
    pages = catalog.fetch_search_pages(_settings(standin), queries)
    tracks, rejected = catalog.parse_search_pages(pages)
    expected = {t.track_id for t in standin.catalog if t.style in {standin.catalog[0].style, standin.catalog[1].style}}
    assert set(tracks["track_id"]) == expected and tracks.height == len(expected)
    assert not rejected
    assert all(len(page.paging["items"]) <= catalog.SEARCH_PAGE_SIZE for page in pages)
    row = tracks.filter(pl.col("track_id") == standin.catalog[0].track_id).row(0, named=True)
    assert row["isrc"] == standin.catalog[0].isrc and row["artist"] == standin.catalog[0].artist
    assert row["found_by"] == queries[0]


def test_rate_limits_are_waited_out_not_fatal(tmp_path):
    faults = Faults(rate_429=0.4, retry_after_s=1, seed=3)
    with StandIn(StandInConfig(n_tracks=30, faults=faults, cache_dir=tmp_path)) as server:
        style = server.catalog[0].style
        pages = catalog.fetch_search_pages(_settings(server), [f'genre:"{style}"'])
        tracks, _ = catalog.parse_search_pages(pages)
        assert set(tracks["track_id"]) == {t.track_id for t in server.catalog if t.style == style}
        assert sum(v for k, v in server.stats.items() if "429" in str(k)) > 0


def test_previews_come_from_deezer_by_isrc(standin, tmp_path):
    outcomes = previews.fetch_previews(_tracks(standin, 4), _settings(standin), tmp_path)
    assert outcomes["error"].null_count() == 4
    assert set(outcomes["provider"]) == {"deezer"}
    assert outcomes["duration_s"].min() > 25
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{t}.mp3" for t in outcomes["track_id"])


def test_failures_are_outcomes_with_reasons(tmp_path):
    config = StandInConfig(n_tracks=20, deezer_missing_share=0.0, faults=Faults(truncate_share=1.0),
                           cache_dir=tmp_path / "cache")
    with StandIn(config) as server:
        tracks = _tracks(server, 2).vstack(
            pl.DataFrame({"track_id": ["no-isrc"], "isrc": [None], "preview_url": [None]},
                         schema={"track_id": pl.String, "isrc": pl.String, "preview_url": pl.String})
        )
        outcomes = previews.fetch_previews(tracks, _settings(server), tmp_path / "previews")
    reasons = dict(zip(outcomes["track_id"], outcomes["error"]))
    assert reasons["no-isrc"] == "spotify: no preview; deezer: no preview"
    truncated = reasons[server.catalog[0].track_id]
    assert "deezer: TransientError" in truncated and "truncated" in truncated
    assert "hmac" not in truncated  # signed URLs never reach logs or the database
    assert not list((tmp_path / "previews").glob("*.mp3"))
