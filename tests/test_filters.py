"""The filters listeners ask for, on recommend, radio and path: an exclusion list
from a file, duration bounds, the artist and album gaps; the same through the
SQL macros' named parameters; bad input refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

import sql
from flows.cli import main as cli
from sonufy_model.gaps import Gaps
from sonufy_model.names import normalise_name
from sonufy_model.schemas import TRACK_SCHEMA
from sonufy_model.search import SearchFilters, read_exclusions, similar
from sonufy_model.store import LATENT_DIM, Store

ARTISTS, PER_ARTIST = 8, 6
# Each artist has one track of each: unknown (None, and 0 as the store may hold it), 1, 3:20, 6:40, 20 min.
DURATIONS_MS = [None, 0, 60_000, 200_000, 400_000, 1_200_000]

EXCLUSIONS = """# never these
  artist 1
ALBUM 2-0

t3_4
Artist 5 -   song 5-1
# Artist 6
"""
EXCLUDED_BY_FILE = ({f"t1_{j}" for j in range(PER_ARTIST)} | {"t2_0", "t2_1", "t2_2"} | {"t3_4", "t5_1"})


def _track(a: int, j: int) -> dict:
    return {
        "track_id": f"t{a}_{j}", "source": "folder", "title": f"Song {a}-{j}", "artist": f"Artist {a}",
        "artists": [f"Artist {a}"], "artist_id": None, "album": f"Album {a}-{j // 3}",
        # Even artists' albums have an id; odd ones are told apart by artist and name.
        "album_id": f"alb{a}{j // 3}" if a % 2 == 0 else None, "release_date": None,
        "duration_ms": DURATIONS_MS[j], "isrc": None, "explicit": None, "popularity": None, "uri": None,
        "preview_url": None, "path": f"/music/{a}/{j}.flac", "found_by": None,
    }


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Store:
    """8 artists of 6 tracks, two albums each; artists two by two in four styles,
    each artist's tracks near one another, so a plain list repeats artists."""
    from tests.conftest import _embed_vectors, _register_model

    store = Store(tmp_path_factory.mktemp("filters") / "library.duckdb")
    rows = [_track(a, j) for a in range(ARTISTS) for j in range(PER_ARTIST)]
    store.upsert_tracks(pl.DataFrame(rows, schema=TRACK_SCHEMA))
    rng = np.random.default_rng(7)
    styles = rng.normal(size=(ARTISTS // 2, LATENT_DIM)) * 3
    vectors = {}
    for a in range(ARTISTS):
        centre = styles[a // 2] + rng.normal(size=LATENT_DIM) * 1.2
        for j in range(PER_ARTIST):
            vectors[f"t{a}_{j}"] = centre + rng.normal(size=LATENT_DIM) * 0.5
    _register_model(store, "m1", "s", promote=False)
    _embed_vectors(store, "m1", vectors)
    store.promote("m1")
    return store


def _tracks(store: Store) -> dict[str, dict]:
    with duckdb.connect(str(store.path), read_only=True) as con:
        frame = con.execute("SELECT track_id, artist, album, album_id, duration_ms FROM tracks").pl()
    return {row["track_id"]: row for row in frame.iter_rows(named=True)}


def _run(store: Store, capsys, *args: str) -> list[dict]:
    """A command's list, through the CLI entry point, as JSON rows."""
    assert cli([args[0], "--db", str(store.path), *args[1:], "--json"]) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    return out.get("recommendations") or out.get("radio") or out["path"]


COMMANDS = {
    "recommend": ("recommend", "t2_3", "-k", "30"),
    "radio": ("radio", "t0_0", "t5_0", "t6_0", "-n", "30", "--max-per-artist", "6"),
    "path": ("path", "t0_0", "t5_0", "--steps", "14"),
}


def _ids(rows: list[dict], command: str) -> list[str]:
    """The tracks a filter acts on: a path's inner steps (A and B are as named)."""
    ids = [row["track_id"] for row in rows]
    return ids[1:-1] if command == "path" else ids


def _album_key(track: dict) -> str:
    return track["album_id"] or f"{track['artist'].lower()}|{track['album'].lower()}"


def _closest_repeat(keys: list[str]) -> int | None:
    """The fewest tracks between two of the same key in a list (None: no repeat)."""
    last: dict[str, int] = {}
    closest = None
    for i, key in enumerate(keys):
        if key in last:
            between = i - last[key] - 1
            closest = between if closest is None else min(closest, between)
        last[key] = i
    return closest


# -- each filter changes the lists as it says -------------------------------------------


def test_an_exclusion_file_is_read_as_documented(tmp_path):
    listed = tmp_path / "never.txt"
    listed.write_text("\ufeff" + EXCLUSIONS, encoding="utf-8")  # a byte-order mark is no part of the first line
    assert read_exclusions(listed) == ("artist 1", "ALBUM 2-0", "t3_4", "Artist 5 -   song 5-1")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_excluded_artist_album_id_or_artist_title_never_appears(library, command, tmp_path, capsys):
    listed = tmp_path / "never.txt"
    listed.write_text(EXCLUSIONS)
    plain = _ids(_run(library, capsys, *COMMANDS[command]), command)
    assert set(plain) & EXCLUDED_BY_FILE  # without the file, some would be listed
    filtered = _ids(_run(library, capsys, *COMMANDS[command], "--exclude-file", str(listed)), command)
    assert not set(filtered) & EXCLUDED_BY_FILE
    if command != "path":  # the list is as long as before: others take their places
        assert len(filtered) == len(plain)
    # A commented line excludes nothing.
    everything = _ids(_run(library, capsys, "radio", "t6_0", "t1_0", "-n", "40", "--max-per-artist", "6",
                           "--exclude-file", str(listed)), "radio")
    assert any(track.startswith("t6_") for track in everything)


@pytest.mark.parametrize("command", COMMANDS)
def test_duration_bounds_hold_and_unknown_durations_pass(library, command, capsys):
    tracks = _tracks(library)
    plain = _ids(_run(library, capsys, *COMMANDS[command]), command)
    assert any((tracks[t]["duration_ms"] or 0) > 600_000 for t in plain)  # a 20-minute set, unfiltered
    bounded = _ids(_run(library, capsys, *COMMANDS[command], "--min-seconds", "100", "--max-seconds", "600"),
                   command)
    durations = [tracks[t]["duration_ms"] for t in bounded]
    assert all(not ms or 100_000 <= ms <= 600_000 for ms in durations)
    assert None in durations and 0 in durations  # unknown: passes
    assert any(ms for ms in durations)
    at_least = [tracks[t]["duration_ms"] for t in _ids(_run(library, capsys, *COMMANDS[command],
                                                            "--min-seconds", "300"), command)]
    assert all(not ms or ms >= 300_000 for ms in at_least) and 1_200_000 in at_least


def test_a_radio_of_20_repeats_no_artist_within_the_gap(library, capsys):
    radio = ("radio", "t0_0", "t4_0", "-n", "20", "--max-per-artist", "6")
    plain = _run(library, capsys, *radio)
    assert _closest_repeat([normalise_name(row["artist"]) for row in plain]) < 3
    for gap in (1, 3):
        rows = _run(library, capsys, *radio, "--artist-gap", str(gap))
        assert len(rows) == 20 and len({row["track_id"] for row in rows}) == 20
        assert _closest_repeat([normalise_name(row["artist"]) for row in rows]) >= gap


def test_a_radio_of_20_repeats_no_album_within_the_gap(library, capsys):
    tracks = _tracks(library)
    radio = ("radio", "t0_0", "t5_0", "-n", "20", "--max-per-artist", "6")
    plain = _run(library, capsys, *radio)
    assert _closest_repeat([_album_key(tracks[row["track_id"]]) for row in plain]) < 4
    rows = _run(library, capsys, *radio, "--album-gap", "4")
    assert len(rows) == 20
    assert _closest_repeat([_album_key(tracks[row["track_id"]]) for row in rows]) >= 4
    # The artists may repeat: only albums are spaced out.
    assert _closest_repeat([row["artist"] for row in rows]) < 4


def test_a_path_keeps_the_gaps_up_to_b(library, capsys):
    tracks = _tracks(library)
    path = ("path", "t0_0", "t7_0", "--steps", "10")
    plain = _run(library, capsys, *path)
    assert _closest_repeat([row["artist"] for row in plain]) == 0
    rows = _run(library, capsys, *path, "--artist-gap", "2", "--album-gap", "3")
    assert [rows[0]["track_id"], rows[-1]["track_id"]] == ["t0_0", "t7_0"] and len(rows) == 10
    assert _closest_repeat([row["artist"] for row in rows]) >= 2
    assert _closest_repeat([_album_key(tracks[row["track_id"]]) for row in rows]) >= 3


def test_recommend_keeps_the_gap_down_its_ranked_list(library, capsys):
    plain = _run(library, capsys, "recommend", "t2_3", "-k", "12")
    assert _closest_repeat([row["artist"] for row in plain]) == 0
    for extra in ((), ("--hub-reduction",)):
        rows = _run(library, capsys, "recommend", "t2_3", "-k", "12", "--artist-gap", "2", *extra)
        assert len(rows) == 12 and _closest_repeat([row["artist"] for row in rows]) >= 2
    # A track that would break the gap waits for a later place: the same tracks as the
    # plain list's best, moved down, as long as the neighbourhood has other artists.
    rows = _run(library, capsys, "recommend", "t2_3", "-k", "4", "--artist-gap", "1")
    plain = _run(library, capsys, "recommend", "t2_3", "-k", "12")
    assert rows[0] == plain[0] and rows[2]["track_id"] == plain[1]["track_id"]


# -- the macros' named parameters give the CLI's lists ------------------------------------


def test_the_macros_take_each_filter_and_give_the_cli_list(library, tmp_path, capsys):
    listed = tmp_path / "never.txt"
    listed.write_text(EXCLUSIONS)
    entries = list(read_exclusions(listed))
    cases = [
        ((), ""),
        (("--exclude-file", str(listed)), f", exclude_list := {entries!r}"),
        (("--min-seconds", "100", "--max-seconds", "600"), ", min_seconds := 100, max_seconds := 600"),
        (("--artist-gap", "2"), ", artist_gap := 2"),
        (("--album-gap", "3"), ", album_gap := 3"),
        (("--exclude-file", str(listed), "--min-seconds", "100", "--artist-gap", "1", "--album-gap", "2"),
         f", exclude_list := {entries!r}, min_seconds := 100, artist_gap := 1, album_gap := 2"),
    ]
    with duckdb.connect(str(library.path), read_only=True) as con:
        for options, named in cases:
            by_cli = [row["track_id"] for row in _run(library, capsys, "recommend", "t2_3", "-k", "15", *options)]
            by_macro = [r[0] for r in con.execute(f"SELECT track_id FROM similar_to('t2_3', 15{named})").fetchall()]
            by_vector = [r[0] for r in con.execute(
                "SELECT track_id FROM similar_to_vector((SELECT vector FROM latent WHERE track_id = 't2_3'), 15, "
                f"seed_track_ids := ['t2_3']{named})").fetchall()]
            assert by_macro == by_vector == by_cli, options
        for bad, message in ((", artist_gap := -1", "artist_gap must be 0 or more"),
                             (", min_seconds := 300, max_seconds := 200",
                              "min_seconds 300 is more than max_seconds 200")):
            with pytest.raises(duckdb.Error, match=message):
                con.execute(f"SELECT * FROM similar_to('t2_3', 5{bad})").fetchall()


def test_the_filters_in_python(library):
    """SearchFilters and Gaps: the same fields, refused the same way."""
    rows = similar(library, track_id="t2_3", k=8, filters=SearchFilters(exclude=("ARTIST 2 ",), artist_gap=1))
    artists = rows["artist"].to_list()
    assert "Artist 2" not in artists and _closest_repeat(artists) >= 1
    for bad, message in ((dict(artist_gap=-1), "artist_gap must be a whole number, 0 or more"),
                         (dict(min_seconds=300, max_seconds=200), "min_seconds 300 is more than max_seconds 200"),
                         (dict(max_seconds=float("nan")), "max_seconds must be a number of seconds")):
        with pytest.raises(ValueError, match=message):
            SearchFilters(**bad)
    with pytest.raises(TypeError, match="exclude must be a sequence"):
        SearchFilters(exclude="Artist 1")
    with pytest.raises(ValueError, match="album_gap"):
        Gaps(album=-1)
    gaps = Gaps(artist=1)
    ranked = [{"artist": "A", "n": 1}, {"artist": "a", "n": 2}, {"artist": "B", "n": 3}, {"artist": "A", "n": 4}]
    assert [row["n"] for row in gaps.space_out(ranked, 4)] == [1, 3, 2]  # 4 cannot follow 2: the list ends


# -- a store no writer has migrated yet ---------------------------------------------------


def test_a_reader_of_an_older_store_still_has_the_filters(library, tmp_path, capsys):
    """Readers never migrate: on a store whose macros predate the filters (here:
    gone), they define this code's macros on their own connection."""
    old = tmp_path / "old.duckdb"
    old.write_bytes(library.path.read_bytes())
    with duckdb.connect(str(old)) as con:
        con.execute("DROP MACRO TABLE similar_to")
        con.execute("DROP MACRO TABLE similar_to_vector")
        for helper in ("search_filter_key", "search_album_key", "search_check_filters"):
            con.execute(f"DROP MACRO {helper}")
        con.execute("UPDATE sonufy_schema SET version = 3")
    rows = _run(Store(old), capsys, "recommend", "t2_3", "-k", "12", "--artist-gap", "2", "--min-seconds", "100")
    assert len(rows) == 12 and _closest_repeat([row["artist"] for row in rows]) >= 2
    assert Store(old, reader=True).schema_version() == 3  # read, not written
    assert Store(old).schema_version() == 3
    with Store(old).connect():  # a writer migrates it: the macros are the store's again
        pass
    with duckdb.connect(str(old), read_only=True) as con:
        assert con.execute("SELECT version FROM sonufy_schema").fetchone()[0] == sql.SCHEMA_VERSION
        assert con.execute("SELECT count(*) FROM similar_to('t2_3', 12, artist_gap := 2, "
                           "min_seconds := 100)").fetchone()[0] == 12


# -- bad input: exit 2, naming it, before any work ------------------------------------------


BAD = [
    (("--exclude-file", "{tmp}/nowhere.txt"), "--exclude-file {tmp}/nowhere.txt: no such file"),
    (("--exclude-file", "{tmp}"), "--exclude-file {tmp}: is a folder, not a file"),
    (("--artist-gap", "-1"), "--artist-gap -1: must be 0 or more"),
    (("--album-gap", "-2"), "--album-gap -2: must be 0 or more"),
    (("--min-seconds", "-5"), "--min-seconds -5: must be 0 or more"),
    (("--min-seconds", "300", "--max-seconds", "200"), "--min-seconds 300 is more than --max-seconds 200"),
]


@pytest.mark.parametrize("command", [["recommend", "x"], ["path", "x", "y"], ["radio", "x"]])
@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_filters_exit_2_naming_the_input_before_any_work(command, options, message, tmp_path, capsys):
    """Checked before the store is opened: the missing store is never reached."""
    missing = tmp_path / "missing.duckdb"
    options = [option.format(tmp=tmp_path) for option in options]
    assert cli([*command, "--db", str(missing), *options]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "missing.duckdb" not in err


def test_an_unreadable_exclusion_file_is_named(tmp_path, capsys):
    binary = tmp_path / "never.txt"
    binary.write_bytes(b"Artist\n\xff\xfe\x00bad")
    assert cli(["radio", "x", "--db", str(tmp_path / "missing.duckdb"), "--exclude-file", str(binary)]) == 2
    assert f"--exclude-file {binary}: not UTF-8 text" in capsys.readouterr().err


def test_a_path_whose_gap_cannot_be_kept_says_so(library):
    from sonufy_model.journeys import JourneyError, path

    with pytest.raises(JourneyError, match="keeps --artist-gap 9"):
        path(library, "t0_0", "t0_1", steps=12, filters=SearchFilters(artist_gap=9))
    others = SearchFilters(exclude=tuple(f"artist {a}" for a in range(1, ARTISTS)))  # A, B and 4 more
    with pytest.raises(JourneyError, match="only 6 tracks to walk through: fewer than the 8 steps asked for, "
                                           "once the filters have left tracks out"):
        path(library, "t0_0", "t0_1", steps=8, filters=others)
    assert len(path(library, "t0_0", "t0_1", steps=6, filters=others)) == 6


def test_an_empty_exclusion_file_changes_nothing(library, tmp_path, capsys):
    empty = Path(tmp_path / "empty.txt")
    empty.write_text("# nothing yet\n\n")
    assert _run(library, capsys, *COMMANDS["radio"], "--exclude-file", str(empty)) == _run(
        library, capsys, *COMMANDS["radio"])
