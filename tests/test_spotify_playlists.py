"""--to-spotify: a list into the listener's Spotify account, end to end on the stand-in.

The real CLI (in a subprocess where the login is interactive, in-process
after), the real spotipy PKCE client, real HTTP to the stand-in's accounts
service and Web API on loopback, a real DuckDB store of the stand-in's
catalog tracks (and a few of the listener's own files, which Spotify cannot
hold). The token is asserted absent from the logs, the store and the repo.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import requests

from flows.cli import main as cli
from sonufy_demo.standin import Faults, StandIn, StandInConfig, _UserPlaylist
from sonufy_model.schemas import TRACK_SCHEMA
from sonufy_model.spotify_user import ITEMS_PER_REQUEST, MARKER
from sonufy_model.store import LATENT_DIM, Store

REPO_ROOT = Path(__file__).resolve().parents[1]
N_CATALOG = 150
FOLDER_TRACKS = 5
ADD = "POST /v1/playlists/{playlist_id}/items"
REPLACE = "PUT /v1/playlists/{playlist_id}/items"


@pytest.fixture(scope="module")
def server():
    with StandIn(StandInConfig(n_tracks=N_CATALOG)) as running:
        yield running


@pytest.fixture(scope="module")
def store(server, tmp_path_factory) -> Store:
    """The stand-in's catalog as a built store would hold it (random vectors),
    and the listener's own files near the first seed."""
    from tests.conftest import _embed_vectors, _register_model

    store = Store(tmp_path_factory.mktemp("spotify") / "library.duckdb")
    rows = [{"track_id": t.track_id, "source": "spotify", "title": t.title, "artist": t.artist,
             "artists": [t.artist], "artist_id": t.artist_id, "album": t.album, "album_id": t.album_id,
             "release_date": t.release_date, "duration_ms": t.duration_ms, "isrc": t.isrc, "explicit": t.explicit,
             "popularity": t.popularity, "uri": f"spotify:track:{t.track_id}", "preview_url": None, "path": None,
             "found_by": "q"} for t in server.catalog]
    rows += [{"track_id": f"file:{i}", "source": "folder", "title": f"Tape {i}", "artist": "Me", "artists": ["Me"],
              "artist_id": None, "album": None, "album_id": None, "release_date": None, "duration_ms": 180_000,
              "isrc": None, "explicit": None, "popularity": None, "uri": None, "preview_url": None,
              "path": f"/music/tape{i}.flac", "found_by": None} for i in range(FOLDER_TRACKS)]
    store.upsert_tracks(pl.DataFrame(rows, schema=TRACK_SCHEMA))
    rng = np.random.default_rng(16)
    vectors = {row["track_id"]: rng.standard_normal(LATENT_DIM) for row in rows}
    for i in range(FOLDER_TRACKS):  # the first seed's nearest: in every radio of it
        vectors[f"file:{i}"] = vectors[server.catalog[0].track_id] + rng.standard_normal(LATENT_DIM) * 0.05
    _register_model(store, "m1", "s", promote=False)
    _embed_vectors(store, "m1", vectors)
    store.promote("m1")
    return store


@pytest.fixture
def listener(server, tmp_path, monkeypatch) -> Path:
    """The environment of a listener whose app is the stand-in's; the token file's path (none yet)."""
    token = tmp_path / "private" / "spotify-token.json"
    env = {"SPOTIFY_CLIENT_ID": server.config.client_id, "SONUFY_SPOTIFY_API_BASE": server.spotify_api_base,
           "SONUFY_SPOTIFY_ACCOUNTS_BASE": server.spotify_accounts_base, "SONUFY_SPOTIFY_TOKEN_FILE": str(token)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SPOTIFY_CLIENT_SECRET", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # an in-process login would find nothing to read
    return token


def _seeds(server) -> list[str]:
    return [server.catalog[0].track_id, server.catalog[1].track_id]


def _radio(store, capsys, *args: str) -> tuple[int, list[dict], str]:
    code = cli(["radio", "--db", str(store.path), *args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out)["radio"] if code == 0 else []), err


def _subprocess_radio(store, server, name: str, *args: str) -> tuple[int, str, str]:
    """``sonufy radio ... --to-spotify NAME`` with no login yet (see :func:`_logging_in`)."""
    return _logging_in(server, "radio", *_seeds(server), "--db", str(store.path), "--to-spotify", name,
                       "--json", *args)


def _logging_in(server, *argv: str) -> tuple[int, str, str]:
    """``sonufy ARGV`` in a process of its own, logging in: it prints the
    address to approve Sonufy at; the 'browser' (requests) asks the stand-in's
    /authorize, which approves and redirects; the address it was sent to is
    pasted on the command's stdin. Exit status, stdout, stderr."""
    command = [sys.executable, "-m", "flows.cli", *argv]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=os.environ.copy(), text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    said = []
    for line in process.stderr:
        said.append(line)
        if line.startswith(server.spotify_accounts_base + "/authorize?"):
            break
    answer = requests.get(said[-1].strip(), allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    out, err = process.communicate(answer.headers["Location"] + "\n", timeout=120)
    return process.returncode, out, "".join(said) + err


def _login_in_a_subprocess(store, server, name: str, *args: str) -> tuple[list[dict], str]:
    """A first --to-spotify that logs in; the radio's rows and what it said."""
    code, out, said = _subprocess_radio(store, server, name, *args)
    assert code == 0, said
    return json.loads(out)["radio"], said


def _spotify_ids(rows: list[dict]) -> list[str]:
    return [row["track_id"] for row in rows if not row["track_id"].startswith("file:")]


def test_radio_logs_in_makes_a_private_playlist_then_replaces_its_items(server, store, listener, capsys):
    before = set(server.user_playlists)
    rows, said = _login_in_a_subprocess(store, server, "Night radio", "-n", "40",
                                        "--max-per-artist", "50")
    assert "Log in to Spotify" in said
    [made] = [server.user_playlists[p] for p in set(server.user_playlists) - before]
    assert made.name == "Night radio" and not made.public and made.description.endswith(MARKER)
    assert made.track_ids == _spotify_ids(rows) and len(rows) == 40
    skipped = len(rows) - len(made.track_ids)
    assert skipped == FOLDER_TRACKS  # the listener's own files: no Spotify id
    assert (f"Spotify playlist 'Night radio' made with {40 - skipped} tracks; {skipped} tracks without a "
            f"Spotify id (your own files) left out: https://open.spotify.com/playlist/{made.playlist_id}") in said
    # The login is kept for the listener alone.
    assert stat.S_IMODE(listener.stat().st_mode) == 0o600
    assert {"access_token", "refresh_token", "scope"} <= set(json.loads(listener.read_text()))

    # Again, longer, in-process: no login asked (stdin is empty), the same
    # playlist, its items replaced, 100 a request.
    adds, replaces = server.stats[ADD], server.stats[REPLACE]
    code, longer, err = _radio(store, capsys, *_seeds(server), "-n", "140", "--max-per-artist", "50",
                               "--to-spotify", "Night radio")
    assert code == 0, err
    assert set(server.user_playlists) - before == {made.playlist_id}
    assert made.track_ids == _spotify_ids(longer) and len(made.track_ids) > ITEMS_PER_REQUEST
    assert (server.stats[REPLACE] - replaces, server.stats[ADD] - adds) == (1, 1)  # 100, then the rest
    assert "Spotify playlist 'Night radio' replaced with" in err


def test_playlist_login_keeps_a_login_the_next_command_uses(server, store, listener, capsys):
    code, out, said = _logging_in(server, "playlist", "login")
    assert code == 0, said
    assert f"the token is kept in {listener}" in out and stat.S_IMODE(listener.stat().st_mode) == 0o600
    code, rows, err = _radio(store, capsys, *_seeds(server), "-n", "6", "--to-spotify", "After login")
    assert code == 0, err
    assert [p.track_ids for p in server.user_playlists.values() if p.name == "After login"] == [_spotify_ids(rows)]


def test_a_playlist_of_that_name_sonufy_did_not_make_is_left_alone(server, store, listener, capsys):
    _login_in_a_subprocess(store, server, "Mine", "-n", "5")
    theirs = _UserPlaylist("ListenersOwnPlaylist01", "Kept by hand", "my favourites", False,
                           [server.catalog[9].track_id])
    server.user_playlists[theirs.playlist_id] = theirs
    code, rows, err = _radio(store, capsys, *_seeds(server), "-n", "10", "--to-spotify", "Kept by hand")
    assert code == 0, err
    assert theirs.track_ids == [server.catalog[9].track_id] and theirs.description == "my favourites"
    [made] = [p for p in server.user_playlists.values() if p.name == "Kept by hand" and p is not theirs]
    assert made.track_ids == _spotify_ids(rows) and MARKER in made.description


def test_path_and_recommend_send_their_lists_too(server, store, listener, capsys):
    _login_in_a_subprocess(store, server, "Warm up", "-n", "3")
    a, b = server.catalog[5].track_id, server.catalog[6].track_id
    assert cli(["path", a, b, "--steps", "8", "--db", str(store.path), "--json", "--to-spotify", "Walk"]) == 0
    walk = json.loads(capsys.readouterr().out)["path"]
    assert cli(["recommend", a, "-k", "12", "--db", str(store.path), "--json", "--to-spotify", "Like it"]) == 0
    like = json.loads(capsys.readouterr().out)["recommendations"]
    by_name = {p.name: p for p in server.user_playlists.values()}
    assert by_name["Walk"].track_ids == _spotify_ids(walk) and by_name["Walk"].track_ids[0] == a
    assert by_name["Like it"].track_ids == _spotify_ids(like) and len(like) == 12


def test_an_expired_token_is_refreshed_and_the_new_one_kept(server, store, listener, capsys):
    _login_in_a_subprocess(store, server, "Refreshed", "-n", "3")
    saved = json.loads(listener.read_text())
    listener.write_text(json.dumps({**saved, "expires_at": 0}))
    refreshed = server.stats["tokens refreshed"]
    code, _, err = _radio(store, capsys, *_seeds(server), "-n", "5", "--to-spotify", "Refreshed")
    assert code == 0, err
    assert server.stats["tokens refreshed"] == refreshed + 1
    now = json.loads(listener.read_text())
    assert now["refresh_token"] != saved["refresh_token"] and now["access_token"] != saved["access_token"]
    assert stat.S_IMODE(listener.stat().st_mode) == 0o600


def test_rate_limits_are_waited_out_within_the_budget(store, listener, monkeypatch, capsys):
    with StandIn(StandInConfig(n_tracks=N_CATALOG, faults=Faults(rate_429=0.4, seed=5))) as flaky:
        monkeypatch.setenv("SONUFY_SPOTIFY_API_BASE", flaky.spotify_api_base)
        monkeypatch.setenv("SONUFY_SPOTIFY_ACCOUNTS_BASE", flaky.spotify_accounts_base)
        _login_in_a_subprocess(store, flaky, "Flaky", "-n", "3")
        code, rows, err = _radio(store, capsys, *_seeds(flaky), "-n", "30", "--to-spotify", "Flaky")
        assert code == 0, err
        [made] = [p for p in flaky.user_playlists.values() if p.name == "Flaky"]
        assert made.track_ids == _spotify_ids(rows)
        assert flaky.stats["fault 429"] > 0


def test_the_token_is_never_in_the_logs_the_store_or_the_repo(server, store, listener, caplog, capsys):
    _login_in_a_subprocess(store, server, "Secret", "-n", "3")
    listener.write_text(json.dumps({**json.loads(listener.read_text()), "expires_at": 0}))  # a refresh too
    with caplog.at_level(logging.DEBUG):  # spotipy's debug lines print headers and token requests
        code, _, err = _radio(store, capsys, *_seeds(server), "-n", "10", "--to-spotify", "Secret")
    assert code == 0, err
    token = json.loads(listener.read_text())
    secrets = [token["access_token"], token["refresh_token"]]
    assert "Bearer ***" in caplog.text  # the requests were logged, masked
    for secret in secrets:
        assert secret not in caplog.text and secret not in err
        for path in (store.path, store.snapshot_path):
            assert not path.exists() or secret.encode() not in path.read_bytes()
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    for name in listed:
        path = REPO_ROOT / name
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), name


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case", ["no client id", "refused login", "unreachable", "rate limited", "nothing pasted"])
def test_errors_say_what_to_check_with_their_exit_status(case, server, store, listener, monkeypatch, capsys,
                                                         tmp_path):
    expected = {
        "no client id": (2, "SPOTIFY_CLIENT_ID"),
        "refused login": (2, "refused the login (invalid_grant: Invalid refresh token)"),
        "unreachable": (1, "cannot reach http://127.0.0.1:"),
        "rate limited": (1, "rate limited (429) with Retry-After 120 s"),
        "nothing pasted": (2, "no address pasted"),
    }[case]
    expired = {"access_token": "BQ-old", "token_type": "Bearer", "expires_in": 3600, "expires_at": 0,
               "refresh_token": "AQ-revoked", "scope": "playlist-modify-private"}
    if case == "no client id":
        monkeypatch.delenv("SPOTIFY_CLIENT_ID")
    elif case in ("refused login", "unreachable"):
        listener.parent.mkdir(parents=True, exist_ok=True)
        listener.write_text(json.dumps(expired))
        if case == "unreachable":
            monkeypatch.setenv("SONUFY_SPOTIFY_ACCOUNTS_BASE", f"http://127.0.0.1:{_closed_port()}")
    playlist = tmp_path / "out.m3u8"
    if case == "rate limited":  # every API request answered 429, Retry-After longer than the budget
        with StandIn(StandInConfig(n_tracks=N_CATALOG, faults=Faults(rate_429=1.0, retry_after_s=120))) as busy:
            monkeypatch.setenv("SONUFY_SPOTIFY_API_BASE", busy.spotify_api_base)
            monkeypatch.setenv("SONUFY_SPOTIFY_ACCOUNTS_BASE", busy.spotify_accounts_base)
            monkeypatch.setenv("SONUFY_SPOTIFY_MAX_WAIT_S", "5")
            code, _, err = _subprocess_radio(store, busy, "Busy", "-n", "3")
    else:
        code, _, err = _radio(store, capsys, *_seeds(server), "-n", "5", "--to-spotify", "Any",
                              "--playlist", str(playlist))
        assert not playlist.exists()  # refused before any work
    assert code == expected[0], err
    assert expected[1] in err and len(err.strip().splitlines()[-1]) < 400, err


def test_a_long_description_keeps_the_marker_within_spotifys_300_characters(server, store, listener, capsys):
    from sonufy_model.config import ServiceSettings
    from sonufy_model.spotify_user import push_playlist

    _login_in_a_subprocess(store, server, "Long", "-n", "3")
    uris = [f"spotify:track:{server.catalog[i].track_id}" for i in range(3)]
    pushed = push_playlist(ServiceSettings.from_env(), "Many seeds", uris, description="Radio from " + "A - B, " * 80)
    made = server.user_playlists[pushed.playlist_id]
    assert len(made.description) <= 300 and made.description.endswith(MARKER)
    assert made.track_ids == [server.catalog[i].track_id for i in range(3)]
