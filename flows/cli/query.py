"""``sonufy recommend``, ``path``, ``radio`` and ``sql``: questions to a built store, read-only.

They start in a moment: what they need beyond argparse is imported when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from flows.cli.common import (
    CommandError,
    add_db,
    half_names,
    open_store,
    paste_redirect,
    positive_int,
    print_recommendations,
    print_tracks,
)


def add_recommend(commands) -> None:
    recommend = commands.add_parser(
        "recommend",
        help="top tracks that sound like a track",
        description="Print the tracks nearest to a seed by cosine similarity in the latent space: a "
        "catalog track, the first hit of a catalog search, or a local audio file.",
    )
    add_db(recommend)
    seed_kind = recommend.add_mutually_exclusive_group(required=True)
    seed_kind.add_argument("track", nargs="?", help="a track id, or 'artist - title'")
    seed_kind.add_argument("--search", metavar="QUERY",
                           help="a catalog search; its first hit is the seed (its preview is encoded on "
                           "the fly when it is not in the latent space)")
    seed_kind.add_argument("--file", metavar="PATH", help="a local audio file, encoded on the fly")
    recommend.add_argument("--source", choices=("standin", "spotify"), default="standin",
                           help="with --search: the catalog to search (default: standin, the demo "
                           "catalog; spotify: credentials from the environment)")
    recommend.add_argument("--tracks", type=positive_int, default=300,
                           help="with --search --source standin: the demo catalog's size (default: 300)")
    recommend.add_argument("--hub-reduction", action="store_true",
                           help="rank by mutual proximity, demoting tracks that are near everything")
    recommend.add_argument("-k", type=positive_int, default=10, help="how many (default: 10)")
    recommend.add_argument("--exclude-same-artist", action="store_true", help="no track by the seed's artist")
    recommend.add_argument("--exclude-same-album", action="store_true", help="no track from the seed's album")
    recommend.add_argument("--exclude-duplicates", action="store_true",
                           help="no other recording of the seed or of a listed track (same ISRC, or same "
                           "title and artist once '(Remastered)', '- Live' and the like are taken off)")
    recommend.add_argument("--min-popularity", type=int, metavar="N",
                           help="only tracks with popularity at least N (tracks without one pass)")
    recommend.add_argument("--max-per-artist", type=positive_int, metavar="N",
                           help="at most N tracks of one artist")
    recommend.add_argument("--exact", action="store_true",
                           help="scan every vector instead of probing the search index")
    _add_list_filters(recommend, "down the ranked list: a track that would repeat one waits for a later place")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_playlist(recommend)
    recommend.set_defaults(handler=_recommend)


def add_path(commands) -> None:
    path = commands.add_parser(
        "path",
        help="a list of tracks that walks from track A to track B through the latent space",
        description="Interpolate between A's and B's vectors and take, at each step, the nearest "
        "track not used yet: A first, B last, no repeats.",
    )
    add_db(path)
    path.add_argument("a", metavar="A", help="where to start: a track id, or 'artist - title'")
    path.add_argument("b", metavar="B", help="where to arrive: a track id, or 'artist - title'")
    path.add_argument("--steps", type=positive_int, default=10,
                      help="tracks in the list, A and B included (default: 10)")
    _add_list_filters(path, "along the path, B included: a step takes the nearest track that keeps it")
    path.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_playlist(path)
    path.set_defaults(handler=_path)


def add_radio(commands) -> None:
    radio = commands.add_parser(
        "radio",
        help="a longer list from several seed tracks, their neighbourhoods in turn",
        description="Interleave the nearest tracks of each seed: no repeats, no seed, at most "
        "--max-per-artist tracks of one artist.",
    )
    add_db(radio)
    radio.add_argument("seeds", metavar="SEED", nargs="+", help="a track id, or 'artist - title'")
    add_radio_options(radio)
    radio.set_defaults(handler=_radio)


def add_radio_options(sub: argparse.ArgumentParser, refreshed: bool = False) -> None:
    """A radio's options (``radio``'s, and ``playlist save``'s, whose
    exclusion file is read again at each nightly when ``refreshed``)."""
    sub.add_argument("-n", type=positive_int, default=30, help="how many tracks (default: 30)")
    sub.add_argument("--max-per-artist", type=positive_int, default=2, help="most tracks of one artist (default: 2)")
    _add_list_filters(sub, "along the radio: a seed's track that would repeat one waits for a later turn"
                      + ("; the exclusion file is read again at each refresh" if refreshed else ""))
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_playlist(sub)


def _add_list_filters(sub: argparse.ArgumentParser, where: str) -> None:
    """The filters listeners ask for: an exclusion list, duration bounds, the gaps."""
    sub.add_argument("--exclude-file", metavar="PATH",
                     help="never list a track whose artist, album, track id or 'artist - title' is a line of "
                     "this file (case-insensitive, trimmed; blank lines and # comments ignored)")
    sub.add_argument("--min-seconds", type=float, metavar="S",
                     help="only tracks at least S seconds long (a track of unknown duration passes)")
    sub.add_argument("--max-seconds", type=float, metavar="S",
                     help="only tracks at most S seconds long (a track of unknown duration passes)")
    sub.add_argument("--artist-gap", type=int, default=0, metavar="N",
                     help=f"no artist again within N tracks; {where} (default: 0, none)")
    sub.add_argument("--album-gap", type=int, default=0, metavar="N",
                     help="no album again within N tracks, likewise (default: 0, none)")


def _list_filters(args: argparse.Namespace) -> dict:
    """The SearchFilters fields of the list filter options, checked before any
    work: the exclusion file read, the bounds and gaps possible, each bad one named."""
    from sonufy_model.search import check_bounds, read_exclusions

    for option, value in (("--min-seconds", args.min_seconds), ("--max-seconds", args.max_seconds),
                          ("--artist-gap", args.artist_gap), ("--album-gap", args.album_gap)):
        if value is not None and not value >= 0:  # NaN too
            raise CommandError(f"{option} {value:g}: must be 0 or more")
    if args.min_seconds is not None and args.max_seconds is not None and args.min_seconds > args.max_seconds:
        raise CommandError(f"--min-seconds {args.min_seconds:g} is more than --max-seconds {args.max_seconds:g}: "
                           "no track fits")
    if args.max_seconds == float("inf"):
        args.max_seconds = None
    check_bounds(args.min_seconds, args.max_seconds, args.artist_gap, args.album_gap)
    exclude: tuple[str, ...] = ()
    if args.exclude_file is not None:
        try:
            exclude = read_exclusions(args.exclude_file)
        except FileNotFoundError:
            raise CommandError(f"--exclude-file {args.exclude_file}: no such file") from None
        except IsADirectoryError:
            raise CommandError(f"--exclude-file {args.exclude_file}: is a folder, not a file") from None
        except UnicodeDecodeError as error:
            raise CommandError(f"--exclude-file {args.exclude_file}: not UTF-8 text ({error.reason} at byte "
                               f"{error.start})") from None
        except OSError as error:
            raise CommandError(f"--exclude-file {args.exclude_file}: cannot be read ({error.strerror})") from None
    return {"exclude": exclude, "min_seconds": args.min_seconds, "max_seconds": args.max_seconds,
            "artist_gap": args.artist_gap, "album_gap": args.album_gap}


def _add_playlist(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--playlist", metavar="PATH",
                     help="also write the list as a playlist file: M3U8 (.m3u8, .m3u) or XSPF (.xspf); "
                     "an existing file is replaced")
    sub.add_argument("--to-spotify", metavar="NAME",
                     help="also send the list to a private playlist NAME in your Spotify account (made, or "
                     "its items replaced when Sonufy made it); logs in the first time (SPOTIFY_CLIENT_ID)")


def _spotify_target(args: argparse.Namespace):
    """--to-spotify's settings, logged in before any work (asking for the
    login on the terminal the first time), or None."""
    if args.to_spotify is None:
        return None
    if not args.to_spotify.strip():
        raise CommandError("--to-spotify '': give the playlist a name")
    from sonufy_model.config import ServiceSettings
    from sonufy_model.spotify_user import ensure_login

    settings = ServiceSettings.from_env()
    ensure_login(settings, ask=paste_redirect)
    return settings


def _push_to_spotify(settings, store, rows: list[dict], title: str, command: str, name: str) -> None:
    """The list in ``rows`` sent to the listener's Spotify playlist ``name`` (when asked)."""
    if settings is None:
        return
    from sonufy_model import spotify_user

    uris, skipped = spotify_user.spotify_uris(store, [row["track_id"] for row in rows])
    if not uris:
        print(f"sonufy {command}: none of the {len(rows)} tracks has a Spotify id (your own files): "
              "nothing sent to Spotify", file=sys.stderr)
        return
    pushed = spotify_user.push_playlist(settings, name, uris, skipped, description=title)
    print(f"sonufy {command}: {pushed.summary()}", file=sys.stderr)


def _playlist_target(args: argparse.Namespace):
    """--playlist's path, checked before any work (its suffix, its folder), or None."""
    if args.playlist is None:
        return None
    from sonufy_model.playlists import check_target

    try:
        return check_target(args.playlist)
    except ValueError as error:
        raise CommandError(f"--playlist {error}") from None


def _write_playlist(target, store, rows: list[dict], title: str, command: str) -> None:
    """The list in ``rows`` written to the --playlist file ``target`` (when given)."""
    if target is None:
        return
    from sonufy_model import playlists

    entries = playlists.read_entries(store, [row["track_id"] for row in rows])
    playlists.write_playlist(target, entries, title)
    print(f"sonufy {command}: playlist of {len(entries)} tracks written to {target}", file=sys.stderr)


def add_sql(commands) -> None:
    sql_shell = commands.add_parser(
        "sql",
        help="ad-hoc SQL on the store, read-only, with its views and macros (latent, similar_to)",
        description="Open the DuckDB shell on the store, read-only (our own small shell where the duckdb "
        "binary is not installed), or run the statements of -c and print their results.",
    )
    add_db(sql_shell)
    sql_shell.add_argument("-c", dest="sql", metavar="SQL", help="statements to run (';' between them), then exit")
    sql_shell.set_defaults(handler=_sql)


def _seed(args: argparse.Namespace, store):
    """The recommend command's seed: a catalog track, a search's first hit, or a file."""
    from sonufy_model import query_audio

    if args.file is not None:
        return query_audio.seed_from_file(store, args.file)
    if args.search is None:
        return query_audio.seed_from_track(store, args.track)
    if args.source == "spotify":
        from sonufy_model.config import ServiceSettings

        return query_audio.seed_from_search(store, ServiceSettings.from_env(), args.search)
    from flows.sources import open_source
    from sonufy_model.config import Paths

    # The demo catalog the build scraped: same size, same rendered previews.
    cache = Paths.for_db(args.db).data_dir / "standin-cache"
    with open_source("standin", args.tracks, cache_dir=cache if cache.is_dir() else None) as origin:
        return query_audio.seed_from_search(store, origin.settings, args.search)


def _recommend(args: argparse.Namespace) -> None:
    from sonufy_model import query_audio

    if args.search is None and args.source != "standin":
        raise CommandError("--source applies to --search only")
    filters = _search_filters(args)
    target = _playlist_target(args)
    store = open_store(args.db)
    spotify = _spotify_target(args)
    seed = _seed(args, store)
    rows = query_audio.recommend(
        store, seed, args.k, filters=filters, hub_reduction=args.hub_reduction,
        use_index=not args.exact,
    ).to_dicts()
    if seed.warning and not args.json:
        print(f"sonufy recommend: warning: {seed.warning}", file=sys.stderr)
    print_recommendations(rows, seed.label, args.json,
                          {"seed_kind": seed.kind, "seed_track_id": seed.track_id, "seed_warning": seed.warning,
                           "hub_reduction": args.hub_reduction}, half_names(store))
    _write_playlist(target, store, rows, f"Sounds like: {seed.label}", "recommend")
    _push_to_spotify(spotify, store, rows, f"Sounds like: {seed.label}", "recommend", args.to_spotify)


def _search_filters(args: argparse.Namespace):
    """The search filters a command's filter options ask for (absent options: the
    defaults), checked before any work."""
    from sonufy_model.search import SearchFilters

    defaults = SearchFilters()
    return SearchFilters(**{
        name: getattr(args, name, getattr(defaults, name))
        for name in ("exclude_same_artist", "exclude_same_album", "exclude_duplicates",
                     "min_popularity", "max_per_artist")
    }, **_list_filters(args))


def _path(args: argparse.Namespace) -> None:
    from sonufy_model.journeys import path

    filters = _search_filters(args)
    target = _playlist_target(args)
    store = open_store(args.db)
    spotify = _spotify_target(args)
    rows = path(store, args.a, args.b, args.steps, filters=filters).to_dicts()
    title = f"From {rows[0]['artist']} - {rows[0]['title']} to {rows[-1]['artist']} - {rows[-1]['title']}"
    if args.json:
        print(json.dumps({"a": rows[0]["track_id"], "b": rows[-1]["track_id"], "steps": args.steps,
                          "path": rows}, indent=2, default=str))
    else:
        print_tracks(rows, title, first="step", halves=half_names(store),
                     notes=("scores: against each step's point on the way from A to B",))
    _write_playlist(target, store, rows, title, "path")
    _push_to_spotify(spotify, store, rows, title, "path", args.to_spotify)


def _radio(args: argparse.Namespace) -> None:
    from sonufy_model.journeys import radio

    # The radio's own --max-per-artist caps the list it interleaves, not each seed's neighbours.
    filters = replace(_search_filters(args), max_per_artist=None)
    target = _playlist_target(args)
    store = open_store(args.db)
    spotify = _spotify_target(args)
    rows = radio(store, args.seeds, args.n, args.max_per_artist, filters=filters).to_dicts()
    notes = () if len(rows) == args.n else (
        f"only {len(rows)} tracks: the seeds' neighbourhoods ran out"
        + (" of tracks the filters let through" if filters.relational else ""),)
    if args.json:
        print(json.dumps({"seeds": args.seeds, "n": args.n, "max_per_artist": args.max_per_artist,
                          "radio": rows}, indent=2, default=str))
    else:
        print_tracks(rows, f"Radio from {len(args.seeds)} seed(s)", notes=notes, halves=half_names(store))
    title = f"Radio from {', '.join(args.seeds)}"
    _write_playlist(target, store, rows, title, "radio")
    _push_to_spotify(spotify, store, rows, title, "radio", args.to_spotify)


def _sql(args: argparse.Namespace) -> int:
    from sonufy_model import shell

    store = open_store(args.db)
    return shell.run(store, args.sql) if args.sql is not None else shell.shell(store)
