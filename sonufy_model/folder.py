"""A local folder of audio files as a catalog: no Spotify account needed.

Each file is a track. Its id is derived from its path, so rescans find the
same tracks; artist, album and title come from the path
(``Artist/Album/NN Title.ext``, or as much of it as there is). The file
itself is the audio that gets analysed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import polars as pl
import soundfile as sf

from sonufy_model.store import TRACK_SCHEMA

# What libsndfile (bundled with soundfile) decodes without ffmpeg.
AUDIO_SUFFIXES = {".mp3", ".ogg", ".oga", ".opus", ".flac", ".wav", ".aiff", ".aif"}
_TRACK_NUMBER = re.compile(r"^\s*\d{1,3}\s*[-._ ]\s*")


def track_id_for(path: Path) -> str:
    return "file:" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20]


def _describe(path: Path, root: Path) -> tuple[str, str, str | None]:
    """(artist, title, album) from a path below ``root``."""
    parts = path.relative_to(root).parts
    title = _TRACK_NUMBER.sub("", path.stem).strip() or path.stem
    if len(parts) >= 3:
        return parts[-3], title, parts[-2]
    if len(parts) == 2:
        return parts[-2], title, None
    if " - " in title:
        artist, _, rest = title.partition(" - ")
        return artist.strip(), rest.strip(), None
    return "Unknown artist", title, None


def scan_folder(root: str | Path) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Tracks and their audio files under ``root``, plus files that don't decode.

    Returns (tracks rows, previews rows: track_id, provider, path, bytes,
    duration_s, rejected "path: reason" strings).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"folder source {root} is not a directory")
    tracks: list[dict] = []
    previews: list[dict] = []
    rejected: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as error:
            rejected.append(f"{path}: does not decode as audio ({error})")
            continue
        artist, title, album = _describe(path, root)
        track_id = track_id_for(path)
        tracks.append(
            {
                "track_id": track_id,
                "source": "folder",
                "title": title,
                "artist": artist,
                "artists": [artist],
                "artist_id": None,
                "album": album,
                "album_id": None,
                "release_date": None,
                "duration_ms": int(info.duration * 1000),
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
            {
                "track_id": track_id,
                "provider": "folder",
                "path": str(path),
                "bytes": path.stat().st_size,
                "duration_s": float(info.duration),
            }
        )
    preview_schema = {
        "track_id": pl.String,
        "provider": pl.String,
        "path": pl.String,
        "bytes": pl.Int64,
        "duration_s": pl.Float64,
    }
    return pl.DataFrame(tracks, schema=TRACK_SCHEMA), pl.DataFrame(previews, schema=preview_schema), rejected
