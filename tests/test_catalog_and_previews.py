"""Scraping and fetching against the stand-in, over real HTTP on loopback."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from sonufy_demo.standin import Faults, StandIn, StandInConfig
from sonufy_model import catalog, previews
from sonufy_model.config import ServiceSettings
from sonufy_model.errors import Unreachable


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


def test_a_folder_of_own_files_is_a_preview_source_tried_in_order(tmp_path):
    import mutagen
    import soundfile as sf

    from sonufy_demo.synth import render_clip
    from sonufy_model.store import Store

    # Deezer knows none of these tracks and has no search match: only own files can help.
    config = StandInConfig(n_tracks=20, deezer_missing_share=1.0, cache_dir=tmp_path / "cache")
    with StandIn(config) as server:
        by_isrc, by_name, missing = server.catalog[:3]
        music = tmp_path / "Music"
        (music / "misc").mkdir(parents=True)
        tagged = music / "misc" / "untitled.mp3"  # matched by its ISRC tag alone
        sf.write(tagged, np.tile(render_clip(by_isrc), 2), 22050, format="MP3")  # a 60 s "song"
        audio = mutagen.File(str(tagged), easy=True)
        audio.add_tags()
        audio["isrc"] = by_isrc.isrc
        audio.save()
        named = music / by_name.artist / "Some Album" / f"03 {by_name.title}.flac"  # matched by path
        named.parent.mkdir(parents=True)
        sf.write(named, render_clip(by_name), 22050)

        tracks = pl.DataFrame(
            {
                "track_id": [t.track_id for t in (by_isrc, by_name, missing)],
                "isrc": [by_isrc.isrc, None, missing.isrc],
                "artist": [t.artist for t in (by_isrc, by_name, missing)],
                "title": [t.title for t in (by_isrc, by_name, missing)],
                "preview_url": [None, None, None],
            }
        )
        settings = _settings(server, preview_sources=("folder", "deezer"), preview_folder=str(music))
        outcomes = previews.fetch_previews(tracks, settings, tmp_path / "previews")
        store = Store(tmp_path / "s.duckdb")
        counts, _ = previews.record_outcomes(store, outcomes, None, settings)

    rows = {row["track_id"]: row for row in outcomes.iter_rows(named=True)}
    assert (rows[by_isrc.track_id]["provider"], rows[by_isrc.track_id]["path"]) == ("folder", str(tagged))
    assert (rows[by_name.track_id]["provider"], rows[by_name.track_id]["path"]) == ("folder", str(named))
    assert rows[missing.track_id]["error"] == "folder: no preview; deezer: no preview"
    # Own files are used where they lie: not copied, not deleted, a whole song allowed.
    assert counts == {"fetched": 2, "failed": 1}
    assert tagged.is_file() and named.is_file()
    assert not list((tmp_path / "previews").glob("*.mp3"))


def test_the_folder_source_needs_its_folder():
    with pytest.raises(ValueError, match="preview_folder"):
        ServiceSettings(preview_sources=("folder",))


def test_a_deezer_that_cannot_be_reached_ends_the_batch_naming_it_instead_of_failing_each_track(standin, tmp_path):
    # Port 9 (discard) on loopback: nothing listens, every connection is refused.
    down = _settings(standin, download_attempts=2).model_copy(update={"deezer_api_base": "http://127.0.0.1:9/deezer"})
    with pytest.raises(Unreachable, match=r"deezer could not be reached at 127\.0\.0\.1:9: none of this batch's 4 "
                                          r"requests connected\. Check SONUFY_DEEZER_API_BASE"):
        previews.fetch_previews(_tracks(standin, 4), down, tmp_path / "down")
    # Spotify serving a preview for some tracks: the batch fetched something, so
    # the rest are failures of their own (quarantined as before), not an outage.
    with StandIn(StandInConfig(n_tracks=40, preview_url_share=0.5, cache_dir=tmp_path / "cache")) as server:
        styles = sorted({track.style for track in server.catalog[:4]})
        pages = catalog.fetch_search_pages(_settings(server), [f'genre:"{style}"' for style in styles])
        tracks, _ = catalog.parse_search_pages(pages)
        with_links = tracks.filter(pl.col("preview_url").is_not_null()).height
        assert 0 < with_links < tracks.height
        down = _settings(server, download_attempts=2).model_copy(
            update={"deezer_api_base": "http://127.0.0.1:9/deezer"})
        outcomes = previews.fetch_previews(tracks.select("track_id", "isrc", "preview_url"), down, tmp_path / "p")
    assert outcomes.filter(pl.col("provider") == "spotify").height == with_links
    failed = outcomes.filter(pl.col("error").is_not_null())
    assert failed.height == tracks.height - with_links
    assert all("deezer: ClientConnectorError" in error for error in failed["error"])
