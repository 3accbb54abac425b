"""Beyond one seed: a path from one track to another, and a radio of several seeds.

``path`` walks from track A to track B through the latent space (Plexamp's
Sonic Adventure, AudioMuse-AI's song path): waypoints are spherically
interpolated between A's and B's normalised vectors, and each waypoint takes
the nearest track not used yet. ``radio`` interleaves the neighbourhoods of
several seeds into one longer list, with at most N tracks per artist.
Both keep the artist and album gaps (:class:`~sonufy_model.gaps.Gaps`) in
their own order: a track that would break a gap waits (a radio) or the next
nearest is taken (a path).

Both answer through :func:`sonufy_model.search.similar` (the index when there
is one, an exact scan otherwise); the algorithms themselves take a
``nearest`` function, so they are independent of how neighbours are found.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import polars as pl

import sql
from sonufy_model.gaps import NO_GAPS, Gaps, album_keys, with_album_keys
from sonufy_model.hubness import unit_rows, vectors_of
from sonufy_model.names import normalise_name

SQL_FILE = "journeys.sql"
# What a list row says about a track, whatever the list.
TRACK_COLUMNS = ("track_id", "artist", "title", "album", "preview_url")
SCORE_COLUMNS = ("cosine", "time_similarity", "frequency_similarity")

#: nearest(vector=..., track_id=..., k=..., exclude=...) -> rows best first
#: (TRACK_COLUMNS + SCORE_COLUMNS), never a track of ``exclude``.
Nearest = Callable[..., pl.DataFrame]


class JourneyError(ValueError):
    """A path or radio that cannot be made from these inputs; the message names them."""


# -- interpolation -------------------------------------------------------------


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """The point a fraction ``t`` of the way from ``a`` to ``b`` on the unit sphere.

    Falls back to a normalised linear mix when the two are (anti)parallel,
    where the great circle is undefined or every circle is one.
    """
    a, b = unit_rows(a), unit_rows(b)
    omega = math.acos(float(np.clip(a @ b, -1.0, 1.0)))
    if omega < 1e-6 or math.pi - omega < 1e-6:
        return unit_rows((1.0 - t) * a + t * b)
    return (math.sin((1.0 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


def waypoints(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` points from ``a`` (first) to ``b`` (last), evenly spaced in angle."""
    if steps < 2:
        raise JourneyError(f"a path needs at least 2 steps (A and B), got {steps}")
    return np.stack([slerp(a, b, i / (steps - 1)) for i in range(steps)])


def split_scores(query: np.ndarray, vector: np.ndarray) -> dict[str, float]:
    """Cosine of the whole vectors, of the time halves and of the frequency halves."""
    half = len(vector) // 2

    def cosine(x: np.ndarray, y: np.ndarray) -> float:
        return float(unit_rows(x) @ unit_rows(y))

    return {
        "cosine": cosine(query, vector),
        "time_similarity": cosine(query[:half], vector[:half]),
        "frequency_similarity": cosine(query[half:], vector[half:]),
    }


# -- the algorithms, over any nearest-neighbour function --------------------------


def walk(
    a: dict, b: dict, vector_a: np.ndarray, vector_b: np.ndarray, steps: int, nearest: Nearest,
    gaps: Gaps = NO_GAPS,
) -> list[dict]:
    """The path's rows: A, then the nearest unused track to each inner waypoint, then B.

    ``a`` and ``b``: the end tracks' rows (TRACK_COLUMNS). Each row gets
    ``step`` (0..steps-1), ``position`` (the waypoint's fraction of the way)
    and the scores against its waypoint. With ``gaps``, an inner step takes the
    nearest unused track that keeps them with the steps before it and with B
    (A and B are kept as named); rows then carry ``album_key`` for the album gap.
    """
    if a["track_id"] == b["track_id"]:
        raise JourneyError(f"A and B are the same track ({a['track_id']}): a path needs two tracks")
    points = waypoints(np.asarray(vector_a, np.float64), np.asarray(vector_b, np.float64), steps)
    used = [a["track_id"], b["track_id"]]
    rows = [{**a, **split_scores(points[0], vector_a)}]
    for step, point in enumerate(points[1:-1], start=1):
        row = _nearest_fitting(nearest, point, used, gaps, rows, b, steps - 1 - step)
        if row is None and not gaps:
            raise JourneyError(
                f"the latent space has only {len(rows) + 1} tracks to walk through: "
                f"fewer than the {steps} steps asked for"
            )
        if row is None:
            raise JourneyError(
                f"no track is left for step {step} of {steps - 1} that keeps "
                + " and ".join(f"--{name}-gap {gap}" for name, gap in (("artist", gaps.artist), ("album", gaps.album))
                               if gap)
                + ": ask for fewer steps or a smaller gap"
            )
        used.append(row["track_id"])
        rows.append({name: row.get(name) for name in (*TRACK_COLUMNS, *SCORE_COLUMNS, "album_key")})
    rows.append({**b, **split_scores(points[-1], vector_b)})
    for step, row in enumerate(rows):
        row["step"] = step
        row["position"] = step / (steps - 1)
    return rows


def _nearest_fitting(nearest: Nearest, point: np.ndarray, used: list[str], gaps: Gaps, before: list[dict],
                     after: dict, after_distance: int) -> dict | None:
    """The nearest track to ``point`` not in ``used`` that keeps ``gaps`` (None: none is left)."""
    k = 1 if not gaps else 8
    while True:
        found = nearest(vector=point, k=k, exclude=tuple(used))
        for row in found.iter_rows(named=True):
            if gaps.fits(row, before, after, after_distance):
                return row
        if found.height < k:
            return None
        k *= 4


def interleave(
    seeds: Sequence[dict], n: int, max_per_artist: int | None, nearest: Nearest, batch: int | None = None,
    gaps: Gaps = NO_GAPS,
) -> list[dict]:
    """A radio list: the seeds' neighbourhoods in turn, best first, until ``n`` tracks.

    No track twice, no seed, at most ``max_per_artist`` tracks of one artist
    (None: no cap; artists compared without case, accents or punctuation). Each row says which seed it came
    from. With ``gaps``, a seed's best track that would break one waits for a
    later turn, and its next best that keeps them is taken. A seed whose
    neighbours run out (a small space, a strict cap) drops out; the list is
    shorter than ``n`` only when every seed has run out, or no seed has a
    track left that keeps the gaps.
    """
    if n < 1:
        raise JourneyError(f"a radio needs at least 1 track, got n={n}")
    if max_per_artist is not None and max_per_artist < 1:
        raise JourneyError(f"max_per_artist must be at least 1, got {max_per_artist}")
    seed_ids = tuple(seed["track_id"] for seed in seeds)
    if not seed_ids:
        raise JourneyError("a radio needs at least one seed")
    batch = batch or max(10, 2 * math.ceil(n / len(seed_ids)))
    queues: dict[str, list[dict]] = {seed: [] for seed in seed_ids}
    seen: dict[str, set[str]] = {seed: set() for seed in seed_ids}
    asked: dict[str, int] = dict.fromkeys(seed_ids, batch)
    exhausted: set[str] = set()
    used: set[str] = set()
    per_artist: dict[str, int] = {}
    rows: list[dict] = []

    def refill(seed: str) -> None:
        k = asked[seed]
        found = nearest(track_id=seed, k=k, exclude=seed_ids + tuple(sorted(seen[seed] | used)))
        fresh = [row for row in found.iter_rows(named=True) if row["track_id"] not in seen[seed]]
        seen[seed].update(row["track_id"] for row in fresh)
        queues[seed].extend(fresh)
        asked[seed] = 2 * k
        if found.height < k or not fresh:
            exhausted.add(seed)

    def take(seed: str) -> dict | None:
        queue = queues[seed]
        while True:
            i = 0
            while i < len(queue):
                row = queue[i]
                if row["track_id"] in used or (
                        max_per_artist is not None
                        and per_artist.get(normalise_name(row["artist"]), 0) >= max_per_artist):
                    del queue[i]  # for good: neither comes back
                elif gaps.fits(row, rows):
                    return queue.pop(i)
                else:
                    i += 1  # waits: it may keep the gaps on a later turn
            if seed in exhausted:
                return None
            refill(seed)

    seed_names = {seed["track_id"]: f"{seed['artist']} - {seed['title']}" for seed in seeds}
    while len(rows) < n:
        took = False
        for seed in seed_ids:
            if len(rows) >= n:
                break
            row = take(seed)
            if row is None:
                continue
            took = True
            used.add(row["track_id"])
            artist = normalise_name(row["artist"])
            per_artist[artist] = per_artist.get(artist, 0) + 1
            rows.append(
                {name: row.get(name) for name in (*TRACK_COLUMNS, *SCORE_COLUMNS, "album_key")}
                | {"seed_track_id": seed, "seed": seed_names[seed]}
            )
        if not took:
            break
    return rows


# -- against the store -------------------------------------------------------------


def _tracks(store, queries: Sequence[str]) -> list[dict]:
    """Each query's track (id or "artist - title"), with TRACK_COLUMNS."""
    found = [store.find_track(query)["track_id"] for query in queries]
    with store.connect(read_only=True) as con:
        frame = con.execute(sql.statement("journey_tracks", SQL_FILE), {"track_ids": found}).pl()
    rows = {row["track_id"]: row for row in frame.iter_rows(named=True)}
    return [rows[track_id] for track_id in found]


def _nearest(store, filters) -> Nearest:
    """Neighbours through the search, with ``filters`` but their gaps, which
    the list keeps in its own order; with an album gap, rows carry ``album_key``."""
    from sonufy_model import search

    filters = filters or search.SearchFilters()
    album_gap = filters.album_gap

    def nearest(*, k: int, exclude: Sequence[str], vector=None, track_id=None) -> pl.DataFrame:
        wanted = replace(filters, exclude_track_ids=tuple(filters.exclude_track_ids) + tuple(exclude),
                         artist_gap=0, album_gap=0)
        found = search.similar(store, track_id=track_id, vector=vector, k=k, filters=wanted)
        return with_album_keys(store, found) if album_gap else found

    return nearest


def _gaps(filters) -> Gaps:
    return Gaps(filters.artist_gap, filters.album_gap) if filters is not None else NO_GAPS


PATH_SCHEMA = {
    "step": pl.Int64, "position": pl.Float64,
    **{name: pl.String for name in TRACK_COLUMNS},
    **{name: pl.Float64 for name in SCORE_COLUMNS},
}
RADIO_SCHEMA = {
    **{name: pl.String for name in TRACK_COLUMNS},
    **{name: pl.Float64 for name in SCORE_COLUMNS},
    "seed_track_id": pl.String, "seed": pl.String,
}


def path(store, a: str, b: str, steps: int, filters=None) -> pl.DataFrame:
    """``steps`` tracks walking from A to B (ids or "artist - title"), A first, B last.

    Scores are against each step's waypoint; ``filters`` (a
    :class:`~sonufy_model.search.SearchFilters`) apply to the inner steps, and
    its gaps to the whole path (A and B are kept as named).
    """
    if steps < 2:
        raise JourneyError(f"--steps {steps}: a path needs at least 2 steps (A and B)")
    # Before any work: each step is a different track, and a waypoint is
    # made for every step, so a count past the space would only use memory.
    from sonufy_model.search import space_size

    size = space_size(store)
    if steps > size:
        raise JourneyError(f"--steps {steps}: the latent space has only {size} tracks, and a path visits each "
                           "at most once")
    start, end = _tracks(store, [a, b])
    vector_a, vector_b = vectors_of(store, [start["track_id"], end["track_id"]])
    gaps = _gaps(filters)
    if gaps.album:
        keys = album_keys(store, [start["track_id"], end["track_id"]])
        start, end = ({**row, "album_key": keys.get(row["track_id"])} for row in (start, end))
    try:
        rows = walk(start, end, vector_a, vector_b, steps, _nearest(store, filters), gaps)
    except JourneyError as error:
        if filters is None or not filters.relational or "tracks to walk through" not in str(error):
            raise
        raise JourneyError(f"{error}, once the filters have left tracks out") from None
    return pl.DataFrame([{name: row[name] for name in PATH_SCHEMA} for row in rows], schema=PATH_SCHEMA)


def radio(
    store, seeds: Sequence[str], n: int = 30, max_per_artist: int | None = 2, filters=None
) -> pl.DataFrame:
    """Up to ``n`` tracks from the neighbourhoods of ``seeds`` (ids or "artist - title"), in turn.

    No repeats, no seed, at most ``max_per_artist`` tracks per artist, and
    ``filters``' gaps kept along the list. A seed named twice counts once.
    """
    resolved = list({row["track_id"]: row for row in _tracks(store, seeds)}.values())
    from sonufy_model.search import space_size

    # Up to n: never more than the space's other tracks, whatever n says.
    n = min(n, max(1, space_size(store) - len(resolved)))
    rows = interleave(resolved, n, max_per_artist, _nearest(store, filters), gaps=_gaps(filters))
    return pl.DataFrame([{name: row[name] for name in RADIO_SCHEMA} for row in rows], schema=RADIO_SCHEMA)
