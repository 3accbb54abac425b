"""A folder of the user's own files as the catalog: tags, paths, rescans."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


# -- audio recognised by content; what a scan skips, and why ------------------------


def _head(path, n=64):
    return path.read_bytes()[:n]


def test_sniff_audio_knows_the_containers_by_their_first_bytes(tmp_path):
    from PIL import Image

    from sonufy_model.folder import sniff_audio

    written = {"ogg": ("OGG", None), "flac": ("FLAC", None), "wav": ("WAV", None), "aiff": ("AIFF", None),
               "mp3": ("MP3", None), "opus": ("OGG", "OPUS")}
    for kind, (fmt, subtype) in written.items():
        path = tmp_path / f"x.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(48000) / 48000
        sf.write(path, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 48000, format=fmt, subtype=subtype)
        assert sniff_audio(_head(path)) == kind, kind
    _tag(tmp_path / "x.mp3", artist="Someone")  # an ID3 tag first, then the frames
    assert _head(tmp_path / "x.mp3").startswith(b"ID3") and sniff_audio(_head(tmp_path / "x.mp3")) == "mp3"
    assert sniff_audio(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom") == "mp4"
    assert sniff_audio(bytes([0xFF, 0xF1, 0x50, 0x80, 0x02, 0x1F, 0xFC])) == "aac"  # ADTS, 44.1 kHz
    # not audio
    Image.new("RGB", (8, 8)).save(tmp_path / "cover.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "cover.png")
    for head in (_head(tmp_path / "cover.jpg"), _head(tmp_path / "cover.png"), b"%PDF-1.7\n", b"PK\x03\x04",
                 b"just some notes\n", b"", b"\x00" * 64, b"RIFF\x00\x00\x00\x00AVI LIST", b"\xff\xff\xff\xff"):
        assert sniff_audio(head) is None, head[:12]


def test_files_without_a_suffix_are_scanned_by_content_and_skips_are_counted(tmp_path):
    from sonufy_model.audio import MelParams, load_excerpts
    from sonufy_model.folder import SKIP_REASONS

    album = tmp_path / "Composer" / "Soundtrack"
    _write(album / "a.ogg", fmt="OGG")
    (album / "a.ogg").rename(album / "track")  # an Ogg file named `track`, as real libraries have
    _write(album / "b.flac", fmt="FLAC", freq=440.0)
    (album / "b.flac").rename(album / "Mr. Blue Sky")  # a dot, but no suffix
    _write(album / "c.mp3", fmt="MP3", freq=550.0)
    _tag(album / "c.mp3", title="Tagged Theme")
    (album / "c.mp3").rename(album / "03 theme.dat")  # an unknown suffix: the content decides
    _write(album / "d.wav", seconds=35.0)
    (album / "d.wav").rename(album / "d")
    (album / "notes.txt").write_text("not audio")
    (album / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 100)
    (tmp_path / "desktop.ini").write_text("[.ShellClassInfo]")
    (album / "broken.mp3").write_bytes(b"\x00" * 2048)
    (album / "truncated").write_bytes(b"OggS\x00\x02" + b"\x00" * 40)  # Ogg by its first bytes, and no more

    scan = scan_folder(tmp_path)

    rows = {row["title"]: row for row in scan.tracks.iter_rows(named=True)}
    assert set(rows) == {"track", "Mr. Blue Sky", "Tagged Theme", "d"}
    assert (rows["track"]["artist"], rows["track"]["album"]) == ("Composer", "Soundtrack")
    assert scan.by_content == 4
    # in path order: 03 theme.dat, Mr. Blue Sky, d, track
    assert scan.previews.sort("path")["duration_s"].to_list() == pytest.approx([40.0, 40.0, 35.0, 40.0], abs=0.2)
    assert {k: sorted(Path(p).name for p in v) for k, v in scan.skipped.items()} == {
        "not audio": ["cover.jpg", "desktop.ini", "notes.txt"], "unreadable": ["broken.mp3", "truncated"]}
    assert scan.skipped_counts() == {"skipped_files": 5, "skipped_not_audio": 3, "skipped_unreadable": 2,
                                     "skipped_needs_ffmpeg": 0}
    assert scan.skipped_summary() == (
        "skipped 5 files: 3 not audio (cover.jpg, notes.txt, desktop.ini), 2 unreadable (broken.mp3, truncated)")
    assert scan.skipped_summary(examples=1).startswith("skipped 5 files: 3 not audio (cover.jpg, …), ")
    assert [r.split(":")[0] for r in scan.rejected] == [str(album / "broken.mp3"), str(album / "truncated")]
    assert set(SKIP_REASONS) >= set(scan.skipped)
    # the spectrogram stage decodes each of them by content, as the scan did
    for path in scan.previews["path"]:
        clip, seconds = load_excerpts(path, MelParams())[0]
        assert seconds == pytest.approx(30.0) and np.abs(clip).max() > 0.1, path

    # a rescan: the unchanged files by content stay unchanged, the skipped ones skipped
    store = Store(tmp_path.parent / f"{tmp_path.name}.duckdb")
    store.record_scan(scan.tracks, scan.previews, scan.files, scan.changed_track_ids)
    again = scan_folder(tmp_path, store.known_files(str(tmp_path)))
    assert (again.new, again.unchanged, again.skipped_counts()["skipped_files"]) == (0, 4, 5)


def test_mp4_audio_without_a_suffix_is_skipped_with_its_reason(tmp_path):
    (tmp_path / "song").write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + b"\x00" * 200)
    scan = scan_folder(tmp_path)
    assert scan.tracks.is_empty() and scan.by_content == 0
    reason = "needs ffmpeg" if not ffmpeg_available() else "unreadable"
    assert scan.skipped == {reason: [str(tmp_path / "song")]}
    assert "mp4 audio" in scan.rejected[0]


def test_the_scan_task_and_sonufy_build_report_what_was_skipped(tmp_path, prefect_api):
    from prefect import flow

    from flows.cli.build import _scan_note
    from tasks.catalog import scan_folder as scan_task

    _write(tmp_path / "music" / "A" / "one.ogg", fmt="OGG")
    (tmp_path / "music" / "A" / "one.ogg").rename(tmp_path / "music" / "A" / "one")
    _write(tmp_path / "music" / "A" / "two.wav")
    (tmp_path / "music" / "A" / "folder.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 60)
    (tmp_path / "music" / "A" / "bad.flac").write_bytes(b"fLaC" + b"\x00" * 60)
    store = Store(tmp_path / "s.duckdb")

    @flow
    def scan():
        return scan_task(store, str(tmp_path / "music"))

    counts = scan()
    assert counts == {"new_files": 2, "changed_files": 0, "unchanged_files": 0, "audio_by_content": 1,
                      "skipped_files": 2, "skipped_not_audio": 1, "skipped_unreadable": 1,
                      "skipped_needs_ffmpeg": 0}
    assert _scan_note(counts) == (
        "folder scan: 2 new files, 0 changed, 0 unchanged (1 recognised as audio by content, not suffix); "
        "skipped 2 files: 1 not audio, 1 unreadable (names in the scan task's log)")
    assert _scan_note({"new_files": 3, "skipped_files": 0}).endswith("3 new files, 0 changed, 0 unchanged; "
                                                                     "skipped no files")
    assert _scan_note({"tracks": 300}) is None, "not a folder build"
