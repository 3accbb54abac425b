"""``sonufy nightly``, ``landscape``, ``gc`` and ``standin``: keeping a store and its
surroundings running."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.cli.common import CommandError, add_db, open_store, positive_int


def add_landscape(commands) -> None:
    landscape = commands.add_parser(
        "landscape",
        help="the sonic landscape: a map of every track (PNG) and an interactive page (HTML)",
        description="Give every track of the current model a point in its UMAP landscape (fitted once "
        "per model version and saved beside it; new tracks are placed by the fitted model), refit the "
        "artist and genre landscapes, and write landscape.png and landscape.html.",
    )
    add_db(landscape)
    landscape.add_argument("--out", metavar="DIR",
                           help="where the two files go (default: DB.data/landscape, where the build puts them)")
    landscape.add_argument("--color-by", choices=("auto", "genre", "folder", "album", "artist", "year", "source"),
                           default="auto",
                           help="the label that colours the points (default: auto, the label with 2 to 40 values "
                           "that paints most tracks in distinct, evenly used colours; the page can switch)")
    landscape.add_argument("--n-neighbors", type=positive_int,
                           help="UMAP n_neighbors, clipped below the number of tracks (default: about the square "
                           "root of the number of tracks, within 10..500); other than the saved fit's, it refits")
    landscape.add_argument("--min-dist", type=float,
                           help="UMAP min_dist in [0, 1] (default: 0.1); other than the saved fit's, it refits")
    landscape.add_argument("--refit", action="store_true",
                           help="fit the landscape anew instead of placing new tracks with the saved fit")
    landscape.set_defaults(handler=_landscape)


def add_nightly(commands) -> None:
    nightly = commands.add_parser(
        "nightly",
        help="add new tracks to the current latent space (what the nightly-refresh deployment runs)",
        description="Run the nightly refresh: tag:new and the given queries (or a folder's new and "
        "changed files), fetched, converted, checked and encoded with the current model; no retraining. "
        "A second one on the same database exits at once, doing nothing.",
    )
    add_db(nightly)
    nightly.add_argument("--source", default="standin", help="'standin', 'spotify' or 'folder:PATH' (default: standin)")
    nightly.add_argument("--query", action="append", dest="queries", metavar="Q",
                         help="a search query to scrape besides tag:new (repeatable)")
    nightly.add_argument("--tracks", type=positive_int, default=300,
                         help="the stand-in's catalog size, as built (default: 300)")
    nightly.add_argument("--new-tracks", type=int, default=0,
                         help="new releases the stand-in's catalog has gained since (default: 0)")
    nightly.add_argument("--wait", type=float, default=0.0, metavar="S",
                         help="seconds to wait for a nightly already running (default: 0)")
    nightly.set_defaults(handler=_nightly)


def add_gc(commands) -> None:
    gc = commands.add_parser(
        "gc",
        help="remove orphan spectrogram shards, rejected candidates' checkpoints and old reports",
        description="Delete what the store no longer points at: shards no row names (a killed run's), "
        "the vectors of versions never current, not current and not pending (a retrain killed before "
        "deciding on its candidate), the model folders of versions neither current nor pending and without "
        "vectors (and of trainings killed before registering theirs), and Great "
        "Expectations reports beyond the most recent runs; print how much was freed.",
    )
    add_db(gc)
    gc.add_argument("--keep-reports", type=int, default=20, metavar="N",
                    help="validation runs whose reports stay, the most recent (default: 20)")
    gc.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    gc.set_defaults(handler=_gc)


def add_standin(commands) -> None:
    standin = commands.add_parser(
        "standin",
        help="run the local Spotify/Deezer stand-in in the foreground",
        description="Serve the demo catalog with Spotify's and Deezer's API on 127.0.0.1.",
    )
    standin.add_argument("--port", type=int, default=8765)
    standin.add_argument("--tracks", type=positive_int, default=300)
    standin.set_defaults(handler=_standin)


def _nightly(args: argparse.Namespace) -> None:
    from flows.nightly import nightly_refresh
    from flows.sources import parse_source

    parse_source(args.source)  # a bad --source fails here, before any flow starts
    result = nightly_refresh(source=args.source, db=args.db, queries=args.queries,
                             demo_tracks=args.tracks, demo_new_tracks=args.new_tracks,
                             wait_for_running_s=args.wait)
    print(json.dumps(result, indent=2, default=str))


def _landscape(args: argparse.Namespace) -> None:
    from sonufy_model import landscape
    from sonufy_model.config import Paths
    from sonufy_model.outputs import writable_dir
    from sonufy_model.store import Store

    if not Path(args.db).is_file():
        raise CommandError(f"--db {args.db}: no such file; run `sonufy build` first")
    params = None
    if args.n_neighbors is not None or args.min_dist is not None:
        default = landscape.TRACK_PARAMS
        params = landscape.UmapParams(
            n_neighbors=args.n_neighbors or default.n_neighbors,
            min_dist=default.min_dist if args.min_dist is None else args.min_dist,
        )
    paths = Paths.for_db(args.db)
    # Before the fit: a bad --out fails at once, not after the work.
    out_dir = writable_dir(Path(args.out) if args.out else paths.data_dir / "landscape")
    store = Store(paths.db)
    with store.writer("landscape", store.lock_wait_s, publish=True) as busy:  # one writer per store: waits for another
        if busy:
            raise CommandError(f"{busy} for more than {store.lock_wait_s:g} s (SONUFY_DB_LOCK_WAIT_S)")
        counts = landscape.update_landscape(store, paths.models, params=params, refit=args.refit)
        result = landscape.render(store, out_dir, color_by=args.color_by)
    done = ", ".join(f"{name} {value}" for name, value in counts.items()) or "every track already had a point"
    print(f"landscape of model {result['model_version']}: {result['tracks']} tracks ({done}), "
          f"coloured by {result['color_by']}" + (" (auto)" if result["color_auto"] else ""))
    print(result["png"])
    print(result["html"])


def _gc(args: argparse.Namespace) -> None:
    from sonufy_model import gc
    from sonufy_model.config import Paths
    from sonufy_model.store import Store

    open_store(args.db)  # an existing file, or a clear error
    paths = Paths.for_db(args.db)
    found = gc.collect(Store(paths.db), paths, keep_reports=args.keep_reports, dry_run=args.dry_run)
    for version, vectors in found.candidates.items():
        print(f"{'would delete' if args.dry_run else 'deleted'} the {vectors} vectors of {version}, "
              "a candidate never made current whose run was killed")
    for path in found.shards + found.checkpoints + found.reports:
        print(f"{'would remove' if args.dry_run else 'removed'} {path}")
    print(found.summary(args.dry_run))


def _standin(args: argparse.Namespace) -> int:
    from sonufy_demo.standin import main as standin_main

    return standin_main(["--port", str(args.port), "--tracks", str(args.tracks)])
