"""``sonufy playlist``: saved lists the nightly makes again, and the Spotify login for ``--to-spotify``."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from flows.cli.common import CommandError, add_db, open_store, paste_redirect


def add_playlist(commands) -> None:
    from flows.cli.query import add_radio_options

    playlist = commands.add_parser(
        "playlist",
        help="saved lists, made again by every nightly; the Spotify login for --to-spotify",
        description="Save a radio's recipe in the store: every nightly makes the list again (new tracks can "
        "join), replaces its playlist file and its Spotify playlist, and reports what changed.",
    )
    actions = playlist.add_subparsers(dest="action", required=True, metavar="ACTION")
    save = actions.add_parser(
        "save",
        help="make a radio now and keep its recipe: every nightly makes it again",
        description="Make the radio of the seeds now (as `sonufy radio` does), write its file and Spotify "
        "playlist, and keep the recipe under NAME (saving a NAME again replaces it).",
    )
    add_db(save)
    save.add_argument("name", metavar="NAME", help="the saved list's name")
    save.add_argument("--radio", dest="seeds", metavar="SEED", nargs="+", required=True,
                      help="the radio's seeds: track ids, or 'artist - title'")
    add_radio_options(save, refreshed=True)
    save.set_defaults(handler=_save)

    listing = actions.add_parser("list", help="the saved lists", description="The saved lists, by name.")
    add_db(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_list)

    show = actions.add_parser("show", help="a saved list: its recipe and its tracks",
                              description="A saved list's recipe, its tracks as last made, and its problem.")
    add_db(show)
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(handler=_show)

    delete = actions.add_parser("delete", help="forget a saved list (its file and Spotify playlist stay)",
                                description="Forget a saved list: the nightly stops making it. Its playlist "
                                "file and Spotify playlist are left as they are.")
    add_db(delete)
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(handler=_delete)

    login = actions.add_parser(
        "login",
        help="log in to Spotify for --to-spotify (the token is kept in a file only you can read)",
        description="Log in to your Spotify account with the Authorization Code flow with PKCE (scope "
        "playlist-modify-private): open the address printed, approve Sonufy, paste the address your browser "
        "is sent to. Needs SPOTIFY_CLIENT_ID; the token goes to SONUFY_SPOTIFY_TOKEN_FILE "
        "(default ~/.cache/sonufy/spotify-token.json), mode 0600.",
    )
    login.add_argument("--again", action="store_true", help="log in even when a login is saved")
    login.set_defaults(handler=_login)


def _save(args: argparse.Namespace) -> None:
    from flows.cli.common import half_names, print_tracks
    from flows.cli.query import _list_filters, _playlist_target, _spotify_target
    from sonufy_model import saved_lists

    if not args.name.strip():
        raise CommandError("NAME '': give the saved list a name")
    filters = _list_filters(args)  # checked before any work
    target = _playlist_target(args)
    reader = open_store(args.db)
    seeds = tuple(dict.fromkeys(reader.find_track(seed)["track_id"] for seed in args.seeds))
    spotify = _spotify_target(args)  # a login asked for once the rest is known to be good
    recipe = saved_lists.Recipe(
        name=args.name, seeds=seeds, n=args.n, max_per_artist=args.max_per_artist,
        exclude_file=str(Path(args.exclude_file).expanduser().resolve()) if args.exclude_file else None,
        min_seconds=filters["min_seconds"], max_seconds=filters["max_seconds"],
        artist_gap=filters["artist_gap"], album_gap=filters["album_gap"],
        playlist_path=str(target.absolute()) if target is not None else None, spotify_name=args.to_spotify,
    )
    rows = saved_lists.make(reader, recipe).to_dicts()
    track_ids = [row["track_id"] for row in rows]
    if args.json:
        print(json.dumps({"name": args.name, "seeds": list(seeds), "radio": rows}, indent=2, default=str))
    else:
        print_tracks(rows, recipe.title, halves=half_names(reader))
    for line in saved_lists.deliver(reader, recipe, track_ids, spotify):
        print(f"sonufy playlist save: {line}", file=sys.stderr)
    with _writer(args.db, "playlist save") as store:
        saved_lists.save(store, recipe, track_ids)
    print(f"sonufy playlist save: '{args.name}' saved ({len(track_ids)} tracks); every nightly makes it again",
          file=sys.stderr)


@contextmanager
def _writer(db: str, purpose: str):
    """The store, written under its writer lock and published for readers at the end."""
    from sonufy_model.config import Paths
    from sonufy_model.store import Store

    open_store(db)  # an existing store, or a clear error
    store = Store(Paths.for_db(db).db)
    with store.writer(purpose, store.lock_wait_s, publish=True) as busy:
        if busy:
            raise CommandError(f"{busy} for more than {store.lock_wait_s:g} s (SONUFY_DB_LOCK_WAIT_S)")
        yield store


def _described(one) -> dict:
    recipe = one.recipe
    return {**{name: getattr(recipe, name) for name in recipe.__dataclass_fields__}, "seeds": list(recipe.seeds),
            "tracks": len(one.track_ids), "saved_at": one.saved_at, "refreshed_at": one.refreshed_at,
            "problem": one.problem}


def _list(args: argparse.Namespace) -> None:
    from sonufy_model import saved_lists

    found = saved_lists.saved(open_store(args.db))
    if args.json:
        print(json.dumps([_described(one) for one in found], indent=2, default=str))
        return
    if not found:
        print("no saved list: `sonufy playlist save NAME --radio SEED...` makes one")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Saved lists (made again by every nightly)")
    for column in ("name", "seeds", "tracks", "refreshed", "goes to", "problem"):
        table.add_column(column)
    for one in found:
        recipe = one.recipe
        goes = [*([recipe.playlist_path] if recipe.playlist_path else []),
                *([f"Spotify: {recipe.spotify_name}"] if recipe.spotify_name else [])]
        table.add_row(recipe.name, str(len(recipe.seeds)), f"{len(one.track_ids)} of {recipe.n}",
                      str(one.refreshed_at or ""), "; ".join(goes), one.problem or "")
    Console(width=200).print(table)


def _show(args: argparse.Namespace) -> None:
    from sonufy_model import saved_lists
    from sonufy_model.playlists import read_entries

    store = open_store(args.db)
    found = saved_lists.saved(store, args.name)
    if not found:
        raise CommandError(f"no saved list {args.name!r}: `sonufy playlist list` shows them")
    one = found[0]
    tracks = [f"{entry.artist} - {entry.title}" for entry in read_entries(store, one.track_ids)]
    if args.json:
        print(json.dumps({**_described(one), "track_ids": list(one.track_ids), "titles": tracks},
                         indent=2, default=str))
        return
    for name, value in _described(one).items():
        if value not in (None, ""):
            print(f"{name}: {', '.join(value) if isinstance(value, list) else value}")
    for number, track in enumerate(tracks, start=1):
        print(f"{number:3d}. {track}")


def _delete(args: argparse.Namespace) -> None:
    from sonufy_model import saved_lists

    with _writer(args.db, "playlist delete") as store:
        if not saved_lists.delete(store, args.name):
            raise CommandError(f"no saved list {args.name!r}: `sonufy playlist list` shows them")
    print(f"saved list '{args.name}' deleted (its file and Spotify playlist are left as they are)")


def _login(args: argparse.Namespace) -> None:
    from sonufy_model.config import ServiceSettings
    from sonufy_model.spotify_user import ensure_login

    path = ensure_login(ServiceSettings.from_env(), ask=paste_redirect, again=args.again)
    print(f"logged in to Spotify; the token is kept in {path} (readable by you only)")
