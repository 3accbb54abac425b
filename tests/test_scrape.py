"""Scraping the catalog: configuration, albums and playlists, deduplication, limits and faults.

Real HTTP to the stand-in with the real spotipy client, real DuckDB files, the
real Great Expectations suite.
"""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
import requests
from prefect import flow

from flows.cli import main as cli
from sonufy_demo.standin import DEMO_PLAYLIST_IDS, Faults, StandIn, StandInConfig
from sonufy_demo.synth import is_new_release
from sonufy_model import catalog, quality
from sonufy_model.config import ServiceSettings
from sonufy_model.ratelimit import SharedLimiter
from sonufy_model.schemas import TRACK_SCHEMA
from sonufy_model.scrape_config import ScrapeConfig, ScrapeConfigError
from sonufy_model.store import Store
from tasks.catalog import check_tracks, parse_tracks, scrape_catalog, upsert_tracks

TODAY = datetime.date(2026, 3, 15)
REPO_ROOT = Path(__file__).resolve().parents[1]
EDITORIAL_PLAYLIST = "37i9dQZF1DXcBWIGoYBM5M"  # Spotify's, not the app's: 403
UNKNOWN_PLAYLIST = "0000000000000000000000"


def _settings(server: StandIn, **changes) -> ServiceSettings:
    changes.setdefault("spotify_rate_per_s", 200.0)
    return server.service_settings(**changes)


def _api_requests(server: StandIn) -> int:
    return sum(count for key, count in server.stats.items() if key.startswith("GET /v1/"))


@pytest.fixture(scope="module")
def server():
    """160 tracks (a playlist of every third is over one page), some re-released on compilations."""
    config = StandInConfig(n_tracks=160, today=TODAY, compilation_share=0.15)
    with StandIn(config) as running:
        assert running.compilations, "the stand-in re-releases some tracks"
        yield running


def _tables(db: Path) -> dict[str, list[dict]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            "tracks": con.execute("SELECT * FROM tracks ORDER BY track_id").pl().to_dicts(),
            "quarantine": con.execute(
                "SELECT track_id, stage, reason FROM quarantine ORDER BY track_id"
            ).pl().to_dicts(),
        }
    finally:
        con.close()


# --------------------------------------------------------------------------- configuration


def test_the_documented_example_loads_and_ids_are_normalised(tmp_path):
    example = ScrapeConfig.from_yaml(REPO_ROOT / "deployments" / "scrape.yaml")
    assert example.queries and example.album_ids and example.playlist_ids
    assert example.max_items_per_query == 200

    path = tmp_path / "scrape.yaml"
    path.write_text(
        "queries: ['tag:new', ' genre:\"techno\" ', 'tag:new']\n"
        "album_ids:\n"
        "  - spotify:album:4aawyAB9vmqN3uQ7FjRGTy\n"
        "  - https://open.spotify.com/album/4aawyAB9vmqN3uQ7FjRGTy?si=abc\n"
        "playlist_ids: [SonufyDemoEachStyle001]\n"
    )
    config = ScrapeConfig.from_yaml(path)
    assert config.queries == ("tag:new", 'genre:"techno"')
    assert config.album_ids == ("4aawyAB9vmqN3uQ7FjRGTy",)
    assert config.playlist_ids == ("SonufyDemoEachStyle001",)
    assert config.max_items_per_query is None
    assert config.merged(["year:2024", "tag:new"]).queries == ("tag:new", 'genre:"techno"', "year:2024")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("queries: ['tag:new']\nalbums: [x]\n", "unknown key 'albums'"),
        ("album_ids: [4aawyAB9vmqN3uQ7FjRGTy, abc]\n", "album_ids[1]: 'abc' is not a Spotify album id"),
        ("playlist_ids: [spotify:album:4aawyAB9vmqN3uQ7FjRGTy]\n", "playlist_ids[0]"),
        ("queries: tag:new\n", "queries: expected a list, got a string"),
        ("queries: ['tag:new', '']\n", "queries[1]"),
        ("queries: ['tag:new']\nmax_items_per_query: 0\n", "max_items_per_query: 0"),
        ("queries: []\n", "nothing to scrape"),
        ("- tag:new\n", "expected a mapping"),
        ("queries: ['tag:new'\n", "not valid YAML at line"),
    ],
)
def test_bad_configuration_names_the_file_and_the_key(tmp_path, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScrapeConfigError) as bad:
        ScrapeConfig.from_yaml(path)
    assert str(path) in str(bad.value) and named in str(bad.value)


def test_cli_refuses_a_bad_scrape_config_before_any_run(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("album_ids: [nope]\n")
    assert cli(["build", "--db", str(tmp_path / "x.duckdb"), "--scrape-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "album_ids[0]" in err
    assert cli(["build", "--scrape-config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such scrape configuration file" in capsys.readouterr().err
    assert cli(["build", "--source", f"folder:{tmp_path}", "--scrape-config",
                str(REPO_ROOT / "deployments" / "scrape.yaml")]) == 2
    assert "not to a folder" in capsys.readouterr().err
    assert not (tmp_path / "x.duckdb").exists()


# --------------------------------------------------------------------------- albums and playlists


def test_albums_and_playlists_are_scraped_with_their_isrcs(server):
    album_id = server.catalog[0].album_id
    album = [t for t in server.catalog if t.album_id == album_id]
    compilation_id = server.compilations[0].album_id
    compilation = [t for t in server.compilations if t.album_id == compilation_id]
    config = ScrapeConfig(
        album_ids=(album_id, compilation_id, "1" * 22),
        playlist_ids=(DEMO_PLAYLIST_IDS["each_style"], DEMO_PLAYLIST_IDS["deep_cuts"],
                      EDITORIAL_PLAYLIST, UNKNOWN_PLAYLIST),
    )
    before = server.stats.copy()
    result = catalog.fetch_catalog(_settings(server), config)
    tracks, rejected = catalog.parse_scrape(result)

    isrc = {t.track_id: t.isrc for t in [*server.catalog, *server.compilations]}
    by_id = dict(zip(tracks["track_id"], tracks["isrc"]))
    for track in [*album, *compilation]:
        assert by_id[track.track_id] == track.isrc, "album tracks get their ISRC from /tracks/{id}"
    assert (server.stats - before)["GET /v1/tracks/{track_id}"] == len(album) + len(compilation)
    deep_cuts = server.catalog[::3]
    assert len(deep_cuts) > catalog.PLAYLIST_PAGE_SIZE
    assert {t.track_id for t in deep_cuts} <= set(by_id)
    assert [p.offset for p in result.pages if p.query == f"playlist:{DEMO_PLAYLIST_IDS['deep_cuts']}"] == [0, 50]
    assert all(by_id[track_id] == isrc[track_id] for track_id in by_id)
    assert tracks.filter(pl.col("track_id") == album[0].track_id)["found_by"].item() == f"album:{album_id}"

    problems = "\n".join(result.problems)
    assert f"playlist {EDITORIAL_PLAYLIST}: HTTP 403" in problems and "own or collaborate" in problems
    assert f"playlist {UNKNOWN_PLAYLIST}: HTTP 404" in problems
    assert f"album {'1' * 22}: HTTP 404" in problems
    assert len(result.problems) == 3
    assert rejected == [
        f"playlist:{DEMO_PLAYLIST_IDS['each_style']} @ 12: a local file ('My Demo Tape'), not in Spotify's catalog"
    ]


@pytest.fixture(scope="module")
def releasing():
    """160 tracks and 40 released today, one page of tag:new's albums more than a page of its tracks."""
    with StandIn(StandInConfig(n_tracks=160, today=TODAY, new_tracks=40, compilation_share=0.15)) as running:
        yield running


def _new_albums(server: StandIn) -> dict[str, list]:
    albums: dict[str, list] = {}
    for track in server.catalog:
        if is_new_release(track.release_date, TODAY):
            albums.setdefault(track.album_id, []).append(track)
    return albums


def test_tag_new_is_an_album_search_whose_albums_come_with_their_isrcs(releasing):
    # Spotify applies tag:new to album searches only; a nightly reads each new
    # album's tracks by a track search on its name (full objects, ISRCs
    # included), so no track costs a /tracks/{id} request of its own.
    albums = _new_albums(releasing)
    expected = {track.track_id: track.isrc for tracks in albums.values() for track in tracks}
    assert len(albums) > 1 and len(expected) > catalog.SEARCH_PAGE_SIZE
    before = releasing.stats.copy()
    result = catalog.fetch_catalog(_settings(releasing), ScrapeConfig(queries=("tag:new",)))
    tracks, rejected = catalog.parse_scrape(result)
    spent = releasing.stats - before

    assert dict(zip(tracks["track_id"], tracks["isrc"])) == expected
    assert set(tracks["found_by"]) == {"tag:new"} and not rejected and not result.problems
    assert spent["GET /v1/tracks/{track_id}"] == 0 and spent["GET /v1/albums/{album_id}/tracks"] == 0
    album_pages = -(-len(albums) // catalog.SEARCH_PAGE_SIZE)
    track_pages = sum(-(-len(tracks) // catalog.SEARCH_PAGE_SIZE) for tracks in albums.values())
    assert spent["GET /v1/search"] == album_pages + track_pages


def test_tag_new_skips_the_albums_the_store_knows(releasing):
    albums = _new_albums(releasing)
    known, unknown = sorted(albums)[:-1], sorted(albums)[-1]
    before = releasing.stats.copy()
    heard: list[tuple[int, int]] = []  # (new albums, searches made by then)

    def on_new_albums(count: int) -> None:
        heard.append((count, (releasing.stats - before)["GET /v1/search"]))

    result = catalog.fetch_catalog(_settings(releasing), ScrapeConfig(queries=("tag:new",)), known_album_ids=known,
                                   on_new_albums=on_new_albums)
    tracks, _ = catalog.parse_scrape(result)
    assert set(tracks["track_id"]) == {track.track_id for track in albums[unknown]}
    assert result.known_albums == len(known)
    # told once, of the one new album, before its tracks were searched: album pages only so far
    assert heard == [(1, -(-len(albums) // catalog.SEARCH_PAGE_SIZE))]

    everything = catalog.fetch_catalog(_settings(releasing), ScrapeConfig(queries=("tag:new",)),
                                       known_album_ids=albums, on_new_albums=on_new_albums)
    assert not catalog.parse_scrape(everything)[0].height and everything.known_albums == len(albums)
    assert len(heard) == 1, "nothing new: nothing to prepare for"
    spent = releasing.stats - before
    album_pages = -(-len(albums) // catalog.SEARCH_PAGE_SIZE)
    assert spent["GET /v1/search"] == 2 * album_pages + -(-len(albums[unknown]) // catalog.SEARCH_PAGE_SIZE), (
        "a night with nothing new costs tag:new's album pages only"
    )


def test_an_album_its_name_search_misses_is_read_track_by_track(releasing):
    # Search indexes may lag a release: the album's tracks then come from
    # /albums/{id}/tracks and /tracks/{id}, the exact way, none lost.
    album_id, album_tracks = sorted(_new_albums(releasing).items())[0]
    settings = _settings(releasing)
    spotify = catalog._Spotify(catalog.spotify_client(settings), SharedLimiter(200, "spotify"), asyncio.Semaphore(4))
    album = {"id": album_id, "name": "not yet indexed", "total_tracks": len(album_tracks),
             "release_date": album_tracks[0].release_date, "artists": [{"name": album_tracks[0].artist}]}
    before = releasing.stats.copy()
    result = catalog.ScrapeResult()
    found = asyncio.run(catalog._album_tracks(spotify, album, result))
    assert {track["id"]: track["external_ids"]["isrc"] for track in found} == {
        track.track_id: track.isrc for track in album_tracks
    }
    assert (releasing.stats - before)["GET /v1/tracks/{track_id}"] == len(album_tracks)
    assert not result.problems


@flow(name="tag-new-test", validate_parameters=False)
def _tag_new_flow(settings: ServiceSettings, db: str) -> dict:
    """The nightly's discover stage: tag:new, less the albums the store knows, parsed, checked, upserted."""
    store = Store(db)
    scraped = scrape_catalog(settings, ScrapeConfig(queries=("tag:new",)), store.known_album_ids())
    tracks = parse_tracks(scraped)
    counts = upsert_tracks(store, tracks, check_tracks(tracks), "test-run", scraped)
    return {**counts, "albums_known": scraped.known_albums, "read": set(tracks["track_id"])}


def test_the_nightly_reads_an_album_once_unless_a_track_of_it_failed(prefect_api, tmp_path):
    config = StandInConfig(n_tracks=160, today=TODAY, new_tracks=40, faults=Faults(malformed_share=0.15))
    with StandIn(config) as messy:
        albums = _new_albums(messy)
        defective = {album for album, tracks in albums.items() if any(messy.defect_of(t.track_id) for t in tracks)}
        clean = sorted(set(albums) - defective)
        assert defective and len(clean) > 1
        # One clean album re-releases recordings the store already holds under
        # other ids: none of its tracks is written, yet it is read whole.
        reissue = next(a for a in clean if not any(messy.defect_of(t.track_id) for t in albums[a]))
        db = tmp_path / "sonufy.duckdb"
        held = pl.DataFrame([catalog.parse_track({
            "id": f"held{n:018d}", "name": t.title, "artists": [{"name": t.artist, "id": t.artist_id}],
            "album": {"id": "heldalbum0000000000000", "name": "Held"}, "duration_ms": t.duration_ms,
            "external_ids": {"isrc": t.isrc}}) for n, t in enumerate(albums[reissue])], schema=TRACK_SCHEMA)
        Store(db).upsert_tracks(held)

        first = _tag_new_flow(_settings(messy), str(db))
        assert first["albums_known"] == 0
        assert first["read"] == {t.track_id for tracks in albums.values() for t in tracks}
        assert Store(db).known_album_ids() == frozenset(clean)
        written = {row["track_id"] for row in _tables(db)["tracks"]}
        assert not written & {t.track_id for t in albums[reissue]}, "the re-released recordings stay the originals"

        # The next night reads again only the albums with a track that failed, to retry it.
        second = _tag_new_flow(_settings(messy), str(db))
        assert second["albums_known"] == len(clean)
        assert second["read"] == {t.track_id for album in defective for t in albums[album]}
        assert second["tracks_written"] == 0
        quarantine = _sql_rows(db, "SELECT track_id, attempts FROM quarantine")
        attempts = {row["track_id"]: row["attempts"] for row in quarantine}
        assert attempts and set(attempts.values()) == {2}


def _sql_rows(db: Path, query: str) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(query).pl().to_dicts()
    finally:
        con.close()


@pytest.mark.parametrize("query, album_only", [
    ("tag:new", True), ('genre:"techno" tag:NEW', True), ("tag:hipster year:2026", True),
    ("tag:newest", False), ('album:"tag:new"', False), ("year:2026", False),
])
def test_album_only_filters_are_recognised(query, album_only):
    assert catalog.is_album_query(query) is album_only


def test_the_stand_in_re_releases_tracks_on_compilations(server):
    client = catalog.spotify_client(_settings(server))
    reissue = server.compilations[0]
    original = next(t for t in server.catalog if t.isrc == reissue.isrc)
    assert reissue.track_id != original.track_id and reissue.release_date > original.release_date
    body = client.track(reissue.track_id)
    assert body["external_ids"]["isrc"] == original.isrc and body["name"] == original.title
    assert body["album"]["album_type"] == "compilation" and body["album"]["artists"][0]["name"] == "Various Artists"
    found = client.search(f"isrc:{original.isrc}", limit=10)["tracks"]["items"]
    assert {item["id"] for item in found} == {original.track_id, reissue.track_id}
    deezer = requests.get(f"{server.deezer_api_base}/track/isrc:{original.isrc}", timeout=10).json()
    assert deezer["id"] == original.deezer_id and deezer["album"]["title"] == original.album
    new_albums = client.search("tag:new", type="album", limit=10)["albums"]["items"]
    assert reissue.album_id not in {item["id"] for item in new_albums}, "compilations are not new releases"


def test_isrc_duplicates_collapse_to_the_original_release(server, tmp_path):
    reissue = server.compilations[0]
    style = reissue.style
    config = ScrapeConfig(
        queries=(f'genre:"{style}"',),
        album_ids=(reissue.album_id,),
        playlist_ids=(DEMO_PLAYLIST_IDS["reissues"],),
    )
    tracks, _ = catalog.parse_scrape(catalog.fetch_catalog(_settings(server), config))
    reissue_ids = {t.track_id for t in server.compilations}
    assert reissue_ids <= set(tracks["track_id"]), "search, album and playlist all found the re-releases"

    kept, dropped = catalog.one_per_isrc(tracks)
    originals = {t.track_id for t in server.catalog if t.style == style}
    originals |= {t.track_id for t in server.catalog if t.isrc in {r.isrc for r in server.compilations}}
    assert set(kept["track_id"]) == originals and kept["isrc"].n_unique() == kept.height
    assert set(dropped["track_id"]) == reissue_ids
    original_of = {t.isrc: t.track_id for t in server.catalog}
    assert all(original_of[isrc] == kept_id for isrc, kept_id in zip(dropped["isrc"], dropped["kept_track_id"]))
    shuffled, _ = catalog.one_per_isrc(tracks.reverse())
    assert set(shuffled["track_id"]) == originals, "the choice does not depend on the order found"

    # The database keeps one track per ISRC by itself, within a batch and across runs.
    store = Store(tmp_path / "sonufy.duckdb")
    assert store.upsert_tracks(tracks) == len(originals)
    only_reissues = tracks.filter(pl.col("track_id").is_in(list(reissue_ids)))
    assert store.upsert_tracks(only_reissues) == 0
    rows = _tables(store.path)["tracks"]
    assert {row["track_id"] for row in rows} == originals


# --------------------------------------------------------------------------- pagination


def test_pagination_stops_cleanly_at_the_offset_cap():
    with StandIn(StandInConfig(n_tracks=1100, today=TODAY)) as big:
        settings = _settings(big, spotify_rate_per_s=1000.0)
        result = catalog.fetch_catalog(settings, ScrapeConfig(queries=("year:1900-2100", "zzzqqq")))
        tracks, _ = catalog.parse_scrape(result)
        assert [p.offset for p in result.pages if p.query == "year:1900-2100"] == list(range(0, 1001, 10))
        assert tracks.height == 1010 == catalog.SEARCH_MAX_ITEMS
        assert big.stats["GET /v1/search"] == 102, "101 pages, one empty answer, no request past the cap"
        assert not result.problems
        [capped] = result.capped
        assert "matches 1100 tracks" in capped and "kept the first 1010" in capped

        few = catalog.fetch_catalog(settings, ScrapeConfig(queries=("year:1900-2100",), max_items_per_query=25))
        assert sum(len(p.paging["items"]) for p in few.pages) == 25 and len(few.pages) == 3
        assert not few.capped


# --------------------------------------------------------------------------- tokens, 429s, 5xx


def test_a_token_that_expires_mid_run_loses_nothing():
    with StandIn(StandInConfig(n_tracks=60, today=TODAY, token_ttl_s=1)) as short:
        styles = sorted({t.style for t in short.catalog})[:3]
        config = ScrapeConfig(
            queries=tuple(f'genre:"{style}"' for style in styles),
            album_ids=(short.catalog[0].album_id,),
            playlist_ids=(DEMO_PLAYLIST_IDS["each_style"],),
        )
        expected = {t.track_id for t in short.catalog if t.style in styles or t.album_id == short.catalog[0].album_id}
        expected |= {t.track_id for t in {t.style: t for t in reversed(short.catalog)}.values()}

        # spotipy believes its token good for an hour, but the server let it expire.
        client = catalog.spotify_client(_settings(short))
        client.auth_manager.get_access_token(as_dict=False)
        stale = dict(client.auth_manager.cache_handler.get_cached_token(), expires_at=int(time.time()) + 3600)
        client.auth_manager.cache_handler.save_token_to_cache(stale)
        for _ in range(50):  # wait until the server refuses it
            time.sleep(0.2)
            try:
                client.search("zzz", limit=1)
            except Exception:
                break
        assert short.stats["expired token"] == 1
        client.auth_manager.cache_handler.save_token_to_cache(stale)
        result = asyncio.run(catalog.scrape(client, config, SharedLimiter(200, "spotify")))
        tracks, _ = catalog.parse_scrape(result)
        assert set(tracks["track_id"]) == expected and not result.problems
        assert short.stats["expired token"] >= 2, "the stale token was refused during the run"
        assert short.stats["tokens issued"] >= 3, "fresh tokens replaced it, refreshed as they expired"


def test_bad_credentials_and_an_unreachable_service_are_named_as_such(server):
    config = ScrapeConfig(queries=("genre:ambient",))
    with pytest.raises(catalog.BadCredentials, match=r"refused the client credentials \(invalid_client.*"
                       r"check SPOTIFY_CLIENT_ID and SPOTIFY_CLIENT_SECRET") as refused:
        catalog.fetch_catalog(_settings(server).with_endpoints(spotify_client_secret="wrong"), config)
    assert "wrong" not in str(refused.value)  # the secret never reaches a message
    # Nothing listens on port 9 of the loopback: the cause is the connection, not a rate limit.
    closed = "http://127.0.0.1:9"
    with pytest.raises(catalog.Unreachable, match=r"cannot reach http://127.0.0.1:9 .*check SONUFY_SPOTIFY_API_BASE"):
        catalog.fetch_catalog(_settings(server, spotify_max_wait_s=1.0).with_endpoints(
            spotify_api_base=closed, spotify_accounts_base=closed), config)
    # A base URL with /v1 already on it: the search is not found there. Named,
    # instead of an empty catalog that fails later for want of tracks.
    with pytest.raises(catalog.ServiceError, match=r"answered HTTP 404 at .*/v1/v1/search: no Web API there; "
                                                   r"check SONUFY_SPOTIFY_API_BASE"):
        catalog.fetch_catalog(_settings(server).with_endpoints(spotify_api_base=f"{server.base_url}/v1"), config)


def test_429_bursts_and_5xx_storms_lose_nothing_and_pause_every_request():
    faults = Faults(rate_429=0.2, retry_after_s=1, rate_5xx=0.2, seed=11)
    with StandIn(StandInConfig(n_tracks=200, today=TODAY, faults=faults)) as stormy:
        styles = sorted({t.style for t in stormy.catalog})[:8]
        album_id = stormy.catalog[1].album_id
        config = ScrapeConfig(
            queries=tuple(f'genre:"{style}"' for style in styles),
            album_ids=(album_id,),
            playlist_ids=(DEMO_PLAYLIST_IDS["deep_cuts"],),
        )
        limiter = SharedLimiter(100, "spotify")
        result = catalog.fetch_catalog(_settings(stormy, spotify_concurrency=4), config, limiter)
        tracks, _ = catalog.parse_scrape(result)

        expected = {t.track_id for t in stormy.catalog if t.style in styles or t.album_id == album_id}
        expected |= {t.track_id for t in stormy.catalog[::3]}
        assert set(tracks["track_id"]) == expected and not result.problems
        assert stormy.stats["fault 429"] >= 1 and stormy.stats["fault 5xx"] >= 1

        # Every request went through the one limiter, and none was let through
        # while a 429's Retry-After was running, whichever request had got it.
        assert limiter.granted == _api_requests(stormy) == result.requests
        assert limiter.pauses and result.pauses == len(limiter.pauses)
        for pause in limiter.pauses:
            assert pause.end - pause.start >= faults.retry_after_s
            assert not [t for t in limiter.grant_times if pause.start < t < pause.end]
        assert limiter.held_back > len(limiter.pauses), "requests other than the refused one waited too"


# --------------------------------------------------------------------------- the metadata suite


def test_an_empty_batch_passes_without_loading_great_expectations():
    # An empty night checks no tracks: it must not pay Great Expectations' import (seconds).
    code = ("import sys, polars as pl; from sonufy_model import quality; "
            "from sonufy_model.schemas import TRACK_SCHEMA; "
            "r = quality.check_tracks(pl.DataFrame(schema=TRACK_SCHEMA)); "
            "print('great_expectations' in sys.modules, r.success, r.n_rows, r.failures.columns)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False True 0 ['track_id', 'reason']"


def test_great_expectations_made_ready_in_the_background_is_what_the_suite_then_uses():
    # A nightly that finds new albums starts the import while their tracks are
    # read; the suite that follows must use that context, not make a second.
    code = ("import sys, threading, polars as pl; from sonufy_model import quality, warmup; "
            "rows = [(c * 22, 'spotify', f'USABC240000{i}', 200_000, 'Song', 'Band') for i, c in enumerate('abc')]; "
            "frame = pl.DataFrame(rows, schema=['track_id', 'source', 'isrc', 'duration_ms', 'title', 'artist'], "
            "orient='row'); "
            "print(quality.prepare_in_background(), quality.prepare_in_background()); "
            "r = quality.check_tracks(frame); warmup.wait('great expectations'); "
            "print(r.success, r.n_rows, quality._make_context.cache_info().misses, "
            "[t.name for t in threading.enumerate() if t.name.startswith('warm-up')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["True False", "True 3 1 []"]


def test_the_suite_names_what_each_bad_row_breaks():
    rows = [
        ("a" * 22, "spotify", "USABC2400001", 200_000, "Song", "Band"),  # fine
        ("bad-id", "spotify", "USABC2400002", 200_000, "Song", "Band"),
        ("file:0123abcd", "folder", None, 200_000, "Song", "Band"),  # not a Spotify id, and need not be
        ("b" * 22, "spotify", "us-abc-24-00003", 200_000, "Song", "Band"),
        ("c" * 22, "spotify", None, 200_000, "Song", "Band"),  # no ISRC is allowed
        ("d" * 22, "spotify", "USABC2400004", 9_000, "Jingle", "Band"),
        ("e" * 22, "spotify", "USABC2400005", 3 * 3_600_000, "Drone", "Band"),
        ("f" * 22, "spotify", "USABC2400006", None, "Song", "Band"),
        ("g" * 22, "spotify", "USABC2400007", 200_000, "  ", "Band"),
        ("h" * 22, "spotify", "USABC2400008", 200_000, "Song", ""),
        ("i" * 22, "spotify", "USABC2400009", 200_000, "Song", "Band"),
        ("i" * 22, "spotify", "USABC2400009", 200_000, "Song", "Band"),
    ]
    frame = pl.DataFrame(
        rows, schema=["track_id", "source", "isrc", "duration_ms", "title", "artist"], orient="row"
    )
    report = quality.check_tracks(frame)
    reasons = dict(zip(report.failures["track_id"], report.failures["reason"]))
    assert set(reasons) == {"bad-id", "b" * 22, "d" * 22, "e" * 22, "f" * 22, "g" * 22, "h" * 22, "i" * 22}
    assert "column=track_id" in reasons["bad-id"] and "where source == 'spotify'" in reasons["bad-id"]
    assert "expect_column_values_to_match_regex(column=isrc" in reasons["b" * 22]
    for track_id in ("d" * 22, "e" * 22, "f" * 22):
        assert "expect_column_values_to_be_between(column=duration_ms" in reasons[track_id]
    assert "column=title" in reasons["g" * 22] and "column=artist" in reasons["h" * 22]
    assert "expect_column_values_to_be_unique(column=track_id)" in reasons["i" * 22]


@flow(name="scrape-test", validate_parameters=False)
def _scrape_flow(settings: ServiceSettings, config: ScrapeConfig, db: str) -> dict:
    """The scrape tasks as the build flow chains them: fetch → parse → check → upsert."""
    tracks = parse_tracks(scrape_catalog(settings, config))
    return upsert_tracks(Store(db), tracks, check_tracks(tracks), "test-run")


def test_malformed_items_are_quarantined_and_reruns_change_nothing(prefect_api, tmp_path):
    config = StandInConfig(n_tracks=120, today=TODAY, compilation_share=0.15, faults=Faults(malformed_share=0.15))
    with StandIn(config) as messy:
        styles = sorted({t.style for t in messy.catalog})[:8]
        scrape = ScrapeConfig(
            queries=tuple(f'genre:"{style}"' for style in styles),
            playlist_ids=(DEMO_PLAYLIST_IDS["reissues"],),
        )
        db = tmp_path / "sonufy.duckdb"
        first = _scrape_flow(_settings(messy), scrape, str(db))
        after_first = _tables(db)

        found = {t.track_id: t for t in [*messy.catalog, *messy.compilations]
                 if t.style in styles or t.isrc in {c.isrc for c in messy.compilations}}
        defects = {track_id: messy.defect_of(track_id) for track_id in found if messy.defect_of(track_id)}
        assert defects and set(defects.values()) == {"isrc", "name", "duration", "artist"}
        column = {"isrc": "column=isrc", "name": "column=title", "duration": "column=duration_ms",
                  "artist": "column=artist"}
        quarantined = {row["track_id"]: (row["stage"], row["reason"]) for row in after_first["quarantine"]}
        assert set(quarantined) == set(defects)
        for track_id, defect in defects.items():
            stage, reason = quarantined[track_id]
            assert stage == "scrape" and reason.startswith("tracks: expect_") and column[defect] in reason
        written = {row["track_id"] for row in after_first["tracks"]}
        assert not written & set(defects), "failing rows are not written"
        assert first["quarantined_scrape"] == len(defects) and first["isrc_duplicates"] > 0
        isrcs = [row["isrc"] for row in after_first["tracks"]]
        assert len(isrcs) == len(set(isrcs)) == first["tracks"] == first["tracks_written"]

        # A rerun writes nothing: same rows, same values, same updated_at.
        second = _scrape_flow(_settings(messy), scrape, str(db))
        assert second["tracks_written"] == 0 and second["tracks"] == first["tracks"]
        assert _tables(db) == after_first

        # A value changed by hand is put back on the next run, and only that row is touched.
        victim = sorted(written)[0]
        con = duckdb.connect(str(db))
        con.execute("UPDATE tracks SET title = 'wrong' WHERE track_id = ?", [victim])
        con.close()
        third = _scrape_flow(_settings(messy), scrape, str(db))
        assert third["tracks_written"] == 1
        repaired = _tables(db)
        assert len(repaired["tracks"]) == len(after_first["tracks"])
        changed = [new for old, new in zip(after_first["tracks"], repaired["tracks"]) if old != new]
        assert [row["track_id"] for row in changed] == [victim] and changed[0]["title"] == found[victim].title
