"""Do neighbours in the latent space sound alike, on real music? Sonufy against classic baselines.

Builds a database from a folder of music (``sonufy build --source
folder:DIR``), or reuses one already built, then scores precision@k of
same-label neighbours (``sonufy evaluate``'s code) for the latent space and
the two classic feature sets computed from the same stored spectrograms:
naive log-mel (mean and std over time of each mel band, standardised) and
MFCC-20 (mean and covariance, standardised). Labels come from a CSV keyed by
``path`` (relative to DIR, or absolute) or ``track_id``, one label per
column. Every figure has its 95% bootstrap interval over the query tracks.

Protocol, as the development corpus's scorer (../shared/devcorpus/score.py):
one vector per track, cosine, the seed excluded, every track a candidate
(one without the label never matches), queries the tracks whose label at
least ``--min-label-tracks`` (3) tracks share.

    .venv/bin/python bench/quality.py --folder ~/.cache/sonufy-devcorpus/tracks \\
        --labels ~/.cache/sonufy-devcorpus/labels.csv [--db /tmp/dev.duckdb] [--label-columns soundtrack,composer]

Without --folder, --db must exist (e.g. the demo catalog, `make demo`) and
--labels or --label give the labels. Last line: one JSON object,
{"bench": "quality", "corpus", "tracks", "k", "sonufy_p10": {label: {"p",
"low", "high"}}, "naive_p10", "mfcc_p10", "ratio_to_best_baseline": {label:
...}, ...} (p10 for the default k = 10).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonufy_model.evaluate import EvaluationInputError, evaluate_store, read_label_csv  # noqa: E402
from sonufy_model.store import Store  # noqa: E402

#: Spaces scored, and their names in the JSON.
SYSTEMS = {"latent": "sonufy", "naive": "naive", "mfcc": "mfcc"}
#: CSV columns that are keys or measurements, not labels.
NOT_LABELS = {"path", "track_id", "seconds", "duration", "duration_s", "length"}


def label_columns(csv_path: str) -> list[str]:
    """The CSV's label columns: every column but the keys and the numeric ones."""
    import polars as pl

    frame = pl.read_csv(Path(csv_path).expanduser(), infer_schema_length=0)
    columns = []
    for column in frame.columns:
        if column in NOT_LABELS:
            continue
        values = frame[column].drop_nulls()
        if values.len() and values.cast(pl.Float64, strict=False).null_count() == 0:
            continue  # numbers: a measurement
        columns.append(column)
    return columns


def corpus_name(folder: Path | None, labels: str | None, db: Path) -> str:
    """The folder holding the labels file when the music lies inside it (a
    corpus laid out as NAME/labels.csv + NAME/tracks/), else the music's folder."""
    if folder is not None:
        if labels is not None:
            parent = Path(labels).expanduser().resolve().parent
            if folder == parent or parent in folder.parents:
                return parent.name
        return folder.name
    return db.stem


def has_latent_space(db: Path) -> bool:
    if not db.is_file():
        return False
    try:
        Store(db).evaluation_space()
    except Exception:  # no model, no vectors: build it
        return False
    return True


def build(folder: Path, db: Path, extra: list[str]) -> float:
    """``sonufy build --source folder:DIR --db DB``, in its own process; seconds taken."""
    sonufy = Path(sys.executable).with_name("sonufy")
    command = [str(sonufy)] if sonufy.exists() else [sys.executable, "-m", "flows.cli"]
    command += ["build", "--source", f"folder:{folder}", "--db", str(db), *extra]
    print("building:", " ".join(command), file=sys.stderr)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=sys.stderr)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="a folder of music: built into --db unless --db already has vectors")
    parser.add_argument("--labels", help="a CSV with a path (or track_id) column and one column per label")
    parser.add_argument("--label-columns", help="comma-separated columns of --labels (default: every "
                        "column but path, track_id and numeric ones)")
    parser.add_argument("--label", action="append", default=[], metavar="SPEC",
                        help="another label as `sonufy evaluate --label` takes it (folder, genre, ...)")
    parser.add_argument("--exclude-same", metavar="SPEC",
                        help="also score with this label's same-value neighbours excluded (e.g. folder)")
    parser.add_argument("--db", help="the DuckDB file (default: a file named after the corpus in the "
                        "temporary folder, reused by the next run)")
    parser.add_argument("--rebuild", action="store_true", help="build even if --db already has vectors")
    parser.add_argument("--build-arg", action="append", default=[], metavar="ARG",
                        help="an argument for `sonufy build` (repeatable), e.g. --build-arg=--train-minutes=10")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--min-label-tracks", type=int, default=3,
                        help="a query's label has at least this many tracks (default: 3, as score.py)")
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)

    folder = Path(args.folder).expanduser().resolve() if args.folder else None
    if folder is not None and not folder.is_dir():
        parser.error(f"--folder {args.folder}: not a directory")
    if folder is None and not args.db:
        parser.error("give --folder (to build or reuse a database of it) or --db")
    if args.db:
        db = Path(args.db).expanduser()
        corpus = corpus_name(folder, args.labels, db)
    else:
        corpus = corpus_name(folder, args.labels, Path("sonufy"))
        db = Path(tempfile.gettempdir()) / f"sonufy-quality-{corpus}.duckdb"
    specs: list[str] = list(args.label)
    if args.labels:
        columns = args.label_columns.split(",") if args.label_columns else label_columns(args.labels)
        for column in columns:
            read_label_csv(args.labels, column.strip())  # a missing column fails before any build
        specs += [f"csv:{args.labels}:{column.strip()}" for column in columns]
    if not specs:
        specs = ["folder"] if folder is not None else ["genre"]

    build_s = None
    if args.rebuild or not has_latent_space(db):
        if folder is None:
            print(f"--db {db}: no latent space in it; give --folder to build one", file=sys.stderr)
            return 2
        build_s = build(folder, db, args.build_arg)

    started = time.perf_counter()
    exclusions = ["none"] + ([args.exclude_same] if args.exclude_same else [])
    try:
        result = evaluate_store(Store(db), specs, k=args.k, exclude_same=exclusions, queries=args.queries,
                                resamples=args.resamples, spaces=tuple(SYSTEMS), record=False,
                                min_label_tracks=args.min_label_tracks)
    except EvaluationInputError as error:
        print(f"bench/quality.py: {error}", file=sys.stderr)
        return 2
    evaluate_s = time.perf_counter() - started

    def name(row: dict) -> str:
        label = row["label"].removeprefix("csv:")
        return label if row["exclude_same"] is None else f"{label} (same {row['exclude_same']} excluded)"

    figures: dict[str, dict] = {system: {} for system in SYSTEMS.values()}
    chance: dict[str, float] = {}
    queries: dict[str, int] = {}
    for row in result["rows"]:
        figures[SYSTEMS[row["space"]]][name(row)] = {
            "p": round(row["precision"], 4), "low": round(row["precision_low"], 4),
            "high": round(row["precision_high"], 4)}
        chance[name(row)] = round(row["chance"], 4)
        queries[name(row)] = row["tracks"]
    labels = list(chance)
    ratio = {}
    for label in labels:
        best = max(figures["naive"][label]["p"], figures["mfcc"][label]["p"])
        ratio[label] = round(figures["sonufy"][label]["p"] / best, 3) if best > 0 else None

    k = args.k
    print(f"{corpus}: {result['tracks']} tracks, model {result['model_version']}, precision@{k} "
          f"[95% bootstrap interval over the queries]")
    print(f"{'label':<36}{'queries':>8}{'chance':>8}" + "".join(f"{s:>22}" for s in SYSTEMS.values())
          + f"{'sonufy/best':>13}")
    def cell(figure: dict) -> str:
        return f"{figure['p']:.3f} [{figure['low']:.2f}, {figure['high']:.2f}]"

    for label in labels:
        cells = "".join(f"{cell(figures[system][label]):>22}" for system in SYSTEMS.values())
        shown = "-" if ratio[label] is None else f"{ratio[label]:.2f}"
        print(f"{label:<36}{queries[label]:>8}{chance[label]:>8.3f}{cells}{shown:>13}")
    for note in result["notes"]:
        print(f"skipped: {note}")
    out = {
        "bench": "quality", "corpus": corpus, "tracks": result["tracks"], "k": k,
        "model_version": result["model_version"],
        **{f"{system}_p{k}": figures[system] for system in SYSTEMS.values()},
        "ratio_to_best_baseline": ratio, "chance": chance, "queries": queries,
        "min_label_tracks": args.min_label_tracks, "db": str(db),
        "build_s": None if build_s is None else round(build_s, 1), "evaluate_s": round(evaluate_s, 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
