"""The ``sonufy`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sonufy_model.presets import PRESET_NAMES

# Offline by design: no telemetry from Prefect or Great Expectations.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

DEFAULT_DB = "sonufy.duckdb"


class CommandError(Exception):
    """A bad input on the command line; the message names it."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonufy", description="Recommend music by how it sounds, and by nothing else."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_db(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--db", default=DEFAULT_DB, help=f"the DuckDB file (default: ./{DEFAULT_DB})")

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
    build.add_argument("--tracks", type=_positive_int, default=300,
                       help="size of the demo catalog for --source standin (default: 300)")
    build.add_argument("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1),
                       help="processes computing spectrograms (default: 2)")
    build.add_argument("--train-minutes", type=_positive_float, default=5.0,
                       help="time box for training (default: 5)")
    build.add_argument("--epochs", type=_positive_int,
                       help="most epochs to train (default: the preset's; the time box usually ends it first)")
    build.add_argument("--preset", choices=PRESET_NAMES, default=None,
                       help="the model: 'invariance' (default: learns what stays the same within a track) "
                       "or 'reference' (the seed's autoencoder)")
    build.add_argument("--excerpts", type=_positive_int,
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
    recommend.add_argument("--tracks", type=_positive_int, default=300,
                           help="with --search --source standin: the demo catalog's size (default: 300)")
    recommend.add_argument("--hub-reduction", action="store_true",
                           help="rank by mutual proximity, demoting tracks that are near everything")
    recommend.add_argument("-k", type=_positive_int, default=10, help="how many (default: 10)")
    recommend.add_argument("--exclude-same-artist", action="store_true", help="no track by the seed's artist")
    recommend.add_argument("--exclude-same-album", action="store_true", help="no track from the seed's album")
    recommend.add_argument("--exclude-duplicates", action="store_true",
                           help="no other recording of the seed or of a listed track (same ISRC, or same "
                           "title and artist once '(Remastered)', '- Live' and the like are taken off)")
    recommend.add_argument("--min-popularity", type=int, metavar="N",
                           help="only tracks with popularity at least N (tracks without one pass)")
    recommend.add_argument("--max-per-artist", type=_positive_int, metavar="N",
                           help="at most N tracks of one artist")
    recommend.add_argument("--exact", action="store_true",
                           help="scan every vector instead of probing the search index")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of a table")

    path = commands.add_parser(
        "path",
        help="a list of tracks that walks from track A to track B through the latent space",
        description="Interpolate between A's and B's vectors and take, at each step, the nearest "
        "track not used yet: A first, B last, no repeats.",
    )
    add_db(path)
    path.add_argument("a", metavar="A", help="where to start: a track id, or 'artist - title'")
    path.add_argument("b", metavar="B", help="where to arrive: a track id, or 'artist - title'")
    path.add_argument("--steps", type=_positive_int, default=10,
                      help="tracks in the list, A and B included (default: 10)")
    path.add_argument("--json", action="store_true", help="print JSON instead of a table")

    radio = commands.add_parser(
        "radio",
        help="a longer list from several seed tracks, their neighbourhoods in turn",
        description="Interleave the nearest tracks of each seed: no repeats, no seed, at most "
        "--max-per-artist tracks of one artist.",
    )
    add_db(radio)
    radio.add_argument("seeds", metavar="SEED", nargs="+", help="a track id, or 'artist - title'")
    radio.add_argument("-n", type=_positive_int, default=30, help="how many tracks (default: 30)")
    radio.add_argument("--max-per-artist", type=_positive_int, default=2,
                       help="most tracks of one artist (default: 2)")
    radio.add_argument("--json", action="store_true", help="print JSON instead of a table")

    demo = commands.add_parser(
        "demo",
        help="build on the embedded demo catalog and show recommendations (what `make demo` runs)",
    )
    add_db(demo)
    demo.add_argument("--tracks", type=_positive_int, default=300, help="demo catalog size (default: 300)")
    # The default model (the invariance preset) in the build's own 5-minute
    # box: a newcomer sees what `sonufy build` gives them (README, "How good is it?").
    demo.add_argument("--epochs", type=_positive_int, help="most epochs to train (default: the preset's)")
    demo.add_argument("--train-minutes", type=_positive_float, default=5.0,
                      help="time box for training (default: 5)")
    demo.add_argument("--preset", choices=PRESET_NAMES, default=None,
                      help="the model: 'invariance' (default) or 'reference' (the seed's autoencoder)")

    train = commands.add_parser(
        "train",
        help="train a new model version on the current spectrogram set and make it current",
        description="Run the train flow: train the autoencoder in its own process (DDP-ready) on the "
        "spectrograms of the current set, register the model version, make it current and encode "
        "every track with it. Options override the --config YAML (keys: TrainConfig fields).",
    )
    add_db(train)
    train.add_argument("--config", metavar="PATH",
                       help="a YAML file of training settings (see deployments/train.yaml)")
    train.add_argument("--max-epochs", type=_positive_int, help="most epochs to train")
    train.add_argument("--preset", choices=PRESET_NAMES, default=None,
                       help="the model: 'invariance' (default) or 'reference' (the seed's autoencoder)")
    train.add_argument("--train-minutes", type=_positive_float, help="time box for training")
    train.add_argument("--devices", help="Lightning devices: a count, 'auto' or a list such as '0,1'")
    train.add_argument("--strategy", help="Lightning strategy, e.g. 'ddp' (default: auto)")
    train.add_argument("--precision", help="Lightning precision, e.g. 'bf16-mixed' on GPUs (default: 32-true)")
    train.add_argument("--no-promote", dest="promote", action="store_false",
                       help="register the new version without making it current")

    evaluate = commands.add_parser(
        "evaluate",
        help="precision@k and MAP of same-label neighbours, with 95%% intervals: latent space vs "
        "naive log-mel, MFCC and random baselines",
        description="Score the current latent space: for each query track, do its k nearest tracks by "
        "cosine share its label? Against naive log-mel statistics, MFCC statistics and random vectors on "
        "the same tracks, with chance levels and 95% bootstrap intervals over the query tracks; the rows "
        "are stored in the evaluations table.",
    )
    add_db(evaluate)
    evaluate.add_argument("--label", action="append", dest="labels", metavar="LABEL",
                          help="artist, album, genre, folder (the folder a file lies in: its album or "
                          "soundtrack), folder:N (N folders up), or csv:PATH:COLUMN (a CSV with COLUMN and "
                          "a track_id or a path column; a path is absolute or relative to the folder "
                          "source's root); repeatable (default: genre and artist)")
    evaluate.add_argument("--exclude-same", action="append", dest="exclude_same", metavar="LABEL",
                          help="a label as for --label: a query's neighbours sharing its value are not "
                          "candidates (e.g. folder, to score composer across soundtracks); 'none' for rows "
                          "without exclusion; repeatable (default: none and artist)")
    evaluate.add_argument("--artist-filter", dest="exclude_same", action="append_const", const="artist",
                          help="the same as --exclude-same artist")
    evaluate.add_argument("--no-artist-filter", dest="exclude_same", action="append_const", const="none",
                          help="the same as --exclude-same none: rows that count every neighbour")
    evaluate.add_argument("-k", type=_positive_int, default=10, help="neighbours per track (default: 10)")
    evaluate.add_argument("--queries", type=_positive_int, default=5000, metavar="N",
                          help="query tracks per label, a seeded random sample when there are more; every "
                          "track stays a candidate neighbour (default: 5000)")
    evaluate.add_argument("--min-label-tracks", type=_positive_int, default=2, metavar="N",
                          help="a query's label has at least N tracks, itself included (default: 2)")
    evaluate.add_argument("--resamples", type=_positive_int, default=1000,
                          help="bootstrap resamples of the queries behind each interval (default: 1000)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the query sample and the bootstrap")
    evaluate.add_argument("--hub-reduction", action="store_true",
                          help="also rank the latent space by mutual proximity (rows 'latent+mp') and "
                          "report the hubness of both rankings")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")

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
    landscape.add_argument("--n-neighbors", type=_positive_int,
                           help="UMAP n_neighbors, clipped below the number of tracks (default: about the square "
                           "root of the number of tracks, within 10..500); other than the saved fit's, it refits")
    landscape.add_argument("--min-dist", type=float,
                           help="UMAP min_dist in [0, 1] (default: 0.1); other than the saved fit's, it refits")
    landscape.add_argument("--refit", action="store_true",
                           help="fit the landscape anew instead of placing new tracks with the saved fit")

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
    nightly.add_argument("--tracks", type=_positive_int, default=300,
                         help="the stand-in's catalog size, as built (default: 300)")
    nightly.add_argument("--new-tracks", type=int, default=0,
                         help="new releases the stand-in's catalog has gained since (default: 0)")
    nightly.add_argument("--wait", type=float, default=0.0, metavar="S",
                         help="seconds to wait for a nightly already running (default: 0)")

    retrain = commands.add_parser(
        "retrain",
        help="train a new model version and make it current only if `sonufy evaluate` finds it not worse",
    )
    add_db(retrain)
    retrain.add_argument("--train-minutes", type=_positive_float, default=5.0, help="time box (default: 5)")
    retrain.add_argument("--tolerance", type=float, default=0.0,
                         help="promote unless the 95%% paired bootstrap interval of the candidate's mean "
                         "latent precision@k minus the current one's lies entirely below minus this "
                         "(default: 0)")
    retrain.add_argument("--wait", type=float, metavar="S",
                         help="seconds to wait for another writer on the store, such as a nightly still "
                         "running (default: 6 hours)")

    gc = commands.add_parser(
        "gc",
        help="remove orphan spectrogram shards, rejected candidates' checkpoints and old reports",
        description="Delete what the store no longer points at: shards no row names (a killed run's), "
        "the model folders of versions neither current nor pending and without vectors, and Great "
        "Expectations reports beyond the most recent runs; print how much was freed.",
    )
    add_db(gc)
    gc.add_argument("--keep-reports", type=int, default=20, metavar="N",
                    help="validation runs whose reports stay, the most recent (default: 20)")
    gc.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")

    sql_shell = commands.add_parser(
        "sql",
        help="ad-hoc SQL on the store, read-only, with its views and macros (latent, similar_to)",
        description="Open the DuckDB shell on the store, read-only (our own small shell where the duckdb "
        "binary is not installed), or run the statements of -c and print their results.",
    )
    add_db(sql_shell)
    sql_shell.add_argument("-c", dest="sql", metavar="SQL", help="statements to run (';' between them), then exit")

    standin = commands.add_parser(
        "standin",
        help="run the local Spotify/Deezer stand-in in the foreground",
        description="Serve the demo catalog with Spotify's and Deezer's API on 127.0.0.1.",
    )
    standin.add_argument("--port", type=int, default=8765)
    standin.add_argument("--tracks", type=_positive_int, default=300)
    return parser


def _print_recommendations(rows: list[dict], seed: str, as_json: bool, extra: dict | None = None) -> None:
    if as_json:
        print(json.dumps({"seed": seed, **(extra or {}), "recommendations": rows}, indent=2, default=str))
        return
    seed_style = rows[0].get("seed_style") if rows else None
    _print_tracks(rows, f"Sounds like: {seed}" + (f" ({seed_style})" if seed_style else ""))


def _print_tracks(rows: list[dict], title: str, first: str = "rank", notes: tuple[str, ...] = ()) -> None:
    """A table of tracks: rank (or step), artist, style when rows have one (the
    demo's), title, the three scores, the mutual proximity when ranked by it,
    the seed when rows come from several, the preview link."""
    from rich.console import Console
    from rich.table import Table

    styled = any(row.get("style") for row in rows)
    columns = [first, "artist", *(["style"] if styled else []), "title", "cosine", "time", "frequency"]
    columns += ["mp"] if rows and rows[0].get("mutual_proximity") is not None else []
    seeds = {seed: number for number, seed in enumerate(dict.fromkeys(r["seed"] for r in rows if "seed" in r), 1)}
    # A column of 1s would only take room: one seed is named below, or in the title.
    columns += ["seed"] if len(seeds) > 1 else []
    columns += ["preview"]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column in (first, "cosine", "time", "frequency", "mp", "seed")
                         else "left")
    for rank, row in enumerate(rows, start=1):
        cells = [str(row.get("step", rank - 1) if first == "step" else rank), row["artist"],
                 *([row.get("style") or ""] if styled else []), row["title"],
                 f"{row['cosine']:.3f}", f"{row['time_similarity']:.3f}", f"{row['frequency_similarity']:.3f}"]
        cells += [f"{row['mutual_proximity']:.3f}"] if "mp" in columns else []
        cells += [str(seeds[row["seed"]])] if "seed" in columns else []
        cells.append(row.get("preview_url") or "")
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # a pipe or a file: whole titles and links, not a terminal's 80 columns
        console = Console(width=200)
    console.print(table)
    for seed, number in seeds.items():
        if len(seeds) > 1 or seed not in title:
            console.print(f"seed {number}: {seed}")
    for note in notes:
        console.print(note)


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


def _train(args: argparse.Namespace) -> str:
    """The train flow's config from --config and the options that override it."""
    config: dict = {}
    if args.config is not None:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise CommandError(f"--config {args.config}: no such file")
        config = yaml.safe_load(path.read_text()) or {}
        if not isinstance(config, dict):
            raise CommandError(f"--config {args.config}: expected a YAML mapping of training settings")
    if args.max_epochs is not None:
        config["max_epochs"] = args.max_epochs
    if args.preset is not None:
        config["preset"] = args.preset
    if args.train_minutes is not None:
        config["max_time_s"] = args.train_minutes * 60
    if args.devices is not None:
        config["devices"] = int(args.devices) if args.devices.isdigit() else args.devices
    for name in ("strategy", "precision"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    if not Path(args.db).exists():
        raise CommandError(f"--db {args.db}: no such file; run `sonufy build` first")
    from flows.stages import training_options
    from flows.train import train

    training_options(config)  # a bad key fails here, before any flow starts
    return train(db=args.db, config=config, promote=args.promote)


def _evaluate(args: argparse.Namespace) -> None:
    from sonufy_model.evaluate import evaluate_store, exclusion_specs, label_spec
    from sonufy_model.store import DatabaseLocked, Store

    labels = args.labels or ["genre", "artist"]
    for label in labels:
        label_spec(label)  # an unknown label fails before the database is opened
    exclusion_specs(args.exclude_same, None)
    db = Path(args.db)
    if not db.is_file():
        raise CommandError(f"--db {args.db}: no such file; run `sonufy build` first")
    result = evaluate_store(Store(db, reader=True), labels, k=args.k, exclude_same=args.exclude_same,
                            hub_reduction=args.hub_reduction, queries=args.queries,
                            resamples=args.resamples, seed=args.seed, min_label_tracks=args.min_label_tracks)
    try:  # its rows to readers now; a writer that took the lock meanwhile publishes them at its end
        Store(db, lock_wait_s=0.0).publish()
    except DatabaseLocked:
        pass
    if not result["rows"]:
        raise CommandError("nothing could be scored: " + "; ".join(result["notes"]))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"precision@{args.k} and MAP [95% interval], model {result['model_version']}, "
                  f"{result['tracks']} tracks")
    for column in ("label", "exclude same", "space", f"P@{args.k}", "chance", "MAP", "MAP chance", "queries"):
        text = column in ("label", "exclude same", "space")
        table.add_column(column, justify="left" if text else "right", no_wrap=True)
    for row in result["rows"]:
        table.add_row(
            row["label"], row["exclude_same"] or "-", row["space"],
            f"{row['precision']:.3f} [{row['precision_low']:.2f}, {row['precision_high']:.2f}]",
            f"{row['chance']:.3f}",
            f"{row['map']:.3f} [{row['map_low']:.2f}, {row['map_high']:.2f}]",
            f"{row['map_chance']:.3f}", str(row["tracks"]),
        )
    console = Console()
    if not console.is_terminal:  # a file or a pipe: the whole table, unwrapped
        console = Console(width=max(console.width, 140))
    console.print(table)
    for note in result["notes"]:
        console.print(f"skipped: {note}")
    for space, figures in result.get("hubness", {}).items():
        console.print(f"hubness of {space}: k-occurrence skewness {figures['skewness']:.2f}, "
                      f"most listed track in {figures['max_occurrence']} lists of {figures['k']}, "
                      f"{figures['orphans']:.1%} of tracks in nobody's list")


def _store(db: str):
    from sonufy_model.store import Store

    if not Path(db).is_file():
        raise CommandError(f"--db {db}: no such file; run `sonufy build` first")
    return Store(db, reader=True)  # read-only: never migrates, never waits for the writer lock


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


def _landscape(args: argparse.Namespace) -> None:
    from sonufy_model import landscape
    from sonufy_model.config import Paths
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
    store = Store(paths.db)
    with store.writer("landscape", store.lock_wait_s, publish=True) as busy:  # one writer per store: waits for another
        if busy:
            raise CommandError(f"{busy} for more than {store.lock_wait_s:g} s (SONUFY_DB_LOCK_WAIT_S)")
        counts = landscape.update_landscape(store, paths.models, params=params, refit=args.refit)
        result = landscape.render(store, Path(args.out) if args.out else paths.data_dir / "landscape",
                                  color_by=args.color_by)
    done = ", ".join(f"{name} {value}" for name, value in counts.items()) or "every track already had a point"
    print(f"landscape of model {result['model_version']}: {result['tracks']} tracks ({done}), "
          f"coloured by {result['color_by']}" + (" (auto)" if result["color_auto"] else ""))
    print(result["png"])
    print(result["html"])


def _recommend(args: argparse.Namespace) -> None:
    from sonufy_model import query_audio

    if args.search is None and args.source != "standin":
        raise CommandError("--source applies to --search only")
    store = _store(args.db)
    seed = _seed(args, store)
    rows = query_audio.recommend(
        store, seed, args.k, filters=_search_filters(args), hub_reduction=args.hub_reduction,
        use_index=not args.exact,
    ).to_dicts()
    _print_recommendations(rows, seed.label, args.json,
                           {"seed_kind": seed.kind, "seed_track_id": seed.track_id,
                            "hub_reduction": args.hub_reduction})


def _search_filters(args: argparse.Namespace):
    """The search filters recommend's filter options ask for (absent options: the defaults)."""
    from sonufy_model.search import SearchFilters

    defaults = SearchFilters()
    return SearchFilters(**{
        name: getattr(args, name, getattr(defaults, name))
        for name in ("exclude_same_artist", "exclude_same_album", "exclude_duplicates",
                     "min_popularity", "max_per_artist")
    })


def _path(args: argparse.Namespace) -> None:
    from sonufy_model.journeys import path

    rows = path(_store(args.db), args.a, args.b, args.steps).to_dicts()
    title = f"From {rows[0]['artist']} - {rows[0]['title']} to {rows[-1]['artist']} - {rows[-1]['title']}"
    if args.json:
        print(json.dumps({"a": rows[0]["track_id"], "b": rows[-1]["track_id"], "steps": args.steps,
                          "path": rows}, indent=2, default=str))
        return
    _print_tracks(rows, title, first="step", notes=("scores: against each step's point on the way from A to B",))


def _radio(args: argparse.Namespace) -> None:
    from sonufy_model.journeys import radio

    rows = radio(_store(args.db), args.seeds, args.n, args.max_per_artist).to_dicts()
    notes = () if len(rows) == args.n else (f"only {len(rows)} tracks: the seeds' neighbourhoods ran out",)
    if args.json:
        print(json.dumps({"seeds": args.seeds, "n": args.n, "max_per_artist": args.max_per_artist,
                          "radio": rows}, indent=2, default=str))
        return
    _print_tracks(rows, f"Radio from {len(args.seeds)} seed(s)", notes=notes)


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


# Commands that run flows with batch loops: they draw progress bars in a terminal.
_LONG_COMMANDS = ("build", "demo", "train", "nightly", "retrain")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in _LONG_COMMANDS:
        from flows.progress import terminal_bars

        with terminal_bars():
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from sonufy_model.store import DatabaseLocked, SchemaTooNew, TrackNotFound

    try:
        if args.command == "build":
            result = _build(args, args.source)
            note = _scan_note(result.get("counts", {}))
            if note:
                print(note, file=sys.stderr)
            rows = result["recommendations"]
            seed = rows[0]["seed"] if rows else "?"
            _print_recommendations(rows, seed, args.json)
        elif args.command == "demo":
            result = _build(args, "standin")
            rows = result["recommendations"]
            _print_recommendations(rows, rows[0]["seed"], False)
            seed_id = rows[0]["seed_track_id"]
            print(f"\nDuckDB file: {result['db']}")
            print("Ask it yourself in the DuckDB shell:")
            print(f"  .venv/bin/sonufy sql --db {result['db']} -c \"SELECT * FROM similar_to('{seed_id}', 10)\"")
        elif args.command == "recommend":
            _recommend(args)
        elif args.command == "path":
            _path(args)
        elif args.command == "radio":
            _radio(args)
        elif args.command == "train":
            version = _train(args)
            print(f"model version {version}" + (" is current" if args.promote else " registered"))
        elif args.command == "nightly":
            from flows.nightly import nightly_refresh

            result = nightly_refresh(source=args.source, db=args.db, queries=args.queries,
                                     demo_tracks=args.tracks, demo_new_tracks=args.new_tracks,
                                     wait_for_running_s=args.wait)
            print(json.dumps(result, indent=2, default=str))
        elif args.command == "retrain":
            from flows.retrain import retrain

            if not Path(args.db).exists():
                raise CommandError(f"--db {args.db}: no such file; run `sonufy build` first")
            result = retrain(db=args.db, config={"max_time_s": args.train_minutes * 60},
                             tolerance=args.tolerance,
                             **({} if args.wait is None else {"wait_for_running_s": args.wait}))
            if "skipped" in result:  # another writer outlasted the wait: nothing trained
                print(f"nothing done: {result['skipped']}")
            else:
                print(f"model version {result['candidate']} "
                      f"{'is current' if result['promoted'] else 'not promoted'}: {result['reason']}")
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "landscape":
            _landscape(args)
        elif args.command == "gc":
            from sonufy_model import gc
            from sonufy_model.config import Paths
            from sonufy_model.store import Store

            _store(args.db)  # an existing file, or a clear error
            paths = Paths.for_db(args.db)
            found = gc.collect(Store(paths.db), paths, keep_reports=args.keep_reports, dry_run=args.dry_run)
            for path in found.shards + found.checkpoints + found.reports:
                print(f"{'would remove' if args.dry_run else 'removed'} {path}")
            print(found.summary(args.dry_run))
        elif args.command == "sql":
            from sonufy_model import shell

            store = _store(args.db)
            return shell.run(store, args.sql) if args.sql is not None else shell.shell(store)
        elif args.command == "standin":
            from sonufy_model.demo.standin import main as standin_main

            return standin_main(["--port", str(args.port), "--tracks", str(args.tracks)])
    except (CommandError, TrackNotFound, ValueError, FileNotFoundError, DatabaseLocked, SchemaTooNew) as error:
        print(f"sonufy {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
