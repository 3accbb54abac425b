"""A folder of the user's own files as the catalog: tags, paths, rescans."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from flows.cli import main as cli
from flows.sources import parse_source
from sonufy_model.audio import ffmpeg_available
from sonufy_model.folder import scan_folder, track_id_for
from sonufy_model.store import Store


def _write(path, seconds=40.0, rate=22050, fmt=None, freq=330.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format=fmt)


def _tag(path, **tags):
    import mutagen

    audio = mutagen.File(str(path), easy=True)
    if audio.tags is None:
        audio.add_tags()
    for key, value in tags.items():
        audio[key] = value
    audio.save()


def test_scan_reads_tags_else_the_path(tmp_path):
    _write(tmp_path / "Nina Vale" / "Low Tide" / "01 - Harbour Lights.mp3", fmt="MP3")
    _write(tmp_path / "Loose Tapes" / "demo take.flac", fmt="FLAC")
    _write(tmp_path / "Solo Artist - Only Song.wav")
    _write(tmp_path / "misc" / "track07.ogg", fmt="OGG")
    _tag(tmp_path / "misc" / "track07.ogg", artist="Tagged Artist", album="Tagged Album", title="Tagged Title")
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "broken.mp3").write_bytes(b"\x00" * 2048)

    scan = scan_folder(tmp_path)

    rows = {row["title"]: row for row in scan.tracks.iter_rows(named=True)}
    assert set(rows) == {"Harbour Lights", "demo take", "Only Song", "Tagged Title"}
    assert (rows["Harbour Lights"]["artist"], rows["Harbour Lights"]["album"]) == ("Nina Vale", "Low Tide")
    assert rows["demo take"]["artist"] == "Loose Tapes"
    assert rows["Only Song"]["artist"] == "Solo Artist"
    assert (rows["Tagged Title"]["artist"], rows["Tagged Title"]["album"]) == ("Tagged Artist", "Tagged Album")
    assert all(row["source"] == "folder" and row["path"] for row in rows.values())
    assert scan.previews["duration_s"].min() == pytest.approx(40.0, abs=0.2)
    assert len(scan.rejected) == 1 and "broken.mp3" in scan.rejected[0]
    assert track_id_for(tmp_path / "Solo Artist - Only Song.wav") in set(scan.tracks["track_id"])


def test_rescans_read_only_new_and_changed_files(tmp_path):
    music, db = tmp_path / "Music", tmp_path / "s.duckdb"
    _write(music / "A" / "one.wav")
    _write(music / "A" / "two.wav")
    store = Store(db)
    first = scan_folder(music, store.known_files(str(music)))
    store.record_scan(first.tracks, first.previews, first.files, first.changed_track_ids)
    assert (first.new, first.unchanged) == (2, 0)

    again = scan_folder(music, store.known_files(str(music)))
    assert (again.new, len(again.changed_track_ids), again.unchanged) == (0, 0, 2)

    _write(music / "A" / "three.wav")
    _write(music / "A" / "two.wav", seconds=50.0, freq=880.0)
    os.utime(music / "A" / "two.wav", ns=(1, 1))  # a different mtime, whatever the clock's resolution
    third = scan_folder(music, store.known_files(str(music)))
    assert (third.new, third.unchanged) == (1, 1)
    assert third.changed_track_ids == [track_id_for(music / "A" / "two.wav")]
    store.record_scan(third.tracks, third.previews, third.files, third.changed_track_ids)
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM tracks").fetchone()[0] == 3
        duration = con.execute(
            "SELECT duration_s FROM previews WHERE track_id = ?", [track_id_for(music / "A" / "two.wav")]
        ).fetchone()[0]
    assert duration == pytest.approx(50.0, abs=0.1)


def test_m4a_needs_ffmpeg(tmp_path):
    source = tmp_path / "src.wav"
    _write(source, seconds=35.0)
    if ffmpeg_available():
        import subprocess

        subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), str(tmp_path / "x.m4a")], check=True)
        source.unlink()
        scan = scan_folder(tmp_path)
        assert scan.tracks.height == 1 and scan.previews["duration_s"][0] == pytest.approx(35.0, abs=0.5)
    else:
        shutil.copy(source, tmp_path / "x.m4a")
        source.unlink()
        scan = scan_folder(tmp_path)
        assert scan.tracks.is_empty()
        assert "needs ffmpeg" in scan.rejected[0]


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
    assert cli(["build", "--preview-sources", "spotify,itunes", "--db", str(tmp_path / "s.duckdb")]) == 2
    assert "'spotify,itunes'" in capsys.readouterr().err
    assert cli(["build", "--preview-folder", str(tmp_path / "gone"), "--db", str(tmp_path / "s.duckdb")]) == 2
    assert "--preview-folder" in capsys.readouterr().err
