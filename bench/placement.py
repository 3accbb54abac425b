"""How fast are new tracks placed on a fitted landscape? UMAP transform against nearest neighbours.

A DuckDB store of ``--tracks`` (default 3,000) clustered synthetic 256-d
latents (``bench/landscape.py``'s: 200 centres of Zipf-like sizes), ten
tracks an artist, a genre per centre, its landscape fitted by
``update_landscape`` outside the timing. Then, for each of ``--new`` (default
10 and 100) new tracks drawn from the same centres (every fifth by a new
artist), on a fresh copy of the fitted store, the landscape step of a nightly
in a fresh process, as the nightly pays it:

- before: as the nightly ran it until December 2026: load ``umap.joblib``,
  UMAP's ``transform`` of the tracks without a point, write them, refit the
  artist and genre maps (UMAP);
- now: ``update_landscape``: the fitted tracks' vectors and points from
  DuckDB, the weighted mean of each new track's 10 nearest, the group maps
  extended the same way.

Each child times from after ``from sonufy_model import landscape`` (the
nightly's tasks import it at start) to the end of the step, with the
placement alone (reading the fit, placing) apart, and says whether UMAP was
imported. Then, in this process after a warm-up (numba compiled), the
placement alone: ``FittedUmap.transform`` against ``place_by_neighbours``
(with the read of the fitted tracks from DuckDB), per new track.

Quality, both paths on the same new tracks: the share of each new track's
10 nearest fitted tracks on the map that are among its 10 nearest fitted
tracks by cosine in the latent space (1: the map keeps its neighbourhood),
beside the same share for a sample of the fitted tracks themselves.

    .venv/bin/python bench/placement.py [--tracks 3000] [--new 10 100]

Last line: {"bench": "placement", "tracks", and per new count n:
"before_step_s_<n>", "now_step_s_<n>", "before_place_s_<n>",
"now_place_s_<n>", "before_warm_s_<n>", "now_warm_s_<n>",
"before_overlap_<n>", "now_overlap_<n>"} and "fit_overlap".
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonufy_model.config import Paths  # noqa: E402
from sonufy_model.store import LATENT_DIM, Store  # noqa: E402

VERSION = "bench"
NEIGHBOURS = 10


def _tracks(ids: list[str], artists: list[str], genres: list[str]) -> pl.DataFrame:
    n = len(ids)
    return pl.DataFrame({
        "track_id": ids, "source": ["spotify"] * n, "title": [f"title {i}" for i in ids], "artist": artists,
        "artists": [[a] for a in artists], "artist_id": artists, "album": ["album"] * n, "album_id": ["al"] * n,
        "release_date": ["2020-01-01"] * n, "duration_ms": [200_000] * n, "isrc": [f"QZ{i}" for i in ids],
        "explicit": [False] * n, "popularity": [None] * n, "uri": [f"spotify:track:{i}" for i in ids],
        "preview_url": [None] * n, "path": [None] * n, "found_by": [f'genre:"style {g}"' for g in genres],
    })


def _embed(store: Store, ids: list[str], vectors: np.ndarray) -> None:
    store.record_embeddings(pl.DataFrame({"track_id": ids, "model_version": [VERSION] * len(ids)}).with_columns(
        pl.Series("raw", vectors, dtype=pl.Array(pl.Float32, LATENT_DIM)),
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, LATENT_DIM)),
    ))


def _labels(which: np.ndarray, start: int, newcomers: bool) -> tuple[list[str], list[str], list[str]]:
    ids = [f"t{start + i:06d}" for i in range(len(which))]
    artists = [f"newcomer {start + i}" if newcomers and i % 5 == 0 else f"style {c} artist {(start + i) % 7}"
               for i, c in enumerate(which)]
    return ids, artists, [str(c) for c in which]


def fitted_store(root: Path, vectors: np.ndarray, which: np.ndarray) -> Paths:
    from sonufy_model import landscape as ls

    paths = Paths.for_db(root / "fitted.duckdb")
    store = Store(paths.db)
    store.register_model(
        {"model_version": VERSION, "set_id": VERSION, "config": {}, "checkpoint": "none", "epochs": 0,
         "train_mse": None, "val_mse": None, "n_train_tracks": 0, "n_val_tracks": 0, "train_seconds": 0.0,
         "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM)},
        promote=False,
    )
    ids, artists, genres = _labels(which, 0, newcomers=False)
    store.upsert_tracks(_tracks(ids, artists, genres))
    _embed(store, ids, vectors)
    store.promote(VERSION)
    start = time.perf_counter()
    counts = ls.update_landscape(store, paths.models)
    print(f"fitted {counts} in {time.perf_counter() - start:.1f} s (outside the timing)", flush=True)
    return paths


def with_new_tracks(fitted: Paths, root: Path, vectors: np.ndarray, which: np.ndarray, start: int) -> Paths:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shutil.copy(fitted.db, root / fitted.db.name)
    shutil.copytree(fitted.data_dir, root / fitted.data_dir.name)
    paths = Paths.for_db(root / fitted.db.name)
    store = Store(paths.db)
    ids, artists, genres = _labels(which, start, newcomers=True)
    store.upsert_tracks(_tracks(ids, artists, genres))
    _embed(store, ids, vectors)
    return paths


def child(mode: str, db: str, models: str) -> None:
    """One nightly's landscape step, timed inside a fresh process."""
    begin = time.perf_counter()
    from sonufy_model import landscape as ls
    from sonufy_model.landscape import persistence

    imported = time.perf_counter()
    store = Store(Path(db))
    if mode == "before":
        version = store.current_model().model_version
        fitted = ls.FittedUmap.load(ls.umap_path(Path(models), version), version)
        frame = persistence._query(store, "landscape_unplaced")
        points = fitted.transform(persistence._vectors(frame))
        placed = time.perf_counter()
        persistence._write_points(store, version, frame["track_id"], points, "transform", replace_all=False)
        counts = {"landscape_placed": frame.height, **ls.update_group_landscapes(store)}
    elif mode == "now":
        counts = ls.update_landscape(store, Path(models))
        placed = None
    else:  # "now-place": the placement alone, as update_landscape does it (nothing written)
        version = store.current_model().model_version
        ls.read_fit_info(ls.umap_path(Path(models), version), version)
        reference = persistence._query(store, "landscape_fitted_points")
        frame = persistence._query(store, "landscape_unplaced")
        ls.place_by_neighbours(persistence._vectors(reference), reference.select("x", "y").to_numpy(),
                               persistence._vectors(frame))
        placed, counts = time.perf_counter(), {}
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - begin, "place_s": placed and placed - imported,
                      "step_s": done - imported,
                      "counts": counts, "umap_imported": "umap" in sys.modules}))


def run_child(mode: str, paths: Paths) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(paths.db), str(paths.models)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{mode} child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def map_points(paths: Paths, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The fitted tracks' points, and those of ``ids``, from the store."""
    with Store(paths.db).connect(read_only=True) as con:
        frame = con.execute("SELECT track_id, x, y, placed_by FROM landscape ORDER BY track_id").pl()
    fitted = frame.filter(pl.col("placed_by") == "fit").select("x", "y").to_numpy()
    new = frame.filter(pl.col("track_id").is_in(ids)).sort("track_id").select("x", "y").to_numpy()
    return fitted, new


def overlap(latent_nearest: np.ndarray, fitted_xy: np.ndarray, new_xy: np.ndarray) -> float:
    on_map = np.argsort(((new_xy[:, None, :] - fitted_xy[None, :, :]) ** 2).sum(-1), axis=1)[:, :NEIGHBOURS]
    return float(np.mean([len(set(a) & set(b)) / NEIGHBOURS for a, b in zip(latent_nearest, on_map)]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=3_000)
    parser.add_argument("--new", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--child", nargs=3, metavar=("MODE", "DB", "MODELS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}

    from bench.landscape import clustered_latents
    from sonufy_model import landscape as ls
    from sonufy_model.landscape import persistence

    most = max(args.new)
    vectors, which = clustered_latents(args.tracks + most, seed=0)
    fit_vectors, fit_which = vectors[:args.tracks], which[:args.tracks]
    new_vectors, new_which = vectors[args.tracks:], which[args.tracks:]
    root = Path(tempfile.mkdtemp(prefix="sonufy-placement-"))
    result: dict = {"bench": "placement", "tracks": args.tracks}
    try:
        fitted = fitted_store(root, fit_vectors, fit_which)
        version_dir = fitted.models / VERSION
        umap_file = version_dir / ls.UMAP_FILENAME
        # The fitted tracks' ids sort in their vectors' order: latent neighbours by index.
        unit = fit_vectors / np.linalg.norm(fit_vectors, axis=1, keepdims=True)
        # For scale: how much of its own tracks' neighbourhoods the fit keeps (a sample of 500).
        fitted_xy, _ = map_points(fitted, [])
        sample = np.random.default_rng(1).choice(args.tracks, size=min(500, args.tracks), replace=False)
        own_latent = ls.nearest_fitted(unit, unit[sample], NEIGHBOURS + 1)[0][:, 1:]
        own_map = np.argsort(((fitted_xy[sample, None, :] - fitted_xy[None, :, :]) ** 2).sum(-1), axis=1)
        result["fit_overlap"] = round(float(np.mean(
            [len(set(a) & set(b[b != i][:NEIGHBOURS])) / NEIGHBOURS
             for a, b, i in zip(own_latent, own_map, sample)])), 3)
        print(f"the fit keeps {result['fit_overlap']:.2f} of its own tracks' 10 latent neighbours on the map",
              flush=True)
        for n in sorted(args.new):
            ids = [f"t{args.tracks + i:06d}" for i in range(n)]
            latent_nearest = ls.nearest_fitted(unit, new_vectors[:n], NEIGHBOURS)[0]
            figures = {}
            for mode in ("before", "now", "now-place"):
                paths = with_new_tracks(fitted, root / f"{mode}-{n}", new_vectors[:n], new_which[:n], args.tracks)
                figures[mode] = run_child(mode, paths)
                if mode == "now-place":
                    continue
                figures[mode]["overlap"] = overlap(latent_nearest, *map_points(paths, ids))
            figures["now"]["place_s"] = figures["now-place"]["place_s"]
            for mode in ("before", "now"):
                print(f"{n:>4} new, {mode:>6}, fresh process: step {figures[mode]['step_s']:6.2f} s "
                      f"(placing alone {figures[mode]['place_s']:6.2f} s; the import of sonufy_model.landscape, "
                      f"{figures[mode]['import_s']:.2f} s, before it), UMAP imported: "
                      f"{figures[mode]['umap_imported']}, map keeps {figures[mode]['overlap']:.2f} of the "
                      f"10 latent neighbours; {figures[mode]['counts']}", flush=True)
                result[f"{mode}_step_s_{n}"] = round(figures[mode]["step_s"], 3)
                result[f"{mode}_place_s_{n}"] = round(figures[mode]["place_s"], 3)
                result[f"{mode}_overlap_{n}"] = round(figures[mode]["overlap"], 3)

        # Warm, in this process: the placement alone (UMAP compiled by a first transform).
        saved = ls.FittedUmap.load(umap_file, VERSION)
        saved.transform(new_vectors[:5] + 0.01)
        store = Store(fitted.db)
        for n in sorted(args.new):
            start = time.perf_counter()
            saved.transform(new_vectors[:n])
            before = time.perf_counter() - start
            start = time.perf_counter()
            reference = persistence._query(store, "landscape_fitted_points")
            ls.place_by_neighbours(persistence._vectors(reference), reference.select("x", "y").to_numpy(),
                                   new_vectors[:n])
            now = time.perf_counter() - start
            print(f"{n:>4} new, warm, placement alone: transform {before:.3f} s ({1e3 * before / n:.1f} ms a "
                  f"track), neighbours {now:.3f} s with the read of {reference.height:,} fitted tracks "
                  f"({1e3 * now / n:.2f} ms a track)", flush=True)
            result[f"before_warm_s_{n}"] = round(before, 4)
            result[f"now_warm_s_{n}"] = round(now, 4)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
