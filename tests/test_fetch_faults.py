"""The fetch stage under fire: fault storms, the URL guard, the size cap, attempts, resumption.

Everything runs the real fetch code over real HTTP against the stand-in (or,
for what the stand-in cannot do, a small misbehaving server started here),
and records into real DuckDB files. The stage is the one the build and the
nightly run (``flows.stages.fetch_pending``: its fetch and record tasks a
batch at a time), in a flow of its own on the session's Prefect test server.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import aiohttp
import duckdb
import numpy as np
import polars as pl
import pytest
import soundfile as sf
from aiohttp import web
from prefect import flow
from tenacity import RetryCallState

from flows.stages import fetch_pending
from sonufy_demo.standin import Faults, StandIn, StandInConfig
from sonufy_demo.synth import preview_mp3
from sonufy_model import catalog, previews, quality, retries, url_guard
from sonufy_model import preview_sources as sources
from sonufy_model.config import ServiceSettings
from sonufy_model.schemas import TRACK_SCHEMA
from sonufy_model.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
CATALOG = 300  # one catalog for every stand-in here: previews are rendered once into a shared cache
CDN = "GET /deezer-cdn/preview/{deezer_id}.mp3"
DEEZER_TRACK = "GET /deezer/track/{key}"
RELEASE_SQL = "DELETE FROM quarantine WHERE stage = 'fetch' AND attempts >= 3"  # as in the README


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("standin-cache")


@pytest.fixture
def standin(cache_dir):
    """Start stand-ins of the shared catalog with their own faults; all stopped after the test."""
    started: list[StandIn] = []

    def start(**config) -> StandIn:
        config.setdefault("n_tracks", CATALOG)
        started.append(StandIn(StandInConfig(cache_dir=cache_dir, **config)).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def fetch_stage(prefect_api):
    """Run the flows' fetch stage on a store, in a flow run of its own; its counts.

    A stage with nothing to fetch counts nothing: its counts are zeros here
    (the flows leave them out of the run's counts)."""

    def run(store: Store, settings: ServiceSettings, directory: Path, *, batch_size: int = 128,
            run_id: str | None = None) -> dict:
        @flow(name="fetch-stage")
        def fetch_stage_flow() -> dict:
            return fetch_pending(store, settings, Path(directory), run_id, batch_size)

        return {"fetched": 0, "failed": 0, **fetch_stage_flow()}

    return run


def _settings(server: StandIn, **changes) -> ServiceSettings:
    values = dict(deezer_rate_per_s=1000.0, deezer_quota_wait_s=0.2, download_attempts=3)
    values.update(changes)
    return server.service_settings(**values)


def _track_rows(tracks, **overrides) -> pl.DataFrame:
    rows = []
    for track in tracks:
        row = {name: None for name in TRACK_SCHEMA}
        row.update(track_id=track.track_id, source="spotify", title=track.title, artist=track.artist,
                   artists=[track.artist], isrc=track.isrc)
        row.update(overrides)
        rows.append(row)
    return pl.DataFrame(rows, schema=TRACK_SCHEMA)


def _store(tmp_path: Path, tracks, **overrides) -> Store:
    store = Store(tmp_path / "sonufy.duckdb")
    store.upsert_tracks(_track_rows(tracks, **overrides))
    return store


def _sql(store: Store, query: str) -> list[tuple]:
    con = duckdb.connect(str(store.path), read_only=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def _assert_each_track_in_exactly_one_state(store: Store, track_ids) -> tuple[set, dict]:
    """Every track downloaded or quarantined, never both, never twice; returns both sets."""
    downloaded = [row[0] for row in _sql(store, "SELECT track_id FROM previews")]
    quarantined = dict(_sql(store, "SELECT track_id, reason FROM quarantine WHERE stage = 'fetch'"))
    assert len(downloaded) == len(set(downloaded))
    assert not set(downloaded) & set(quarantined)
    assert set(downloaded) | set(quarantined) == set(track_ids), "no track lost"
    for track_id, stored in _sql(store, "SELECT track_id, path FROM previews"):
        path = store.absolute_path(stored)  # recorded relative to the database file's folder
        assert Path(path).name == f"{track_id}.mp3" and sf.info(path).duration > 25
    return set(downloaded), quarantined


def _part_files(directory: Path) -> list[Path]:
    return list(directory.glob(".*.part")) + list(directory.glob("*.part"))


# --------------------------------------------------------------------------- fault storms


def test_fault_storm_every_track_ends_downloaded_or_quarantined(standin, fetch_stage, tmp_path):
    faults = Faults(
        rate_429=0.08, retry_after_s=1, rate_5xx=0.08, reset_rate=0.06, truncate_share=0.06,
        garbage_share=0.06, deezer_quota_rate=0.06, expired_url_share=0.06, seed=11,
    )
    server = standin(faults=faults, deezer_missing_share=0.0)
    tracks = server.catalog[:48]
    # A quarter have no ISRC in the catalog: Deezer's search by artist and title finds them.
    store = _store(tmp_path, tracks[:36])
    store.upsert_tracks(_track_rows(tracks[36:], isrc=None))
    settings = _settings(server, download_concurrency=8, download_per_host=8, download_attempts=5)
    directory = tmp_path / "previews"

    totals = fetch_stage(store, settings, directory, batch_size=24, run_id="storm-1")

    downloaded, quarantined = _assert_each_track_in_exactly_one_state(store, [t.track_id for t in tracks])
    assert totals == {"fetched": len(downloaded), "failed": len(quarantined)}
    assert len(downloaded) >= 40, quarantined
    assert sum(v for k, v in server.stats.items() if k.startswith("fault")) >= 15
    assert server.stats["GET /deezer/search"] >= 12, "tracks without an ISRC are searched for"
    for reason in quarantined.values():
        assert reason.startswith("spotify: no preview; deezer: ") and "after 5 tries" in reason
        assert "hmac" not in reason and "hdnea" not in reason, "signed URLs never reach the database"
    assert not _part_files(directory)

    # The rerun retries only the quarantined tracks; nothing downloaded is fetched again.
    mtimes = {p.name: p.stat().st_mtime_ns for p in directory.glob("*.mp3")}
    cdn_before = server.stats[CDN]
    fetch_stage(store, settings, directory, batch_size=24, run_id="storm-2")
    downloaded_again, _ = _assert_each_track_in_exactly_one_state(store, [t.track_id for t in tracks])
    assert downloaded <= downloaded_again
    assert all((directory / name).stat().st_mtime_ns == mtime for name, mtime in mtimes.items())
    assert server.stats[CDN] - cdn_before <= 5 * len(quarantined)


@pytest.mark.parametrize(
    ("faults", "config", "changes", "expected"),
    [
        pytest.param(Faults(rate_5xx=1.0), {}, {}, "HTTP 50", id="5xx"),
        pytest.param(Faults(rate_429=1.0, retry_after_s=1), {}, {}, "HTTP 429 (Retry-After 1 s)", id="429"),
        pytest.param(Faults(rate_429=1.0, retry_after_s=90), {}, {"max_retry_after_s": 30},
                     "Retry-After 90 s is too long for this run", id="429-too-long"),
        pytest.param(Faults(deezer_quota_rate=1.0), {}, {}, "Deezer quota exceeded", id="deezer-quota"),
        pytest.param(Faults(reset_rate=1.0, reset_routes=("/deezer/",)), {}, {}, "ServerDisconnectedError",
                     id="reset-api"),
        pytest.param(Faults(reset_rate=1.0, reset_routes=("/deezer-cdn/",)), {}, {}, "ClientPayloadError",
                     id="reset-mid-body"),
        pytest.param(Faults(truncate_share=1.0), {}, {}, "audio", id="truncated"),
        pytest.param(Faults(garbage_share=1.0), {}, {}, "does not decode as audio", id="not-audio"),
        pytest.param(Faults(expired_url_share=1.0), {}, {}, "HTTP 403 (expired or refused URL)", id="expired-url"),
        pytest.param(Faults(latency_ms=500), {}, {"request_timeout_s": 0.2}, "TimeoutError", id="slow"),
        pytest.param(Faults(), {"deezer_missing_share": 1.0}, {}, None, id="not-on-deezer"),
    ],
)
def test_each_fault_ends_in_quarantine_with_its_reason(
    standin, fetch_stage, tmp_path, faults, config, changes, expected
):
    server = standin(faults=faults, **config)
    tracks = server.catalog[60:62]
    store = _store(tmp_path, tracks)
    settings = _settings(server, download_attempts=2, download_concurrency=1, **changes)
    fetch_stage(store, settings, tmp_path / "previews", run_id="faulty")
    _, quarantined = _assert_each_track_in_exactly_one_state(store, [t.track_id for t in tracks])
    assert set(quarantined) == {t.track_id for t in tracks}
    for reason in quarantined.values():
        if expected is None:
            assert reason == "spotify: no preview; deezer: no preview"
        else:
            assert reason.startswith("spotify: no preview; deezer: ") and expected in reason, reason
            assert "hmac" not in reason
    if expected and "too long" in expected:
        assert server.stats["fault 429"] == 2, "no retry when Retry-After is beyond the run's patience"
    assert not list((tmp_path / "previews").iterdir())


def test_429_bursts_and_expired_urls_are_waited_out_and_resolved_again(standin, fetch_stage, tmp_path):
    # One track at a time: the faults meet the requests in a fixed order.
    server = standin(faults=Faults(rate_429=0.3, retry_after_s=1, expired_url_share=0.3, seed=5))
    tracks = server.catalog[70:76]
    store = _store(tmp_path, tracks)
    settings = _settings(server, download_attempts=8, download_concurrency=1)
    fetch_stage(store, settings, tmp_path / "previews")
    downloaded, quarantined = _assert_each_track_in_exactly_one_state(store, [t.track_id for t in tracks])
    assert not quarantined and len(downloaded) == 6
    assert server.stats["fault 429"] > 0 and server.stats["fault expired url"] > 0
    # Each expired URL cost one download attempt and one fresh resolution, nothing else.
    assert server.stats[CDN] == 6 + server.stats["fault expired url"]
    assert server.stats[DEEZER_TRACK] == server.stats[CDN] + server.stats["fault 429"]


def test_backoff_never_waits_less_than_retry_after():
    from tenacity import AsyncRetrying

    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = 1
    state.set_exception((url_guard.TransientError, url_guard.TransientError("429", retry_after_s=7.0), None))
    assert previews._wait(state) >= 7.0
    state.set_exception((url_guard.TransientError, url_guard.TransientError("503"), None))
    assert previews._wait(state) <= 1.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),  # never a negative wait
        ("Thu, 01 Jan 2026 00:02:00 GMT", 120.0),  # an HTTP-date two minutes ahead
        ("Thursday, 01-Jan-26 00:00:30 GMT", 30.0),  # the obsolete RFC 850 form
        ("Thu, 01 Jan 2026 00:00:45 -0000", 45.0),  # no zone: GMT, as HTTP dates are
        ("Thu Jan  1 00:00:10 2026", 10.0),  # asctime's form, no zone either
        ("Wed, 31 Dec 2025 23:59:00 GMT", 0.0),  # a date that has passed: go now
        ("Fri, 01 Jan 2100 00:00:00 GMT", retries.MAX_RETRY_AFTER_S),  # capped
        ("1e400", retries.MAX_RETRY_AFTER_S),
        (None, retries.DEFAULT_RETRY_AFTER_S),
        ("", retries.DEFAULT_RETRY_AFTER_S),
        ("soon", retries.DEFAULT_RETRY_AFTER_S),
        ("nan", retries.DEFAULT_RETRY_AFTER_S),
        ("Thu, 32 Jan 2026 00:00:00 GMT", retries.DEFAULT_RETRY_AFTER_S),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value, seconds):
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert retries.retry_after_seconds(value, now=now) == pytest.approx(seconds)


# --------------------------------------------------------------------------- reruns, attempts, resumption


def test_rerun_is_idempotent(standin, fetch_stage, tmp_path):
    server = standin()
    tracks = server.catalog[80:88]
    store = _store(tmp_path, tracks)
    settings = _settings(server)
    directory = tmp_path / "previews"
    assert fetch_stage(store, settings, directory) == {"fetched": 8, "failed": 0}
    mtimes = {p: p.stat().st_mtime_ns for p in directory.iterdir()}
    stats = Counter(server.stats)
    rows = _sql(store, "SELECT * FROM previews ORDER BY track_id")

    assert fetch_stage(store, settings, directory) == {"fetched": 0, "failed": 0}
    assert server.stats == stats, "no request at all: nothing is pending"
    assert {p: p.stat().st_mtime_ns for p in directory.iterdir()} == mtimes
    assert _sql(store, "SELECT * FROM previews ORDER BY track_id") == rows

    # Recording the same outcomes twice makes no duplicate either.
    outcomes = pl.DataFrame(
        [{"track_id": r[0], "provider": r[1], "path": r[2], "bytes": r[3], "duration_s": r[4], "error": None}
         for r in rows],
        schema=previews.OUTCOME_SCHEMA,
    )
    previews.record_outcomes(store, outcomes, "again", settings)
    assert _sql(store, "SELECT count(*), count(DISTINCT track_id) FROM previews") == [(8, 8)]


def test_attempts_are_counted_per_run_then_the_track_waits_to_be_released(standin, fetch_stage, tmp_path):
    broken = standin(faults=Faults(garbage_share=1.0))
    tracks = broken.catalog[90:92]
    store = _store(tmp_path, tracks)
    directory = tmp_path / "previews"
    settings = _settings(broken, download_attempts=1, fetch_max_attempts=3)
    for run in (1, 2, 3):
        assert fetch_stage(store, settings, directory, run_id=f"run-{run}") == {"fetched": 0, "failed": 2}
        assert set(store.quarantined("fetch")["attempts"]) == {run}
        assert set(store.quarantined("fetch")["run_id"]) == {f"run-{run}"}
    requests_so_far = Counter(broken.stats)
    assert store.tracks_without_preview(3).is_empty()
    assert fetch_stage(store, settings, directory) == {"fetched": 0, "failed": 0}
    assert broken.stats == requests_so_far, "an exhausted track is not tried again"

    # A person releases them (README), and a working service delivers.
    con = duckdb.connect(str(store.path))
    con.execute(RELEASE_SQL)
    con.close()
    working = standin()
    assert fetch_stage(store, _settings(working), directory) == {"fetched": 2, "failed": 0}
    _assert_each_track_in_exactly_one_state(store, [t.track_id for t in tracks])
    assert store.quarantined().is_empty(), "a success removes the quarantine row"


# The fetch stage in a flow run of its own, as the build and the nightly run it.
_RUNNER = """
import json, sys
from pathlib import Path
from prefect import flow
from flows.stages import fetch_pending
from sonufy_model.config import ServiceSettings
from sonufy_model.store import Store
job = json.loads(sys.argv[1])

@flow(name="fetch-stage")
def fetch_stage():
    return fetch_pending(Store(job["db"]), ServiceSettings(**job["settings"]), Path(job["directory"]), "killed",
                         job["batch_size"])

fetch_stage()
print("done", flush=True)
"""


def test_a_killed_run_resumes_where_it_stopped(standin, fetch_stage, tmp_path):
    from prefect.settings import PREFECT_API_URL

    server = standin(faults=Faults(latency_ms=100))
    tracks = server.catalog[100:124]
    store = _store(tmp_path, tracks)
    directory = tmp_path / "previews"
    settings = {
        "spotify_api_base": server.spotify_api_base,
        "spotify_accounts_base": server.spotify_accounts_base,
        "deezer_api_base": server.deezer_api_base,
        "deezer_rate_per_s": 1000.0,
        "download_concurrency": 2,
    }
    job = {"db": str(store.path), "directory": str(directory), "batch_size": 4, "settings": settings}
    process = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, json.dumps(job)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
             "PYTHONUNBUFFERED": "1"},
    )
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "record-previews[batch 2]" in line:  # the task run's last line: batch 2 is recorded
                break
        process.send_signal(signal.SIGKILL)  # mid-run: batch 3 is in flight
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])

    recorded = {row[0] for row in _sql(store, "SELECT track_id FROM previews")}
    assert 8 <= len(recorded) < len(tracks)
    # What kill -9 leaves behind mid-write: a temporary file of the dead process.
    (directory / f".{tracks[-1].track_id}.mp3.{process.pid}-0badf00d.part").write_bytes(b"half an mp3")
    mtimes = {p.name: p.stat().st_mtime_ns for p in directory.glob("*.mp3") if p.stem in recorded}
    downloads_before = server.stats[CDN]

    totals = fetch_stage(store, ServiceSettings(**settings), directory, batch_size=4)

    assert totals == {"fetched": len(tracks) - len(recorded), "failed": 0}
    assert server.stats[CDN] - downloads_before == len(tracks) - len(recorded), "no finished download repeated"
    downloaded, quarantined = _assert_each_track_in_exactly_one_state(store, [t.track_id for t in tracks])
    assert len(downloaded) == len(tracks) and not quarantined
    assert all((directory / name).stat().st_mtime_ns == mtime for name, mtime in mtimes.items())
    assert not _part_files(directory)
    assert sorted(p.name for p in directory.iterdir()) == sorted(f"{t.track_id}.mp3" for t in tracks)


# --------------------------------------------------------------------------- sources


def test_deezer_search_fallback_picks_the_matching_track_not_the_first_hit(standin):
    server = standin()
    rank = {t.track_id: i for i, t in enumerate(sorted(server.catalog, key=lambda t: (-t.popularity, t.index)))}
    # A track whose title's words all occur in a more popular title by the same artist:
    # the search answers with that other track first.
    wanted, decoy = next(
        (a, b)
        for a in server.catalog
        for b in server.catalog
        if a is not b and a.artist == b.artist and rank[b.track_id] < rank[a.track_id]
        and all(word in b.title.lower() for word in a.title.lower().split())
    )
    settings = _settings(server)

    async def resolve(track: dict) -> str | None:
        source = sources.preview_sources(settings.with_endpoints(preview_sources=("deezer",)))[0]
        async with aiohttp.ClientSession() as session:
            return await source.resolve(session, track)

    def as_track(t, **changes) -> dict:
        return {"track_id": t.track_id, "isrc": t.isrc, "artist": t.artist, "title": t.title, **changes}

    for track in (as_track(wanted, isrc=None), as_track(wanted, isrc="QZZZZ9999999")):  # missing, or unknown (800)
        url = asyncio.run(resolve(track))
        assert f"/deezer-cdn/preview/{wanted.deezer_id}.mp3?" in url, "the exact match, not the decoy"
    assert f"/{decoy.deezer_id}.mp3?" in asyncio.run(resolve(as_track(decoy, isrc=None)))
    # Same words, other case and accents: still the track. A near miss is no match.
    assert asyncio.run(resolve(as_track(wanted, isrc=None, artist=wanted.artist.upper() + " ")))
    assert asyncio.run(resolve(as_track(wanted, isrc=None, artist=wanted.artist.split()[-1]))) is None
    assert server.stats["GET /deezer/search"] == 5 and server.stats[DEEZER_TRACK] == 1


def test_spotify_preview_url_first_and_deezer_only_when_it_has_none(standin, fetch_stage, tmp_path):
    server = standin(preview_url_share=0.5)
    settings = _settings(server)
    pages = catalog.fetch_search_pages(settings, [f'genre:"{server.catalog[0].style}"'], max_items_per_query=10)
    tracks, _ = catalog.parse_search_pages(pages)
    tracks = tracks.head(8)
    with_url = set(tracks.filter(pl.col("preview_url").is_not_null())["track_id"])
    assert 0 < len(with_url) < tracks.height
    store = Store(tmp_path / "sonufy.duckdb")
    store.upsert_tracks(tracks)
    fetch_stage(store, settings, tmp_path / "previews")
    providers = dict(_sql(store, "SELECT track_id, provider FROM previews"))
    assert providers == {t: "spotify" if t in with_url else "deezer" for t in tracks["track_id"]}
    assert server.stats["GET /spotify-cdn/mp3-preview/{track_id}"] == len(with_url)


# --------------------------------------------------------------------------- the URL guard


def test_url_policy_refuses_what_production_must_not_reach():
    policy = url_guard.UrlPolicy.from_settings(ServiceSettings())
    refused = [
        "file:///etc/passwd",
        "ftp://api.deezer.com/track/1",
        "http://127.0.0.1:8765/deezer/track/1",
        "http://localhost/x.mp3",
        "http://[::1]/x.mp3",
        "http://[::ffff:127.0.0.1]/x.mp3",
        "http://10.0.0.7/x.mp3",
        "http://192.168.1.1/x.mp3",
        "http://172.16.0.1/x.mp3",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/x.mp3",
        "https://evil.example/x.mp3",
        "https://cdn-preview-a.evil.example.dzcdn.net/x.mp3",
        "https://user:pw@api.deezer.com/track/1",
    ]
    for url in refused:
        with pytest.raises(url_guard.UrlRefused):
            policy.check(url)
    allowed = [
        "https://api.deezer.com/track/isrc:USRC17607839",
        "http://api.deezer.com/search?q=x",
        "https://cdn-preview-e.dzcdn.net/stream/c-abc-1.mp3?hdnea=exp=1~hmac=2",
        "https://cdnt-preview.dzcdn.net/api/1/1/a/b/c/0/abc.mp3?hdnea=x",
        "https://p.scdn.co/mp3-preview/abc",
        "https://API.Deezer.com./track/1",
    ]
    assert all(policy.allows(url) for url in allowed)

    # The stand-in's loopback host is allowed when it is the configured endpoint, and only its port.
    standin = url_guard.UrlPolicy.from_settings(ServiceSettings(deezer_api_base="http://127.0.0.1:8765/deezer"))
    assert standin.allows("http://127.0.0.1:8765/deezer-cdn/preview/1.mp3?hdnea=x")
    assert not standin.allows("http://127.0.0.1:8766/")
    assert not standin.allows("http://10.0.0.7/x.mp3")
    assert not standin.allows("file:///etc/passwd")


def test_the_guard_also_checks_what_a_host_name_resolves_to():
    async def resolve(policy, host):
        resolver = url_guard.GuardedResolver(policy)
        try:
            return await resolver.resolve(host, 80)
        finally:
            await resolver.close()

    with pytest.raises(url_guard.UrlRefused, match="loopback, private or link-local"):
        asyncio.run(resolve(url_guard.UrlPolicy.from_entries(["local*"]), "localhost"))
    assert asyncio.run(resolve(url_guard.UrlPolicy.from_entries(["localhost"]), "localhost"))


def test_refused_urls_are_quarantined_before_any_request(standin, fetch_stage, tmp_path):
    server = standin(preview_url_share=1.0)
    other = standin(n_tracks=20)
    urls = {
        "t-file": "file:///etc/passwd",
        "t-private": "http://10.0.0.7/x.mp3",
        "t-metadata": "http://169.254.169.254/latest/meta-data/",
        "t-loopback": f"{other.base_url}/spotify-cdn/mp3-preview/x",  # loopback, but not the configured stand-in
        "t-ok": f"{server.base_url}/spotify-cdn/mp3-preview/{server.catalog[0].track_id}",
    }
    store = Store(tmp_path / "sonufy.duckdb")
    store.upsert_tracks(pl.DataFrame(
        [{**{n: None for n in TRACK_SCHEMA}, "track_id": k, "source": "spotify", "title": "t", "artist": "a",
          "preview_url": v} for k, v in urls.items()],
        schema=TRACK_SCHEMA,
    ))
    settings = _settings(server, preview_sources=("spotify",))
    fetch_stage(store, settings, tmp_path / "previews")
    downloaded, quarantined = _assert_each_track_in_exactly_one_state(store, list(urls))
    assert downloaded == {"t-ok"}
    assert "scheme 'file' is not allowed" in quarantined["t-file"]
    for key in ("t-private", "t-metadata", "t-loopback"):
        assert "UrlRefused" in quarantined[key] and "loopback, private or link-local" in quarantined[key]
    assert "GET /spotify-cdn/mp3-preview/{track_id}" not in other.stats, "no request reached it"

    # With production settings, even the stand-in's own URL is refused.
    with pytest.raises(url_guard.UrlRefused):
        url_guard.UrlPolicy.from_settings(ServiceSettings()).check(urls["t-ok"])


# --------------------------------------------------------------------------- a misbehaving CDN


@pytest.fixture(scope="module")
def rogue():
    """A CDN that lies: huge declared sizes, endless chunked bodies, redirects to places it should not."""
    sent: Counter[str] = Counter()
    mp3 = StandIn(StandInConfig(n_tracks=CATALOG)).catalog[0]
    audio = preview_mp3(mp3)

    async def stream(request: web.Request, declared: int | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        if declared is not None:
            response.content_length = declared
        await response.prepare(request)
        chunk = b"\xff" * 65536
        try:
            for _ in range(20 * 16):  # up to 20 MB
                await response.write(chunk)
                sent[request.path] += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    async def big(request):
        return await stream(request, 20 * 1024 * 1024)

    async def chunked(request):
        return await stream(request, None)

    async def audio_file(request):
        return web.Response(body=audio, content_type="audio/mpeg")

    async def busy_for_an_hour(request):
        until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        return web.Response(status=429, headers={"Retry-After": email.utils.format_datetime(until, usegmt=True)})

    def redirect(location):
        async def handler(request):
            raise web.HTTPFound(location)

        return handler

    app = web.Application()
    app.router.add_get("/big.mp3", big)
    app.router.add_get("/chunked.mp3", chunked)
    app.router.add_get("/audio.mp3", audio_file)
    app.router.add_get("/to-private", redirect("http://10.0.0.7/x.mp3"))
    app.router.add_get("/to-file", redirect("file:///etc/passwd"))
    app.router.add_get("/to-audio", redirect("/audio.mp3"))
    app.router.add_get("/busy.mp3", busy_for_an_hour)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", sent
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.run_until_complete(runner.cleanup())
    loop.close()


def _download(base: str, path: str, destination: Path, max_bytes: int = 1_000_000):
    policy = url_guard.UrlPolicy.from_entries([base.split("//", 1)[1]])

    async def go():
        async with aiohttp.ClientSession() as session:
            return await previews.download(session, f"{base}{path}", destination, policy=policy, max_bytes=max_bytes)

    return asyncio.run(go())


def test_size_cap_refuses_a_declared_size_before_reading_and_cuts_a_chunked_body(rogue, tmp_path):
    base, sent = rogue
    with pytest.raises(url_guard.PermanentError, match="Content-Length 20971520 is over the 1000000-byte cap"):
        _download(base, "/big.mp3", tmp_path / "big.mp3")
    with pytest.raises(url_guard.PermanentError, match="body cut off past the 1000000-byte cap"):
        _download(base, "/chunked.mp3", tmp_path / "chunked.mp3")
    assert sent["/chunked.mp3"] < 20 * 1024 * 1024, "the client hung up; the server could not send it all"
    assert not list(tmp_path.iterdir()), "nothing written, no temporary file left"


def test_size_cap_through_the_fetch_stage(standin, fetch_stage, tmp_path):
    server = standin()
    tracks = server.catalog[160:161]
    store = _store(tmp_path, tracks)
    fetch_stage(store, _settings(server, max_preview_bytes=100_000), tmp_path / "previews")
    [(reason,)] = _sql(store, "SELECT reason FROM quarantine")
    assert "PermanentError" in reason and "over the 100000-byte cap" in reason and "tries" not in reason


def test_redirects_are_followed_only_to_allowed_urls(rogue, tmp_path):
    base, _ = rogue
    with pytest.raises(url_guard.UrlRefused, match="10.0.0.7 is a loopback, private or link-local address"):
        _download(base, "/to-private", tmp_path / "a.mp3")
    with pytest.raises(url_guard.UrlRefused, match="scheme 'file' is not allowed"):
        _download(base, "/to-file", tmp_path / "b.mp3")
    size, duration = _download(base, "/to-audio", tmp_path / "c.mp3")
    assert size > 100_000 and 29 < duration < 31
    assert [p.name for p in tmp_path.iterdir()] == ["c.mp3"]


def test_a_retry_after_date_too_far_ahead_is_not_waited_for(rogue, tmp_path):
    base, _ = rogue
    with pytest.raises(url_guard.PermanentError, match=r"HTTP 429, Retry-After 3(599|600) s is too long"):
        _download(base, "/busy.mp3", tmp_path / "busy.mp3")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- the downloads suite


def test_downloads_suite_flags_size_decoding_and_duration():
    stats = pl.DataFrame(
        {
            "track_id": ["ok", "empty", "junk", "long", "short"],
            "bytes": [240_000, 0, 5_000, 900_000, 30_000],
            "decodable": [1, 0, 0, 1, 1],
            "duration_s": [30.1, -1.0, -1.0, 95.0, 3.0],
        }
    )
    report = quality.check_downloads(stats, max_bytes=1_000_000)
    reasons = dict(report.failures.iter_rows())
    assert set(reasons) == {"empty", "junk", "long", "short"}
    assert all(reason.startswith("downloads: expect_column_values_to_be_between(column=")
               for reason in reasons.values())
    assert "column=duration_s" in reasons["long"] and "column=duration_s" in reasons["short"]
    assert "column=decodable" in reasons["junk"] or "column=duration_s" in reasons["junk"]


def test_files_that_break_the_suite_are_quarantined_with_the_expectation(tmp_path):
    store = Store(tmp_path / "sonufy.duckdb")
    ids = ["long-file", "not-audio", "fine"]
    store.upsert_tracks(pl.DataFrame(
        [{**{n: None for n in TRACK_SCHEMA}, "track_id": i, "source": "spotify", "title": i, "artist": "a"}
         for i in ids],
        schema=TRACK_SCHEMA,
    ))
    rate = 8000
    sf.write(tmp_path / "long-file.wav", np.zeros(rate * 60, dtype=np.float32) + 0.1, rate)
    (tmp_path / "not-audio.mp3").write_bytes(b"<html>hello</html>")
    sf.write(tmp_path / "fine.wav", np.zeros(rate * 30, dtype=np.float32) + 0.1, rate)
    outcomes = pl.DataFrame(
        [
            {"track_id": "long-file", "provider": "deezer", "path": str(tmp_path / "long-file.wav"), "bytes": 1,
             "duration_s": 60.0, "error": None},
            {"track_id": "not-audio", "provider": "deezer", "path": str(tmp_path / "not-audio.mp3"), "bytes": 1,
             "duration_s": 30.0, "error": None},
            {"track_id": "fine", "provider": "deezer", "path": str(tmp_path / "fine.wav"), "bytes": 1,
             "duration_s": 30.0, "error": None},
        ],
        schema=previews.OUTCOME_SCHEMA,
    )
    counts, failures = previews.record_outcomes(store, outcomes, "check")
    assert counts == {"fetched": 1, "failed": 2}
    quarantined = dict(_sql(store, "SELECT track_id, reason FROM quarantine WHERE stage = 'fetch'"))
    assert set(quarantined) == {"long-file", "not-audio"}
    assert "duration_s" in quarantined["long-file"] and "max_value=40.0" in quarantined["long-file"]
    assert quarantined["not-audio"].startswith("downloads: expect_column_values_to_be_between")
    assert _sql(store, "SELECT track_id FROM previews") == [("fine",)]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".wav", ".mp3")) == ["fine.wav"]
