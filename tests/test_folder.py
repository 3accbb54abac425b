"""A folder of the user's own files as the catalog."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from flows.cli import main as cli
from flows.sources import parse_source
from sonufy_model.folder import scan_folder, track_id_for


def _write(path, seconds=40.0, rate=22050, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate, format=fmt)


def test_scan_reads_artist_album_title_from_the_path(tmp_path):
    _write(tmp_path / "Nina Vale" / "Low Tide" / "01 - Harbour Lights.mp3", fmt="MP3")
    _write(tmp_path / "Loose Tapes" / "demo take.flac", fmt="FLAC")
    _write(tmp_path / "Solo Artist - Only Song.wav")
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "broken.mp3").write_bytes(b"\x00" * 2048)

    tracks, files, rejected = scan_folder(tmp_path)

    rows = {row["title"]: row for row in tracks.iter_rows(named=True)}
    assert set(rows) == {"Harbour Lights", "demo take", "Only Song"}
    assert (rows["Harbour Lights"]["artist"], rows["Harbour Lights"]["album"]) == ("Nina Vale", "Low Tide")
    assert rows["demo take"]["artist"] == "Loose Tapes"
    assert rows["Only Song"]["artist"] == "Solo Artist"
    assert all(row["source"] == "folder" and row["path"] for row in rows.values())
    assert files["duration_s"].min() == pytest.approx(40.0, abs=0.2)
    assert len(rejected) == 1 and "broken.mp3" in rejected[0]
    # Rescans find the same tracks.
    again, _, _ = scan_folder(tmp_path)
    assert sorted(again["track_id"]) == sorted(tracks["track_id"])
    assert track_id_for(tmp_path / "Solo Artist - Only Song.wav") in set(tracks["track_id"])


def test_bad_sources_are_named():
    with pytest.raises(ValueError, match="folder:/no/such/dir"):
        parse_source("folder:/no/such/dir")
    with pytest.raises(ValueError, match="'itunes'"):
        parse_source("itunes")


def test_cli_names_a_bad_source_and_exits_non_zero(tmp_path, capsys):
    assert cli(["build", "--source", f"folder:{tmp_path / 'nope'}", "--db", str(tmp_path / "s.duckdb")]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli(["build", "--tracks", "zero"])
    assert exit_info.value.code == 2
    assert "'zero' is not a whole number" in capsys.readouterr().err
