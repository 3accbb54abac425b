"""Playlists out: a list of tracks as a file that players and media servers read.

Two formats, chosen by the file's suffix: M3U8 (``.m3u8`` or ``.m3u``, UTF-8
either way: ``#EXTM3U``, then an ``#EXTINF:<seconds>,<artist> - <title>`` line
and a location line per track, -1 seconds when the duration is unknown) and
XSPF (``.xspf``, XML in the XSPF 1 namespace: a location, creator, title and
duration in milliseconds per track, no duration when it is unknown).

A folder track's location is its file, written relative to the playlist's
folder when the two share a folder below the filesystem's root (a media
server reads the playlist beside the library, wherever that is mounted),
else absolute; XSPF writes it as a percent-encoded URI (``file://`` when
absolute). Any other track's location is its link: a catalog track's Spotify
page, else its preview link.

:func:`m3u8` and :func:`xspf` are pure (entries in, text out);
:func:`read_entries` reads the entries of a list from the store,
:func:`check_target` refuses a bad path before any work, and
:func:`write_playlist` replaces the file whole.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

import sql
from sonufy_model.outputs import OutputError, writable_dir, write_atomically

SQL_FILE = "playlists.sql"
#: Suffix (lower case) -> format.
FORMATS = {".m3u8": "m3u8", ".m3u": "m3u8", ".xspf": "xspf"}
XSPF_NAMESPACE = "http://xspf.org/ns/0/"
CREATOR = "Sonufy"

# Characters XML 1.0 cannot carry (a tag may hold them): dropped from XSPF text.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class PlaylistError(ValueError):
    """A playlist path that cannot be written; the message names it."""


@dataclass(frozen=True)
class Entry:
    """One track of a playlist: ``path`` is the local file (absolute) of a
    folder track, ``link`` where else to hear it; one of them is set."""

    artist: str
    title: str
    duration_ms: int | None = None  # None: unknown
    path: str | None = None
    link: str | None = None

    def __post_init__(self) -> None:
        if not self.path and not self.link:
            raise ValueError(f"{self.artist} - {self.title}: a playlist entry needs a file or a link")


# -- the path ------------------------------------------------------------------------


def playlist_format(path: str | Path) -> str:
    """``"m3u8"`` or ``"xspf"`` by ``path``'s suffix, or a :class:`PlaylistError` naming it."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        what = f"unknown playlist format {suffix!r}" if suffix else "no suffix to tell the playlist format"
        raise PlaylistError(f"{path}: {what}; name the file .m3u8, .m3u or .xspf")
    return FORMATS[suffix]


def check_target(path: str | Path) -> Path:
    """``path`` as a playlist file that can be written (its suffix known, its
    folder writable or creatable, not itself a folder), or a ``ValueError``
    naming it. Meant to run before any work."""
    path = Path(path).expanduser()
    playlist_format(path)
    if path.is_dir():
        raise PlaylistError(f"{path}: is a folder; give a file name ending in .m3u8, .m3u or .xspf")
    try:
        writable_dir(path.parent)
    except OutputError as error:  # named by the playlist, not only by its folder
        raise PlaylistError(f"{path}: {error}") from None
    return path


# -- entries → text ------------------------------------------------------------------


def _shares_root(file: str, folder: Path) -> bool:
    """Whether ``file`` and ``folder`` (both absolute) have a folder in common below the filesystem's root."""
    try:
        common = os.path.commonpath([file, folder])
    except ValueError:  # different drives, or one of them relative
        return False
    return Path(common) != Path(Path(file).anchor)


def _file_location(file: str, relative_to: Path | None, uri: bool) -> str:
    if relative_to is not None and os.path.isabs(file) and _shares_root(file, relative_to):
        relative = Path(os.path.relpath(file, relative_to)).as_posix()
        return quote_from_bytes(os.fsencode(relative)) if uri else relative
    if uri and os.path.isabs(file):
        return Path(file).as_uri()
    return quote_from_bytes(os.fsencode(Path(file).as_posix())) if uri else file


def location(entry: Entry, relative_to: Path | None = None, uri: bool = False) -> str:
    """Where a player finds ``entry``: its file (relative to the folder
    ``relative_to`` when they share a root; a percent-encoded URI with
    ``uri``), else its link."""
    if entry.path:
        return _file_location(entry.path, relative_to, uri)
    return entry.link


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8 (surrogate escapes)
        return False
    return True


def m3u8(entries: Iterable[Entry], relative_to: Path | None = None) -> str:
    """The extended M3U text of ``entries``, in order (UTF-8 is the file's encoding)."""
    lines = ["#EXTM3U"]
    for entry in entries:
        where = location(entry, relative_to)
        if entry.path and ("\n" in where or "\r" in where or not _encodable(where)):
            where = location(entry, None, uri=True)  # a name a line cannot carry: its file:// URI
        elif entry.path and where.startswith("#"):
            where = f"./{where}"  # not a comment
        seconds = -1 if entry.duration_ms is None else (int(entry.duration_ms) + 500) // 1000  # half up
        lines.append(f"#EXTINF:{seconds},{_one_line(entry.artist)} - {_one_line(entry.title)}")
        lines.append(where)
    return "\n".join(lines) + "\n"


def _xml_text(text: str) -> str:
    text = _NOT_XML.sub("", str(text))
    return text if _encodable(text) else text.encode("utf-8", "replace").decode("utf-8")


def xspf(entries: Iterable[Entry], relative_to: Path | None = None, title: str | None = None) -> str:
    """The XSPF 1 document of ``entries``, in order; ``title`` names the playlist."""

    def element(parent: ET.Element, tag: str, text: str) -> None:
        ET.SubElement(parent, tag).text = _xml_text(text)

    # Plain tags under a default namespace declared by hand: ElementTree's own
    # default_namespace refuses the unqualified version attribute, and
    # register_namespace would change every other caller's output.
    playlist = ET.Element("playlist", version="1", xmlns=XSPF_NAMESPACE)
    if title:
        element(playlist, "title", _one_line(title))
    element(playlist, "creator", CREATOR)
    track_list = ET.SubElement(playlist, "trackList")
    for entry in entries:
        track = ET.SubElement(track_list, "track")
        element(track, "location", location(entry, relative_to, uri=True))
        element(track, "title", _one_line(entry.title))  # the schema's order: location, title, creator, duration
        element(track, "creator", _one_line(entry.artist))
        if entry.duration_ms is not None:
            element(track, "duration", str(int(entry.duration_ms)))
    ET.indent(playlist)
    body = ET.tostring(playlist, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'


# -- the store and the file ----------------------------------------------------------


def read_entries(store, track_ids: Sequence[str]) -> list[Entry]:
    """The playlist entries of these tracks of the store, in the order given."""
    with store.connect() as con:
        rows = con.execute(sql.statement("playlist_entries", SQL_FILE), {"track_ids": list(track_ids)}).fetchall()
    by_id = {track_id: Entry(artist, title, duration_ms, path, link)
             for track_id, artist, title, duration_ms, path, link in rows}
    return [by_id[track_id] for track_id in track_ids if track_id in by_id]


def write_playlist(path: str | Path, entries: Sequence[Entry], title: str | None = None) -> Path:
    """Write ``entries`` to ``path`` in the format its suffix names, replacing
    any file there whole (a reader sees the old playlist or the new one)."""
    path = Path(path).expanduser()
    folder = path.absolute().parent.resolve()
    if playlist_format(path) == "xspf":
        text = xspf(entries, folder, title)
    else:
        text = m3u8(entries, folder)
    data = text.encode("utf-8")
    return write_atomically(path, lambda staged: staged.write_bytes(data))
