"""Saved lists: `sonufy playlist save/list/show/delete` on a real DuckDB store,
and a refresh (what the nightly runs after encoding) that lets new tracks
join, keeps the radio's rules, rewrites the file and reports a list it
cannot make without stopping the others. The nightly flow itself is
tests/test_nightly.py's (test_a_nightly_remakes_saved_lists...)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flows.cli import main as cli
from sonufy_model import saved_lists
from sonufy_model.names import normalise_name
from sonufy_model.schemas import TRACK_SCHEMA
from sonufy_model.store import LATENT_DIM, Store

ARTISTS, PER_ARTIST = 8, 6
DURATIONS_MS = [None, 60_000, 200_000, 240_000, 400_000, 1_200_000]


def _track(track_id: str, artist: str, j: int, duration_ms: int | None) -> dict:
    return {"track_id": track_id, "source": "folder", "title": f"Song {track_id}", "artist": artist,
            "artists": [artist], "artist_id": None, "album": f"{artist} LP", "album_id": None, "release_date": None,
            "duration_ms": duration_ms, "isrc": None, "explicit": None, "popularity": None, "uri": None,
            "preview_url": None, "path": f"/music/{artist}/{j}.flac", "found_by": None}


@pytest.fixture
def library(tmp_path) -> Store:
    """8 artists of 6 tracks, artists two by two in four styles: a radio of one
    style's seeds repeats artists unless a gap holds them apart."""
    from tests.conftest import _embed_vectors, _register_model

    store = Store(tmp_path / "library.duckdb")
    rows = [_track(f"t{a}_{j}", f"Artist {a}", j, DURATIONS_MS[j]) for a in range(ARTISTS) for j in range(PER_ARTIST)]
    store.upsert_tracks(pl.DataFrame(rows, schema=TRACK_SCHEMA))
    rng = np.random.default_rng(11)
    styles = rng.normal(size=(ARTISTS // 2, LATENT_DIM)) * 3
    vectors = {f"t{a}_{j}": styles[a // 2] + rng.normal(size=LATENT_DIM) * 0.8
               for a in range(ARTISTS) for j in range(PER_ARTIST)}
    _register_model(store, "m1", "s", promote=False)
    _embed_vectors(store, "m1", vectors)
    store.promote("m1")
    return store


def _run(store: Store, capsys, *args: str) -> tuple[int, str, str]:
    code = cli([args[0], args[1], "--db", str(store.path), *args[2:]])
    out, err = capsys.readouterr()
    return code, out, err


def _saved(store: Store, capsys) -> dict[str, dict]:
    code, out, err = _run(store, capsys, "playlist", "list", "--json")
    assert code == 0, err
    return {one["name"]: one for one in json.loads(out)}


def _m3u_ids(store: Store, path: Path) -> list[str]:
    """The tracks of an M3U8 file, by their file location."""
    import duckdb

    with duckdb.connect(str(store.path), read_only=True) as con:
        by_path = dict(con.execute("SELECT path, track_id FROM tracks").fetchall())
    locations = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    return [by_path["/" + str(Path(location)).lstrip("./").lstrip("/")] if not location.startswith("/")
            else by_path[location] for location in locations]


SAVE = ("playlist", "save", "Evening", "--radio", "t0_0", "Artist 1 - Song t1_0", "-n", "12",
        "--max-per-artist", "3", "--artist-gap", "1", "--min-seconds", "50", "--max-seconds", "600")


def test_save_keeps_the_whole_recipe_and_list_show_delete_read_it(library, tmp_path, capsys):
    never = tmp_path / "never.txt"
    never.write_text("Artist 2\n")
    playlist = tmp_path / "lists" / "evening.m3u8"
    code, out, err = _run(library, capsys, *SAVE, "--exclude-file", str(never), "--playlist", str(playlist),
                          "--json")
    assert code == 0, err
    made = json.loads(out)["radio"]
    assert len(made) == 12 and "'Evening' saved (12 tracks)" in err
    assert _m3u_ids(library, playlist) == [row["track_id"] for row in made]

    evening = _saved(library, capsys)["Evening"]
    assert {key: evening[key] for key in ("seeds", "n", "max_per_artist", "exclude_file", "min_seconds",
                                          "max_seconds", "artist_gap", "album_gap", "playlist_path",
                                          "spotify_name", "tracks", "problem")} == {
        "seeds": ["t0_0", "t1_0"], "n": 12, "max_per_artist": 3, "exclude_file": str(never.resolve()),
        "min_seconds": 50.0, "max_seconds": 600.0, "artist_gap": 1, "album_gap": 0,
        "playlist_path": str(playlist), "spotify_name": None, "tracks": 12, "problem": None}
    code, out, err = _run(library, capsys, "playlist", "show", "Evening", "--json")
    assert code == 0, err
    assert json.loads(out)["track_ids"] == [row["track_id"] for row in made]
    code, out, _ = _run(library, capsys, "playlist", "show", "Evening")
    assert "seeds: t0_0, t1_0" in out and f"  1. {made[0]['artist']} - {made[0]['title']}" in out

    code, out, err = _run(library, capsys, "playlist", "delete", "Evening")
    assert code == 0 and "deleted" in out and _saved(library, capsys) == {}
    assert playlist.exists()  # the file stays
    code, _, err = _run(library, capsys, "playlist", "delete", "Evening")
    assert code == 2 and "no saved list 'Evening'" in err


@pytest.mark.parametrize("options, message", [
    (("--radio", "nobody - nothing"), "no track 'nobody - nothing' in the latent space"),
    (("--radio", "t0_0", "--playlist", "x.txt"), "unknown playlist format '.txt'"),
    (("--radio", "t0_0", "--artist-gap", "-1"), "--artist-gap -1: must be 0 or more"),
])
def test_a_bad_recipe_is_refused_and_nothing_saved(options, message, library, capsys):
    code, _, err = _run(library, capsys, "playlist", "save", "Bad", *options)
    assert code == 2 and message in err
    assert _saved(library, capsys) == {}


def test_a_refresh_lets_new_tracks_join_and_keeps_the_rules(library, tmp_path, capsys, embed_vectors):
    never = tmp_path / "never.txt"
    never.write_text("# nothing yet\n")
    playlist = tmp_path / "evening.m3u8"
    code, out, err = _run(library, capsys, *SAVE, "--exclude-file", str(never), "--playlist", str(playlist),
                          "--json")
    assert code == 0, err
    before = [row["track_id"] for row in json.loads(out)["radio"]]

    # Overnight: two new tracks right beside the first seed, by a new artist;
    # and the listener adds an artist of the list to the exclusion file.
    seed = _vector(library, "t0_0")
    library.upsert_tracks(pl.DataFrame([_track(f"new{i}", "Newcomer", i, 180_000) for i in range(2)],
                                       schema=TRACK_SCHEMA))
    embed_vectors(library, "m1", {f"new{i}": seed + 0.01 * (i + 1) for i in range(2)})
    dropped_artist = next(row for row in _rows(library, before) if row["artist"] not in ("Artist 0", "Artist 1"))
    never.write_text(f"{dropped_artist['artist']}\n")

    [refreshed] = _refresh(library)
    assert refreshed.problem is None and refreshed.tracks == 12
    assert "Newcomer - Song new0" in refreshed.added
    now = list(saved_lists.saved(library, "Evening")[0].track_ids)
    assert {"new0"} <= set(now) and now != before
    assert _m3u_ids(library, playlist) == now
    assert refreshed.delivered == [f"12 tracks written to {playlist}"]
    gone = [row for row in _rows(library, before) if row["track_id"] not in now]
    assert sorted(refreshed.removed) == sorted(f"{row['artist']} - {row['title']}" for row in gone)
    # The radio's rules hold on the list made again: no seed, no repeat, the
    # exclusion file as it is now, the bounds, the cap, the artist gap.
    rows = _rows(library, now)
    assert len(set(now)) == len(now) and not {"t0_0", "t1_0"} & set(now)
    assert dropped_artist["artist"] not in {row["artist"] for row in rows}
    assert all(row["duration_ms"] is None or 50_000 <= row["duration_ms"] <= 600_000 for row in rows)
    artists = [normalise_name(row["artist"]) for row in rows]
    assert max(artists.count(artist) for artist in artists) <= 3
    assert all(a != b for a, b in zip(artists, artists[1:]))


def test_a_list_whose_seed_vanished_is_reported_and_the_others_made(library, tmp_path, capsys):
    assert _run(library, capsys, *SAVE)[0] == 0
    assert _run(library, capsys, "playlist", "save", "Other", "--radio", "t6_0", "-n", "5")[0] == 0
    kept = saved_lists.saved(library, "Evening")[0].track_ids
    with library.transaction() as con:  # the seed's file was deleted, and the store forgot it
        con.execute("DELETE FROM embeddings WHERE track_id = 't1_0'")
        con.execute("DELETE FROM tracks WHERE track_id = 't1_0'")

    by_name = {one.name: one for one in _refresh(library)}
    assert by_name["Evening"].problem == ("seed t1_0 is no longer in the latent space: the list keeps its last "
                                          "tracks; save it again with other seeds")
    assert by_name["Other"].problem is None and by_name["Other"].tracks == 5
    listed = _saved(library, capsys)
    assert listed["Evening"]["problem"] == by_name["Evening"].problem and listed["Evening"]["tracks"] == len(kept)
    assert saved_lists.saved(library, "Evening")[0].track_ids == kept  # its last list stays
    assert listed["Other"]["problem"] is None


def _refresh(store: Store) -> list[saved_lists.Refreshed]:
    """Every saved list made again, as the nightly does: under the writer
    lock, the store published for readers at the end."""
    with store.writer("test refresh", publish=True):
        return saved_lists.refresh_all(store)


def _vector(store: Store, track_id: str) -> np.ndarray:
    with store.connect(read_only=True) as con:
        return np.asarray(con.execute("SELECT raw FROM embeddings WHERE track_id = ?", [track_id]).fetchone()[0])


def _rows(store: Store, track_ids: list[str]) -> list[dict]:
    with store.connect(read_only=True) as con:
        frame = con.execute("SELECT track_id, artist, title, duration_ms FROM tracks").pl()
    by_id = {row["track_id"]: row for row in frame.iter_rows(named=True)}
    return [by_id[track_id] for track_id in track_ids]


def test_a_list_for_spotify_without_a_login_is_still_written_and_says_why_not_sent(library, tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTIFY_CLIENT_ID", "an-app")
    monkeypatch.setenv("SONUFY_SPOTIFY_TOKEN_FILE", str(tmp_path / "none.json"))  # never logged in
    # The library's tracks are a catalog's here: Spotify can hold them.
    library.upsert_tracks(pl.DataFrame([
        {**_track(f"t{a}_{j}", f"Artist {a}", j, DURATIONS_MS[j]), "source": "spotify", "path": None,
         "uri": f"spotify:track:t{a}_{j}"} for a in range(ARTISTS) for j in range(PER_ARTIST)], schema=TRACK_SCHEMA))
    playlist = tmp_path / "late.xspf"
    recipe = saved_lists.Recipe("Late", ("t3_0",), n=6, playlist_path=str(playlist), spotify_name="Late")
    saved_lists.save(library, recipe, [])

    from sonufy_model.config import ServiceSettings

    with library.writer("test refresh", publish=True):
        [late] = saved_lists.refresh_all(library, spotify_settings=ServiceSettings.from_env)
    assert late.problem == (f"not delivered: no Spotify login saved in {tmp_path / 'none.json'}: "
                            "run `sonufy playlist login`")
    assert late.delivered == [f"6 tracks written to {playlist}"] and playlist.exists()
    assert len(saved_lists.saved(library, "Late")[0].track_ids) == 6  # the list is made all the same
