"""``sonufy train``, ``retrain`` and ``evaluate``: model versions, trained and scored."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.cli.common import CommandError, add_db, positive_float, positive_int
from sonufy_model.presets import PRESET_NAMES


def add_train(commands) -> None:
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
    train.add_argument("--max-epochs", type=positive_int, help="most epochs to train")
    train.add_argument("--preset", choices=PRESET_NAMES, default=None,
                       help="the model: 'invariance' (default) or 'reference' (the seed's autoencoder)")
    train.add_argument("--train-minutes", type=positive_float, help="time box for training")
    train.add_argument("--devices", help="Lightning devices: a count, 'auto' or a list such as '0,1'")
    train.add_argument("--strategy", help="Lightning strategy, e.g. 'ddp' (default: auto)")
    train.add_argument("--precision", help="Lightning precision, e.g. 'bf16-mixed' on GPUs (default: 32-true)")
    train.add_argument("--no-promote", dest="promote", action="store_false",
                       help="register the new version without making it current")
    train.set_defaults(handler=_run_train)


def add_evaluate(commands) -> None:
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
    evaluate.add_argument("-k", type=positive_int, default=10, help="neighbours per track (default: 10)")
    evaluate.add_argument("--queries", type=positive_int, default=5000, metavar="N",
                          help="query tracks per label, a seeded random sample when there are more; every "
                          "track stays a candidate neighbour (default: 5000)")
    evaluate.add_argument("--min-label-tracks", type=positive_int, default=2, metavar="N",
                          help="a query's label has at least N tracks, itself included (default: 2)")
    evaluate.add_argument("--resamples", type=positive_int, default=1000,
                          help="bootstrap resamples of the queries behind each interval (default: 1000)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the query sample and the bootstrap")
    evaluate.add_argument("--hub-reduction", action="store_true",
                          help="also rank the latent space by mutual proximity (rows 'latent+mp') and "
                          "report the hubness of both rankings")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.set_defaults(handler=_evaluate)


def add_retrain(commands) -> None:
    retrain = commands.add_parser(
        "retrain",
        help="train a new model version and make it current only if `sonufy evaluate` finds it not worse",
    )
    add_db(retrain)
    retrain.add_argument("--train-minutes", type=positive_float, default=5.0, help="time box (default: 5)")
    retrain.add_argument("--tolerance", type=float, default=0.0,
                         help="promote unless the 95%% paired bootstrap interval of the candidate's mean "
                         "latent precision@k minus the current one's lies entirely below minus this "
                         "(default: 0)")
    retrain.add_argument("--wait", type=float, metavar="S",
                         help="seconds to wait for another writer on the store, such as a nightly still "
                         "running (default: 6 hours)")
    retrain.set_defaults(handler=_retrain)


def _run_train(args: argparse.Namespace) -> None:
    version = _train(args)
    print(f"model version {version}" + (" is current" if args.promote else " registered"))


def _train(args: argparse.Namespace) -> str:
    """The train flow's config from --config and the options that override it."""
    config: dict = {}
    if args.config is not None:
        from sonufy_model.yaml_files import read_yaml

        path = Path(args.config)
        if not path.is_file():
            raise CommandError(f"--config {args.config}: no such file")
        config = read_yaml(path, "training configuration") or {}
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


def _retrain(args: argparse.Namespace) -> None:
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
