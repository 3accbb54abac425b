"""A local folder of audio files as a catalog: no Spotify account needed.

Each file is a track, its id derived from its path so that rescans find the
same tracks. Artist, album and title come from the file's tags (mutagen), or
else from the path (``Artist/Album/NN Title.ext``, or as much of it as there
is). The file itself is the audio that gets analysed. A rescan reads only
files that are new or whose size or modification time changed.

A file is audio by its suffix, or else by its first bytes (an Ogg, FLAC,
MP3, WAV, AIFF or MP4 container: files named ``track`` with no suffix are
common in real libraries). What a scan skips it counts, by reason: not audio,
unreadable, or needing ffmpeg (see :meth:`FolderScan.skipped_summary`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import soundfile as sf

from sonufy_model.audio import FFMPEG_SUFFIXES, ffmpeg_available
from sonufy_model.schemas import FILE_SCHEMA, PREVIEW_SCHEMA, TRACK_SCHEMA

# What libsndfile (bundled with soundfile) decodes without ffmpeg.
SNDFILE_SUFFIXES = {".mp3", ".ogg", ".oga", ".opus", ".flac", ".wav", ".aiff", ".aif"}
_TRACK_NUMBER = re.compile(r"^\s*\d{1,3}\s*[-._ ]\s*")
# What a file name's suffix looks like; "Mr. Blue Sky" has none.
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")
#: Bytes read from a file without an audio suffix to recognise its container.
SNIFF_BYTES = 64
#: Reasons a scan skips a file, in the order a summary gives them.
NOT_AUDIO, UNREADABLE, NEEDS_FFMPEG = "not audio", "unreadable", "needs ffmpeg"
SKIP_REASONS = (NOT_AUDIO, UNREADABLE, NEEDS_FFMPEG)


@dataclass
class FolderScan:
    """What a scan found: rows for the new and changed files only."""

    root: str
    tracks: pl.DataFrame
    previews: pl.DataFrame
    files: pl.DataFrame
    changed_track_ids: list[str] = field(default_factory=list)
    unchanged: int = 0
    rejected: list[str] = field(default_factory=list)  # "path: reason", audio that was not ingested
    #: Paths of every skipped file by reason (SKIP_REASONS): the rejected
    #: ones as unreadable or needing ffmpeg, and the files that are not audio.
    skipped: dict[str, list[str]] = field(default_factory=dict)
    #: Files taken as audio by their first bytes, not by their suffix.
    by_content: int = 0

    @property
    def new(self) -> int:
        return self.tracks.height - len(self.changed_track_ids)

    def skipped_counts(self) -> dict[str, int]:
        """Files skipped, in all and by reason: skipped_files,
        skipped_not_audio, skipped_unreadable, skipped_needs_ffmpeg."""
        counts = {f"skipped_{reason.replace(' ', '_')}": len(self.skipped.get(reason, ())) for reason in SKIP_REASONS}
        return {"skipped_files": sum(counts.values()), **counts}

    def skipped_summary(self, examples: int = 3) -> str:
        """"skipped 3 files: 2 not audio (cover.jpg, notes.txt), 1 unreadable
        (broken.mp3)", or "skipped no files"."""
        parts = []
        for reason in SKIP_REASONS:
            paths = self.skipped.get(reason, [])
            if paths:
                names = ", ".join(Path(path).name for path in paths[:examples])
                parts.append(f"{len(paths)} {reason} ({names}{', …' if len(paths) > examples else ''})")
        total = sum(len(paths) for paths in self.skipped.values())
        if not total:
            return "skipped no files"
        return f"skipped {total} file{'s' if total != 1 else ''}: " + ", ".join(parts)


def audio_suffixes() -> set[str]:
    """The suffixes a scan ingests here: m4a and friends only with ffmpeg."""
    return SNDFILE_SUFFIXES | (set(FFMPEG_SUFFIXES) if ffmpeg_available() else set())


def sniff_audio(head: bytes) -> str | None:
    """The audio container that a file's first bytes announce, or None:
    ogg (opus when its first page holds an OpusHead), flac, mp3 (an ID3 tag
    or an MPEG audio frame header), wav, aiff, mp4 (ftyp: m4a and friends)
    or aac (an ADTS frame header)."""
    if head.startswith(b"OggS"):
        return "opus" if b"OpusHead" in head[:SNIFF_BYTES] else "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") and len(head) >= 10 and head[3] < 0xFF and head[4] < 0xFF:
        return "mp3"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp":
        return "mp4"
    if len(head) >= 4 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        version, layer = (head[1] >> 3) & 0b11, (head[1] >> 1) & 0b11
        if layer == 0b00:  # ADTS: AAC frames, MPEG-4 (0) or MPEG-2 (1) in that bit
            return "aac" if head[1] & 0xF6 == 0xF0 and (head[2] >> 2) & 0xF < 13 else None
        bitrate, rate = head[2] >> 4, (head[2] >> 2) & 0b11
        # a frame header of MPEG audio: no reserved version, bitrate or sample rate
        if version != 0b01 and bitrate != 0b1111 and rate != 0b11:
            return "mp3"
    return None


#: Containers libsndfile reads by content (the spectrogram stage opens a file
#: without an ffmpeg suffix with libsndfile); the others need ffmpeg, which
#: the spectrogram stage picks by suffix only.
SNDFILE_CONTAINERS = {"ogg", "opus", "flac", "mp3", "wav", "aiff"}


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as file:
        return sniff_audio(file.read(SNIFF_BYTES))


def track_id_for(path: Path) -> str:
    return "file:" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20]


def describe_file(path: Path, root: Path) -> dict[str, str | None]:
    """artist, title, album (tags, else the path) and isrc (tags only) of a file."""
    tags, _ = _from_tags(path)
    return {"isrc": None, **_from_path(path, root), **tags}


def _from_path(path: Path, root: Path) -> dict[str, str | None]:
    parts = path.relative_to(root).parts
    stem = path.stem if _SUFFIX.match(path.suffix) else path.name
    title = _TRACK_NUMBER.sub("", stem).strip() or stem
    if len(parts) >= 3:
        return {"artist": parts[-3], "title": title, "album": parts[-2]}
    if len(parts) == 2:
        return {"artist": parts[-2], "title": title, "album": None}
    if " - " in title:
        artist, _, rest = title.partition(" - ")
        return {"artist": artist.strip(), "title": rest.strip(), "album": None}
    return {"artist": "Unknown artist", "title": title, "album": None}


def _from_tags(path: Path) -> tuple[dict[str, str], float | None]:
    """Artist, album, title from the file's tags where present, and its length."""
    import mutagen

    try:
        audio = mutagen.File(str(path), easy=True)
    except Exception:  # mutagen raises many error types for odd files; tags are optional
        return {}, None
    if audio is None:
        return {}, None
    tags: dict[str, str] = {}
    for key in ("artist", "album", "title", "isrc"):
        values = (audio.tags or {}).get(key) if audio.tags is not None else None
        if values and str(values[0]).strip():
            tags[key] = str(values[0]).strip()
    length = getattr(getattr(audio, "info", None), "length", None)
    return tags, float(length) if length else None


def _duration(path: Path, tagged_length: float | None) -> float:
    if path.suffix.lower() in FFMPEG_SUFFIXES:
        if not tagged_length:
            raise ValueError("no readable length")
        return tagged_length
    return float(sf.info(str(path)).duration)


def scan_folder(root: str | Path, known: dict[str, tuple[int, int]] | None = None) -> FolderScan:
    """Scan ``root`` for audio files; ``known`` maps path -> (size, mtime_ns) of the last scan."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"folder source {root} is not a directory")
    known = known or {}
    suffixes = audio_suffixes()
    tracks: list[dict] = []
    previews: list[dict] = []
    files: list[dict] = []
    changed: list[str] = []
    unchanged = 0
    rejected: list[str] = []
    skipped: dict[str, list[str]] = {reason: [] for reason in SKIP_REASONS}
    by_content = 0

    def skip(path: Path, reason: str, detail: str | None = None) -> None:
        skipped[reason].append(str(path))
        if detail is not None:
            rejected.append(f"{path}: {detail}")

    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        sniffed = suffix not in suffixes
        if sniffed:
            if suffix in FFMPEG_SUFFIXES:
                skip(path, NEEDS_FFMPEG, f"decoding {suffix} needs ffmpeg, which is not installed")
                continue
            try:
                container = _sniff(path)
            except OSError as error:
                skip(path, UNREADABLE, f"cannot be read ({error.strerror or error})")
                continue
            if container is None:
                skip(path, NOT_AUDIO)
                continue
            if container not in SNDFILE_CONTAINERS:
                # MP4 or ADTS audio: the spectrogram stage sends a file to
                # ffmpeg by its suffix only, and libsndfile cannot read these.
                if not ffmpeg_available():
                    skip(path, NEEDS_FFMPEG, f"{container} audio (by its first bytes): decoding it needs ffmpeg, "
                         "which is not installed")
                else:
                    skip(path, UNREADABLE, f"{container} audio without its suffix: name it .m4a or .aac "
                         "to have it decoded by ffmpeg")
                continue
        stat = path.stat()
        before = known.get(str(path))
        if before == (stat.st_size, stat.st_mtime_ns):
            unchanged += 1
            by_content += sniffed
            continue
        tags, tagged_length = _from_tags(path)
        try:
            duration = _duration(path, tagged_length)
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as error:
            skip(path, UNREADABLE, f"does not decode as audio ({error})")
            continue
        by_content += sniffed
        described = {**_from_path(path, root), **tags}  # an ISRC tag is kept for matching only
        track_id = track_id_for(path)
        if before is not None:
            changed.append(track_id)
        tracks.append(
            {
                "track_id": track_id,
                "source": "folder",
                "title": described["title"],
                "artist": described["artist"],
                "artists": [described["artist"]],
                "artist_id": None,
                "album": described["album"],
                "album_id": None,
                "release_date": None,
                "duration_ms": int(duration * 1000),
                "isrc": None,
                "explicit": None,
                "popularity": None,
                "uri": path.as_uri(),
                "preview_url": None,
                "path": str(path),
                "found_by": f"folder:{root}",
            }
        )
        previews.append(
            {"track_id": track_id, "provider": "folder", "path": str(path), "bytes": stat.st_size,
             "duration_s": duration}
        )
        files.append(
            {"path": str(path), "track_id": track_id, "root": str(root), "size": stat.st_size,
             "mtime_ns": stat.st_mtime_ns}
        )
    return FolderScan(
        root=str(root),
        tracks=pl.DataFrame(tracks, schema=TRACK_SCHEMA),
        previews=pl.DataFrame(previews, schema=PREVIEW_SCHEMA),
        files=pl.DataFrame(files, schema=FILE_SCHEMA),
        changed_track_ids=changed,
        unchanged=unchanged,
        rejected=rejected,
        skipped={reason: paths for reason, paths in skipped.items() if paths},
        by_content=by_content,
    )
