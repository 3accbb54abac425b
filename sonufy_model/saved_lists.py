"""Saved lists: a radio's recipe kept in the store, made again by every nightly.

``sonufy playlist save NAME --radio SEED...`` keeps the recipe (the seeds as
track ids, the length, the artist cap, every filter: the exclusion file's
path, the duration bounds, the gaps) and where the list goes (a playlist
file, a Spotify playlist) in the table ``saved_playlists``, with the list it
made. The nightly, once new tracks are encoded, makes each list again
(:func:`refresh_all`): new tracks can join, the radio's rules hold (no
repeats, no seed, the cap, the gaps), the file is replaced whole and the
Spotify playlist's items replaced; what each list gained and lost is said.
A list that cannot be made (a seed gone from the latent space, the
exclusion file gone) or delivered (no Spotify login) keeps its last tracks
and carries its problem: the other lists are refreshed all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

import sql
from sonufy_model.errors import ServiceError
from sonufy_model.journeys import JourneyError, radio
from sonufy_model.playlists import PlaylistError, read_entries, write_playlist
from sonufy_model.search import SearchFilters, read_exclusions
from sonufy_model.store import TrackNotFound

SQL_FILE = "playlists.sql"
_RECIPE_FIELDS = ("name", "seeds", "n", "max_per_artist", "exclude_file", "min_seconds", "max_seconds",
                  "artist_gap", "album_gap", "playlist_path", "spotify_name")


@dataclass(frozen=True)
class Recipe:
    """How a saved list is made (a radio of ``seeds``, track ids) and where it goes."""

    name: str
    seeds: tuple[str, ...]
    n: int = 30
    max_per_artist: int | None = 2
    exclude_file: str | None = None
    min_seconds: float | None = None
    max_seconds: float | None = None
    artist_gap: int = 0
    album_gap: int = 0
    playlist_path: str | None = None
    spotify_name: str | None = None

    @property
    def title(self) -> str:
        return f"{self.name} (Sonufy radio, refreshed nightly)"

    def filters(self) -> SearchFilters:
        """The radio's filters, the exclusion file read now (an OSError when it is gone)."""
        exclude = read_exclusions(self.exclude_file) if self.exclude_file else ()
        return SearchFilters(exclude=exclude, min_seconds=self.min_seconds, max_seconds=self.max_seconds,
                             artist_gap=self.artist_gap, album_gap=self.album_gap)


@dataclass(frozen=True)
class Saved:
    """A saved list: its recipe, the list it made last, and the last refresh's problem."""

    recipe: Recipe
    track_ids: tuple[str, ...]
    saved_at: object = None
    refreshed_at: object = None
    problem: str | None = None


@dataclass
class Refreshed:
    """What one nightly refresh did to a saved list."""

    name: str
    tracks: int
    added: list[str] = field(default_factory=list)  # "artist - title", in the list's order
    removed: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)  # the file written, the Spotify playlist
    problem: str | None = None


def make(store, recipe: Recipe) -> pl.DataFrame:
    """The list ``recipe`` makes now (a :func:`~sonufy_model.journeys.radio`)."""
    return radio(store, recipe.seeds, recipe.n, recipe.max_per_artist, filters=recipe.filters())


# -- the table -------------------------------------------------------------------------------


def save(store, recipe: Recipe, track_ids: Sequence[str]) -> None:
    """Keep ``recipe`` (replacing a saved list of that name) with the list it made."""
    values = {name: getattr(recipe, name) for name in _RECIPE_FIELDS}
    with store.transaction() as con:
        con.execute(sql.statement("saved_playlist_save", SQL_FILE),
                    {**values, "seeds": list(recipe.seeds), "track_ids": list(track_ids)})


def saved(store, name: str | None = None) -> list[Saved]:
    """The saved lists (or the one called ``name``), by name; none in a store older than the table."""
    with store.connect() as con:
        if not con.execute(sql.statement("saved_playlists_exist", SQL_FILE)).fetchone()[0]:
            return []
        rows = con.execute(sql.statement("saved_playlists_all", SQL_FILE), {"name": name}).pl()
    found = []
    for row in rows.iter_rows(named=True):
        recipe = Recipe(**{key: row[key] for key in _RECIPE_FIELDS if key != "seeds"}, seeds=tuple(row["seeds"]))
        found.append(Saved(recipe, tuple(row["track_ids"]), row["saved_at"], row["refreshed_at"], row["problem"]))
    return found


def delete(store, name: str) -> bool:
    """Forget the saved list ``name`` (its file and Spotify playlist stay); whether there was one."""
    with store.transaction() as con:
        return bool(con.execute(sql.statement("saved_playlist_delete", SQL_FILE), {"name": name}).fetchall())


# -- delivering and refreshing ---------------------------------------------------------------


def deliver(store, recipe: Recipe, track_ids: Sequence[str], spotify_settings=None,
            done: list[str] | None = None) -> list[str]:
    """The list written to the recipe's file and sent to its Spotify playlist
    (with ``spotify_settings``, or what it returns when it is a function,
    called after the file is written); a line for each, saying what was
    done, appended to ``done`` as it is done (what was done before a failure
    stays said)."""
    done = [] if done is None else done
    if recipe.playlist_path:
        entries = read_entries(store, track_ids)
        write_playlist(recipe.playlist_path, entries, recipe.title)
        done.append(f"{len(entries)} tracks written to {recipe.playlist_path}")
    if callable(spotify_settings) and recipe.spotify_name:
        spotify_settings = spotify_settings()
    if recipe.spotify_name and spotify_settings is not None:
        from sonufy_model import spotify_user

        uris, skipped = spotify_user.spotify_uris(store, track_ids)
        if uris:
            done.append(spotify_user.push_playlist(spotify_settings, recipe.spotify_name, uris, skipped,
                                                   description=recipe.title).summary())
        else:
            done.append(f"none of the {len(track_ids)} tracks has a Spotify id: nothing sent to Spotify")
    return done


def refresh_all(store, spotify_settings: Callable[[], object] | None = None) -> list[Refreshed]:
    """Every saved list made again, delivered, and recorded; what each gained
    and lost. ``spotify_settings`` gives the settings to push with (called
    once, when a list goes to Spotify). A list's problem is recorded and
    reported; it never stops the others."""
    settings: list = []

    def spotify():
        if not settings:
            settings.append(spotify_settings() if spotify_settings is not None else None)
        return settings[0]

    return [_refresh(store, one, spotify) for one in saved(store)]


def _refresh(store, one: Saved, spotify: Callable[[], object]) -> Refreshed:
    recipe = one.recipe
    try:
        rows = make(store, recipe)
    except TrackNotFound:
        gone = ", ".join(seed for seed in recipe.seeds if not _in_space(store, seed))
        return _failed(store, recipe, one, f"seed {gone} is no longer in the latent space: the list keeps its "
                                           "last tracks; save it again with other seeds")
    except (JourneyError, ValueError, OSError) as error:  # OSError, UnicodeDecodeError: the exclusion file
        return _failed(store, recipe, one, f"{type(error).__name__}: {error}")
    track_ids = rows["track_id"].to_list()
    before = set(one.track_ids)
    gone = [track_id for track_id in one.track_ids if track_id not in set(track_ids)]
    done = Refreshed(recipe.name, len(track_ids),
                     added=[f"{row['artist']} - {row['title']}" for row in rows.iter_rows(named=True)
                            if row["track_id"] not in before],
                     removed=_names(store, gone))
    try:
        deliver(store, recipe, track_ids, spotify, done.delivered)
    except (PlaylistError, OSError, ValueError, ServiceError) as error:  # ServiceError: login, rate limit, network
        done.problem = f"not delivered: {error}"
    _record(store, recipe.name, track_ids, done.problem)
    return done


def _names(store, track_ids: Sequence[str]) -> list[str]:
    """Each track as "artist - title", or its id and that it is gone when the store no longer has it."""
    with store.connect() as con:
        rows = con.execute(sql.statement("playlist_entries", SQL_FILE), {"track_ids": list(track_ids)}).fetchall()
    names = {row[0]: f"{row[1]} - {row[2]}" for row in rows}
    return [names.get(track_id, f"{track_id} (no longer in the store)") for track_id in track_ids]


def _in_space(store, track_id: str) -> bool:
    try:
        store.find_track(track_id)
    except TrackNotFound:
        return False
    return True


def _failed(store, recipe: Recipe, one: Saved, problem: str) -> Refreshed:
    _record(store, recipe.name, None, problem)
    return Refreshed(recipe.name, len(one.track_ids), problem=problem)


def _record(store, name: str, track_ids: Sequence[str] | None, problem: str | None) -> None:
    with store.transaction() as con:
        con.execute(sql.statement("saved_playlist_refreshed", SQL_FILE),
                    {"name": name, "track_ids": None if track_ids is None else list(track_ids),
                     "problem": problem})
