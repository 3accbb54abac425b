"""The artist and album gaps: no artist (album) again within N tracks of a list.

A list's order is its own: a radio interleaves its seeds, a path walks from A
to B, a ranked list goes down by score. Each keeps the gaps as it is made,
asking :meth:`Gaps.fits` before it places a track: in a radio or a ranked
list a track that would break one waits for a later place, a path's step
takes the nearest track that keeps them. SQL keeps them the same way down a
ranked list (``artist_gap`` and ``album_gap`` of ``similar_to_vector``,
sql/search.sql). Artists are compared without case, accents or punctuation
(SQL: without case or accents); albums by their key in the store (the album's
id, else its artist and name: ``search_album_key``), and a track without an
album is in no album's gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

import sql
from sonufy_model.names import normalise_name

SQL_FILE = "journeys.sql"


@dataclass(frozen=True)
class Gaps:
    """``artist``: no artist again within this many tracks after it; ``album`` likewise (0: no gap)."""

    artist: int = 0
    album: int = 0

    def __post_init__(self) -> None:
        for name in ("artist", "album"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}_gap must be a whole number, 0 or more, got {value!r}")

    def __bool__(self) -> bool:
        return self.artist > 0 or self.album > 0

    def fits(self, row: dict, before: Sequence[dict], after: dict | None = None, after_distance: int = 0) -> bool:
        """Whether ``row`` may come next after ``before`` (the list so far, in
        order), with ``after`` already fixed ``after_distance`` places after it
        (a path's B). Rows have ``artist``, and ``album_key`` for the album gap."""
        if self.artist:
            artist = normalise_name(row["artist"])
            near = [*before[-self.artist:], *([after] if after and after_distance <= self.artist else [])]
            if any(normalise_name(other["artist"]) == artist for other in near):
                return False
        if self.album and row.get("album_key") is not None:
            near = [*before[-self.album:], *([after] if after and after_distance <= self.album else [])]
            if any(other.get("album_key") == row["album_key"] for other in near):
                return False
        return True

    def space_out(self, rows: Sequence[dict], k: int) -> list[dict]:
        """A ranked list with the gaps kept, up to ``k`` rows: each place takes
        the best-ranked row not placed yet that keeps them (a row that would
        break one waits for a later place), as ``similar_to_vector`` does."""
        pending, kept = list(rows), []
        while len(kept) < k:
            fitting = next((i for i, row in enumerate(pending) if self.fits(row, kept)), None)
            if fitting is None:
                break
            kept.append(pending.pop(fitting))
        return kept


NO_GAPS = Gaps()


def album_keys(store, track_ids: Sequence[str]) -> dict[str, str | None]:
    """Each track's album key, as the album gap compares them (None: no album)."""
    from sonufy_model.search import reading_connection

    if not track_ids:
        return {}
    with reading_connection(store) as con:
        rows = con.execute(sql.statement("journey_album_keys", SQL_FILE), {"track_ids": list(track_ids)}).fetchall()
    return dict(rows)


def with_album_keys(store, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with each track's ``album_key``."""
    keys = album_keys(store, frame["track_id"].to_list())
    return frame.with_columns(
        pl.col("track_id").replace_strict(keys, default=None, return_dtype=pl.String).alias("album_key"))
