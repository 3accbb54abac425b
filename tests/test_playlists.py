"""--playlist: M3U8 and XSPF files of a list, parsed back by real parsers, on a
real store of a scanned folder library (real audio files) and catalog tracks."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from conftest import sql_rows
from flows.cli import main as cli
from sonufy_model.folder import scan_folder
from sonufy_model.playlists import (
    XSPF_NAMESPACE,
    Entry,
    PlaylistError,
    check_target,
    m3u8,
    read_entries,
    write_playlist,
    xspf,
)
from sonufy_model.store import LATENT_DIM, Store

NS = {"x": XSPF_NAMESPACE}

# The library, as Artist/Album/NN Title (or shallower), and each file's seconds.
FILES = {
    "Nina Vale/Low Tide/01 Harbour Lights.wav": 1.0,
    "Nina Vale/Low Tide/02 Grey Water.wav": 2.5,
    "Ørjan & Co/Før 100%/03 Kaffe? Ja.wav": 1.25,
    "Loose Tapes/demo take #2.wav": 3.0,
    "Solo Artist - Only Song.wav": 2.0,
}
CATALOG = ("cat1", "cat2", "cat3")  # cat2: a Spotify preview link; cat3: a 0 ms duration (unknown)


@pytest.fixture
def library(tmp_path, track_frame, register_model, embed_vectors) -> Store:
    """A folder library scanned as a build scans it (real WAV files), three
    catalog tracks beside it, and a current model with a vector for each."""
    root = tmp_path / "Music"
    for name, seconds in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, np.zeros(int(seconds * 22050), dtype=np.float32), 22050)
    scan = scan_folder(root)
    store = Store(tmp_path / "library.duckdb")
    store.record_scan(scan.tracks, scan.previews, scan.files, [])
    catalog = track_frame(list(CATALOG)).with_columns(
        pl.Series("preview_url", [None, "https://p.scdn.co/mp3-preview/cat2", None], dtype=pl.String),
        pl.Series("duration_ms", [200_000, 184_400, 0], dtype=pl.Int32),
    )
    store.upsert_tracks(catalog)
    ids = [*scan.tracks["track_id"].to_list(), *CATALOG]
    rng = np.random.default_rng(16)
    register_model(store, "m1", "s", promote=False)
    embed_vectors(store, "m1", {track_id: rng.standard_normal(LATENT_DIM) for track_id in ids})
    store.promote("m1")
    return store


def _tracks(store: Store) -> dict[str, dict]:
    """What the store holds of each track, read with plain SQL: the playlist's expected content."""
    rows = sql_rows(store.path, "SELECT track_id, artist, title, duration_ms, source, path FROM tracks")
    return {t: {"name": f"{a} - {ti}", "duration_ms": d, "file": p if s == "folder" else None}
            for t, a, ti, d, s, p in rows}


def _folder_ids(store: Store) -> list[str]:
    return [t for t, row in sorted(_tracks(store).items(), key=lambda item: str(item[1]["file"])) if row["file"]]


def _parse_m3u(path: Path) -> list[tuple[int, str, str]]:
    """(seconds, 'artist - title', location) per entry of an extended M3U file:
    the header first, then each #EXTINF line followed by its location."""
    lines = path.read_bytes().decode("utf-8").splitlines()
    assert lines[0] == "#EXTM3U"
    entries, pending = [], None
    for line in lines[1:]:
        if line.startswith("#EXTINF:"):
            assert pending is None, f"two #EXTINF lines in a row: {line}"
            seconds, _, name = line.removeprefix("#EXTINF:").partition(",")
            pending = (int(seconds), name)
        elif line.startswith("#") or not line.strip():
            continue  # another directive, or a comment
        else:
            assert pending is not None, f"a location without its #EXTINF: {line}"
            entries.append((*pending, line))
            pending = None
    assert pending is None, "an #EXTINF without its location"
    return entries


def _parse_xspf(path: Path) -> tuple[ET.Element, list[dict[str, str]]]:
    """The playlist element and each track's children (tag → text), every
    element checked to be in the XSPF 1 namespace."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{{{XSPF_NAMESPACE}}}playlist" and root.get("version") == "1"
    assert all(element.tag.startswith(f"{{{XSPF_NAMESPACE}}}") for element in root.iter())
    tracks = root.findall("x:trackList/x:track", NS)
    return root, [{child.tag.split("}")[1]: child.text for child in track} for track in tracks]


def _m3u_file(playlist: Path, location: str) -> str:
    """The file an M3U location names, as a player resolves it beside the playlist."""
    return os.path.normpath(playlist.parent / location)


def _xspf_file(playlist: Path, location: str) -> str:
    """The file an XSPF location (a URI reference) names, resolved against the playlist's URI."""
    uri = urlparse(urljoin(playlist.resolve().as_uri(), location))
    assert uri.scheme == "file"
    return url2pathname(uri.path)


# -- the formats, parsed back ----------------------------------------------------------


def test_m3u8_of_a_folder_library_has_paths_relative_to_the_playlist(library, tmp_path):
    tracks, ids = _tracks(library), _folder_ids(library)
    playlist = tmp_path / "Music" / "Playlists" / "mix.m3u8"

    write_playlist(playlist, read_entries(library, ids))

    entries = _parse_m3u(playlist)
    assert len(entries) == len(FILES)
    for track_id, (seconds, name, where) in zip(ids, entries):
        expected = tracks[track_id]
        assert name == expected["name"]
        # the stored duration is the file's (a scan measured it), written in whole seconds, half up
        seconds_of_file = FILES[str(Path(expected["file"]).relative_to(tmp_path / "Music"))]
        assert expected["duration_ms"] == pytest.approx(seconds_of_file * 1000, abs=1)
        assert seconds == (expected["duration_ms"] + 500) // 1000
        assert where.startswith("../") and not os.path.isabs(where)  # relative: the library shares the root
        assert _m3u_file(playlist, where) == expected["file"] and os.path.isfile(_m3u_file(playlist, where))
    assert "../Ørjan & Co/Før 100%/03 Kaffe? Ja.wav" in [where for _, _, where in entries]


def test_xspf_of_a_folder_library_has_relative_percent_encoded_locations(library, tmp_path):
    tracks, ids = _tracks(library), _folder_ids(library)
    playlist = tmp_path / "Music" / "Playlists" / "mix.xspf"

    write_playlist(playlist, read_entries(library, ids), title="A mix")

    root, entries = _parse_xspf(playlist)
    assert root.findtext("x:title", namespaces=NS) == "A mix"
    assert len(entries) == len(FILES)
    for track_id, entry in zip(ids, entries):
        expected = tracks[track_id]
        assert f"{entry['creator']} - {entry['title']}" == expected["name"]
        assert int(entry["duration"]) == expected["duration_ms"]
        assert entry["location"].startswith("../") and " " not in entry["location"]
        assert _xspf_file(playlist, entry["location"]) == expected["file"]
    assert "../%C3%98rjan%20%26%20Co/F%C3%B8r%20100%25/03%20Kaffe%3F%20Ja.wav" in [e["location"] for e in entries]


def test_files_outside_the_playlists_root_are_absolute(library):
    """A playlist folder with only the filesystem's root in common with the
    files: absolute paths, and file:// URIs in XSPF."""
    tracks, ids = _tracks(library), _folder_ids(library)
    entries = read_entries(library, ids)
    elsewhere = Path(Path(tracks[ids[0]]["file"]).anchor) / "sonufy-nowhere" / "lists"
    playlist = elsewhere / "mix.m3u8"  # never written: the text is parsed from memory

    lines = m3u8(entries, elsewhere).splitlines()
    assert [lines[i] for i in range(2, len(lines), 2)] == [tracks[t]["file"] for t in ids]
    locations = [track.findtext("x:location", namespaces=NS)
                 for track in ET.fromstring(xspf(entries, elsewhere)).iterfind("x:trackList/x:track", NS)]
    assert all(where.startswith("file:///") for where in locations)
    assert [_xspf_file(playlist, where) for where in locations] == [tracks[t]["file"] for t in ids]


def test_catalog_tracks_are_links_and_an_unknown_duration_is_marked(library, tmp_path):
    entries = read_entries(library, ["cat3", "cat1", "cat2"])
    write_playlist(tmp_path / "catalog.m3u8", entries)
    write_playlist(tmp_path / "catalog.xspf", entries)

    assert _parse_m3u(tmp_path / "catalog.m3u8") == [
        (-1, "artist cat3 - title cat3", "https://open.spotify.com/track/cat3"),  # 0 ms: unknown
        (200, "artist cat1 - title cat1", "https://open.spotify.com/track/cat1"),
        (184, "artist cat2 - title cat2", "https://open.spotify.com/track/cat2"),  # the page, not the preview
    ]
    _, tracks = _parse_xspf(tmp_path / "catalog.xspf")
    assert tracks == [
        {"location": "https://open.spotify.com/track/cat3", "title": "title cat3", "creator": "artist cat3"},
        {"location": "https://open.spotify.com/track/cat1", "title": "title cat1", "creator": "artist cat1",
         "duration": "200000"},
        {"location": "https://open.spotify.com/track/cat2", "title": "title cat2", "creator": "artist cat2",
         "duration": "184400"},
    ]


def test_text_a_line_cannot_carry_stays_out_of_the_way(tmp_path):
    """A title with a line break stays on its #EXTINF line; a file whose relative
    path starts with '#' is not read as a comment; XML gets no control characters."""
    folder = tmp_path / "lists"
    entries = [Entry("Band\nName", "Two,\r\nlines\x01", 61_500, str(folder / "#9 Dream.flac")),
               Entry("B", "Link & more", None, link="https://example.org/a?b=1&c=2")]
    (folder / "list.m3u8").parent.mkdir()
    (folder / "list.m3u8").write_text(m3u8(entries, folder), encoding="utf-8")
    assert _parse_m3u(folder / "list.m3u8") == [(62, "Band Name - Two, lines\x01", "./#9 Dream.flac"),
                                                (-1, "B - Link & more", "https://example.org/a?b=1&c=2")]
    tracks = ET.fromstring(xspf(entries, folder).encode("utf-8")).findall("x:trackList/x:track", NS)
    assert [t.findtext("x:title", namespaces=NS) for t in tracks] == ["Two, lines", "Link & more"]
    assert [t.findtext("x:location", namespaces=NS) for t in tracks] == ["%239%20Dream.flac",
                                                                          "https://example.org/a?b=1&c=2"]


# -- the file: replaced whole, refused before any work -----------------------------------


def test_an_existing_playlist_is_replaced_whole(library, tmp_path):
    playlist = tmp_path / "lists" / "mix.m3u"
    playlist.parent.mkdir()
    playlist.write_text("#EXTM3U\n#EXTINF:1,Old - Entry\n/old/file.wav\n", encoding="utf-8")
    before = playlist.stat().st_ino

    with open(playlist, encoding="utf-8") as reader:  # a player that has it open
        write_playlist(playlist, read_entries(library, ["cat1"]))
        assert "Old - Entry" in reader.read()  # it still reads the old file, whole

    assert _parse_m3u(playlist) == [(200, "artist cat1 - title cat1", "https://open.spotify.com/track/cat1")]
    assert playlist.stat().st_ino != before  # a new file renamed into place, not the old one rewritten
    assert os.listdir(playlist.parent) == ["mix.m3u"]  # no temporary file left


def test_bad_targets_are_refused_naming_the_path(tmp_path):
    for name, why in (("list.txt", "unknown playlist format '.txt'"), ("list.m3u8.bak", "unknown playlist format"),
                      ("list", "no suffix to tell the playlist format")):
        with pytest.raises(PlaylistError, match=re.escape(f"{tmp_path / name}: {why}")):
            check_target(tmp_path / name)
    (tmp_path / "folder.xspf").mkdir()
    with pytest.raises(PlaylistError, match="folder.xspf: is a folder"):
        check_target(tmp_path / "folder.xspf")
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(PlaylistError, match=re.escape(f"{tmp_path / 'plain' / 'list.m3u8'}: {tmp_path / 'plain'}: "
                                                      "exists and is not a folder")):
        check_target(tmp_path / "plain" / "list.m3u8")
    with pytest.raises(PlaylistError, match="plain is a file, so no folder can be made there"):
        check_target(tmp_path / "plain" / "sub" / "list.m3u8")
    assert check_target(tmp_path / "new" / "List.M3U8") == tmp_path / "new" / "List.M3U8"
    assert not (tmp_path / "new").exists()  # checked, nothing made


@pytest.mark.parametrize("command", [["recommend", "x"], ["path", "x", "y"], ["radio", "x"]])
def test_commands_refuse_a_bad_playlist_before_any_work(command, tmp_path, capsys):
    """Checked before the store is opened: the missing store is never reached."""
    missing = tmp_path / "missing.duckdb"
    assert cli([*command, "--db", str(missing), "--playlist", str(tmp_path / "list.txt")]) == 2
    err = capsys.readouterr().err
    assert f"--playlist {tmp_path / 'list.txt'}: unknown playlist format '.txt'" in err
    assert "missing.duckdb" not in err and not (tmp_path / "list.txt").exists()


# -- the three commands, through the CLI on a real store -------------------------------------


def _check_against_rows(store: Store, rows: list[dict], playlist: Path) -> None:
    """The playlist holds the command's list, in order: names, durations, files or links."""
    tracks = _tracks(store)
    if playlist.suffix == ".xspf":
        _, parsed = _parse_xspf(playlist)
        found = [(int(p["duration"]) if "duration" in p else None, f"{p['creator']} - {p['title']}",
                  _xspf_file(playlist, p["location"]) if not p["location"].startswith("https:") else p["location"])
                 for p in parsed]
        duration = lambda ms: ms if ms else None  # noqa: E731
    else:
        found = [(seconds, name, _m3u_file(playlist, where) if not where.startswith("https:") else where)
                 for seconds, name, where in _parse_m3u(playlist)]
        duration = lambda ms: (ms + 500) // 1000 if ms else -1  # noqa: E731
    expected = [(duration(tracks[row["track_id"]]["duration_ms"]), f"{row['artist']} - {row['title']}",
                 tracks[row["track_id"]]["file"] or f"https://open.spotify.com/track/{row['track_id']}")
                for row in rows]
    assert found == expected and len(found) >= 3


def test_recommend_path_and_radio_write_their_lists(library, tmp_path, capsys):
    db, folder_ids = str(library.path), _folder_ids(library)
    lists = tmp_path / "Music" / "Playlists"

    assert cli(["recommend", "--db", db, folder_ids[0], "-k", "5", "--json",
                "--playlist", str(lists / "similar.m3u8")]) == 0
    out = capsys.readouterr()
    _check_against_rows(library, json.loads(out.out)["recommendations"], lists / "similar.m3u8")
    assert f"playlist of 5 tracks written to {lists / 'similar.m3u8'}" in out.err

    assert cli(["path", "--db", db, folder_ids[0], "cat1", "--steps", "4", "--json",
                "--playlist", str(lists / "walk.xspf")]) == 0
    rows = json.loads(capsys.readouterr().out)["path"]
    _check_against_rows(library, rows, lists / "walk.xspf")
    assert ET.parse(lists / "walk.xspf").getroot().findtext("x:title", namespaces=NS) == (
        f"From {rows[0]['artist']} - {rows[0]['title']} to artist cat1 - title cat1")

    assert cli(["radio", "--db", db, folder_ids[1], "cat2", "-n", "6", "--json",
                "--playlist", str(lists / "radio.m3u")]) == 0
    _check_against_rows(library, json.loads(capsys.readouterr().out)["radio"], lists / "radio.m3u")

    # The table too; an existing playlist is replaced by the new list.
    assert cli(["radio", "--db", db, "cat3", "-n", "3", "--playlist", str(lists / "radio.m3u")]) == 0
    assert "Radio from 1 seed(s)" in capsys.readouterr().out
    assert len(_parse_m3u(lists / "radio.m3u")) == 3
    assert sorted(os.listdir(lists)) == ["radio.m3u", "similar.m3u8", "walk.xspf"]
