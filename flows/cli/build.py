"""``sonufy build`` and ``sonufy demo``: the build flow, from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows.cli.common import (
    CommandError,
    add_db,
    half_names,
    open_store,
    positive_float,
    positive_int,
    print_recommendations,
)
from sonufy_model.presets import PRESET_NAMES


def add_build(commands) -> None:
    build = commands.add_parser(
        "build",
        help="run the whole pipeline: scrape, fetch, spectrograms, check, train, encode, recommend",
        description="Run the build flow: scrape a catalog, fetch previews, compute and check "
        "spectrograms, train the autoencoder, encode every track into DuckDB, and print "
        "recommendations for one track.",
    )
    add_db(build)
    build.add_argument(
        "--source",
        default="standin",
        help="'standin' (the embedded demo catalog, default), 'spotify' (real APIs; credentials "
        "from SPOTIFY_CLIENT_ID/SPOTIFY_CLIENT_SECRET) or 'folder:PATH' (your own audio files)",
    )
    build.add_argument("--data-dir", help="where previews, spectrograms and models go (default: DB.data/)")
    build.add_argument("--query", action="append", dest="queries", metavar="Q",
                       help="a Spotify search query to scrape (repeatable; default: per source)")
    build.add_argument("--scrape-config", metavar="PATH",
                       help="a YAML file saying what to scrape: queries, album_ids, playlist_ids, "
                       "max_items_per_query (see deployments/scrape.yaml); --query adds to its queries")
    build.add_argument("--tracks", type=positive_int, default=300,
                       help="size of the demo catalog for --source standin (default: 300)")
    build.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                       help="processes computing spectrograms (default: 2)")
    build.add_argument("--train-minutes", type=positive_float, default=5.0,
                       help="time box for training (default: 5)")
    build.add_argument("--epochs", type=positive_int,
                       help="most epochs to train (default: the preset's; the time box usually ends it first)")
    build.add_argument("--preset", choices=PRESET_NAMES, default=None,
                       help="the model: 'invariance' (default: learns what stays the same within a track) "
                       "or 'reference' (the seed's autoencoder)")
    build.add_argument("--excerpts", type=positive_int,
                       help="30 s clips analysed per file longer than that, vectors averaged (default: 2)")
    build.add_argument("--placement", choices=("middle", "spread"),
                       help="where those clips lie: side by side around the middle, or spread over the file "
                       "(default: spread)")
    build.add_argument("--preview-folder", metavar="PATH",
                       help="your own audio files, matched to catalog tracks by ISRC tag or artist + title "
                       "and used instead of downloading (tried first)")
    build.add_argument("--preview-sources", metavar="LIST",
                       help="preview sources in the order to try, comma-separated: spotify, deezer, folder "
                       "(default: spotify,deezer; folder first when --preview-folder is given)")
    build.add_argument("--drop-previews", action="store_true",
                       help="delete each downloaded mp3 once its spectrogram is stored (never your own files)")
    build.add_argument("--runner", choices=("threads", "dask"), default="threads",
                       help="where batches of spectrograms (and downloads) run: this machine's "
                       "worker processes, or a Dask cluster (default: threads)")
    build.add_argument("--dask-address", metavar="tcp://HOST:8786",
                       help="a running Dask scheduler; without it --runner dask starts a local cluster")
    build.add_argument("--retrain", action="store_true",
                       help="train a new model even if a current one exists")
    build.add_argument("--json", action="store_true", help="print the result as JSON")
    build.set_defaults(handler=_run_build)


def add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="build on the embedded demo catalog and show recommendations (what `make demo` runs)",
    )
    add_db(demo)
    demo.add_argument("--tracks", type=positive_int, default=300, help="demo catalog size (default: 300)")
    # The default model (the invariance preset) in the build's own 5-minute
    # box: a newcomer sees what `sonufy build` gives them (README, "How good is it?").
    demo.add_argument("--epochs", type=positive_int, help="most epochs to train (default: the preset's)")
    demo.add_argument("--train-minutes", type=positive_float, default=5.0,
                      help="time box for training (default: 5)")
    demo.add_argument("--preset", choices=PRESET_NAMES, default=None,
                      help="the model: 'invariance' (default) or 'reference' (the seed's autoencoder)")
    demo.set_defaults(handler=_run_demo)


def _run_build(args: argparse.Namespace) -> None:
    result = _build(args, args.source)
    note = _scan_note(result.get("counts", {}))
    if note:
        print(note, file=sys.stderr)
    rows = result["recommendations"]
    seed = rows[0]["seed"] if rows else "?"
    print_recommendations(rows, seed, args.json, halves=half_names(open_store(result["db"])))


def _run_demo(args: argparse.Namespace) -> None:
    result = _build(args, "standin")
    rows = result["recommendations"]
    print_recommendations(rows, rows[0]["seed"], False, halves=half_names(open_store(result["db"])))
    seed_id = rows[0]["seed_track_id"]
    print(f"\nDuckDB file: {result['db']}")
    print("Ask it yourself in the DuckDB shell:")
    print(f"  .venv/bin/sonufy sql --db {result['db']} -c \"SELECT * FROM similar_to('{seed_id}', 10)\"")


def _build(args: argparse.Namespace, source: str) -> dict:
    from flows.build import build
    from flows.runners import task_runner
    from flows.sources import parse_source

    kind, _ = parse_source(source)  # a bad --source fails here, before any flow starts
    scrape = _scrape_parameters(args, kind)  # and so does a bad --scrape-config
    if getattr(args, "runner", "threads") == "dask":
        build = build.with_options(
            task_runner=task_runner("dask", args.dask_address, dask_workers=args.workers)
        )

    return build(
        source=source,
        db=args.db,
        data_dir=getattr(args, "data_dir", None),
        **scrape,
        demo_tracks=args.tracks,
        workers=getattr(args, "workers", min(2, os.cpu_count() or 1)),
        training=_training_overrides(args, max_time_s=args.train_minutes * 60),
        retrain=getattr(args, "retrain", False),
        # Unset: the build flow's defaults, the analysis's own (MelParams).
        **{name: value for name in ("excerpts", "placement") if (value := getattr(args, name, None)) is not None},
        keep_previews=not getattr(args, "drop_previews", False),
        preview_sources=_preview_sources(getattr(args, "preview_sources", None)),
        preview_folder=_existing_dir(getattr(args, "preview_folder", None), "--preview-folder"),
    )


def _preview_sources(text: str | None) -> list[str] | None:
    if not text:
        return None
    sources = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in sources if name not in ("spotify", "deezer", "folder")]
    if unknown or not sources:
        raise CommandError(f"--preview-sources {text!r}: expected names among spotify, deezer, folder")
    return sources


def _existing_dir(path: str | None, option: str) -> str | None:
    if path is None:
        return None
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CommandError(f"{option} {path}: not a directory")
    return str(folder.resolve())


def _scrape_parameters(args: argparse.Namespace, kind: str) -> dict:
    """The build flow's scrape parameters from --scrape-config and --query."""
    queries = getattr(args, "queries", None)
    path = getattr(args, "scrape_config", None)
    if path is None:
        return {"queries": queries}
    if kind == "folder":
        raise CommandError("--scrape-config applies to --source spotify or standin, not to a folder")
    from sonufy_model.scrape_config import ScrapeConfig

    config = ScrapeConfig.from_yaml(path).merged(queries or ())
    return {
        "queries": list(config.queries) or None,
        "album_ids": list(config.album_ids) or None,
        "playlist_ids": list(config.playlist_ids) or None,
        "max_items_per_query": config.max_items_per_query,
    }


def _training_overrides(args: argparse.Namespace, **config) -> dict:
    """Training settings the build's options set: the time box, and --epochs and --preset where given."""
    if getattr(args, "epochs", None) is not None:
        config["max_epochs"] = args.epochs
    if getattr(args, "preset", None) is not None:
        config["preset"] = args.preset
    return config


def _scan_note(counts: dict) -> str | None:
    """A folder build's scan in a line: what it took, what it skipped and why."""
    if "skipped_files" not in counts:
        return None
    from sonufy_model.folder import SKIP_REASONS

    line = (f"folder scan: {counts.get('new_files', 0)} new files, {counts.get('changed_files', 0)} changed, "
            f"{counts.get('unchanged_files', 0)} unchanged")
    if counts.get("audio_by_content"):
        line += f" ({counts['audio_by_content']} recognised as audio by content, not suffix)"
    skipped = counts["skipped_files"]
    if not skipped:
        return line + "; skipped no files"
    reasons = [f"{counts.get('skipped_' + r.replace(' ', '_'), 0)} {r}" for r in SKIP_REASONS
               if counts.get("skipped_" + r.replace(" ", "_"))]
    return (line + f"; skipped {skipped} file{'s' if skipped != 1 else ''}: " + ", ".join(reasons)
            + " (names in the scan task's log)")
