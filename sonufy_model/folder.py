"""A local folder of audio files as a catalog: no Spotify account needed.

Each file is a track, its id derived from its path so that rescans find the
same tracks. Artist, album and title come from the file's tags (mutagen), or
else from the path (``Artist/Album/NN Title.ext``, or as much of it as there
is). The file itself is the audio that gets analysed. A rescan reads only
files that are new or whose size or modification time changed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import soundfile as sf

from sonufy_model.audio import FFMPEG_SUFFIXES, ffmpeg_available
from sonufy_model.store import PREVIEW_SCHEMA, TRACK_SCHEMA

# What libsndfile (bundled with soundfile) decodes without ffmpeg.
SNDFILE_SUFFIXES = {".mp3", ".ogg", ".oga", ".opus", ".flac", ".wav", ".aiff", ".aif"}
_TRACK_NUMBER = re.compile(r"^\s*\d{1,3}\s*[-._ ]\s*")

FILE_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String,
    "track_id": pl.String,
    "root": pl.String,
    "size": pl.Int64,
    "mtime_ns": pl.Int64,
}


@dataclass
class FolderScan:
    """What a scan found: rows for the new and changed files only."""

    root: str
    tracks: pl.DataFrame
    previews: pl.DataFrame
    files: pl.DataFrame
    changed_track_ids: list[str] = field(default_factory=list)
    unchanged: int = 0
    rejected: list[str] = field(default_factory=list)  # "path: reason"

    @property
    def new(self) -> int:
        return self.tracks.height - len(self.changed_track_ids)


def audio_suffixes() -> set[str]:
    """The suffixes a scan ingests here: m4a and friends only with ffmpeg."""
    return SNDFILE_SUFFIXES | (set(FFMPEG_SUFFIXES) if ffmpeg_available() else set())


def track_id_for(path: Path) -> str:
    return "file:" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20]


def describe_file(path: Path, root: Path) -> dict[str, str | None]:
    """artist, title, album (tags, else the path) and isrc (tags only) of a file."""
    tags, _ = _from_tags(path)
    return {"isrc": None, **_from_path(path, root), **tags}


def _from_path(path: Path, root: Path) -> dict[str, str | None]:
    parts = path.relative_to(root).parts
    title = _TRACK_NUMBER.sub("", path.stem).strip() or path.stem
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
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix not in suffixes:
            if suffix in FFMPEG_SUFFIXES:
                rejected.append(f"{path}: decoding {suffix} needs ffmpeg, which is not installed")
            continue
        stat = path.stat()
        before = known.get(str(path))
        if before == (stat.st_size, stat.st_mtime_ns):
            unchanged += 1
            continue
        tags, tagged_length = _from_tags(path)
        try:
            duration = _duration(path, tagged_length)
        except (sf.LibsndfileError, RuntimeError, ValueError) as error:
            rejected.append(f"{path}: does not decode as audio ({error})")
            continue
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
    )
