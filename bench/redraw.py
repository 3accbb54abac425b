"""How long does a nightly's landscape redraw take, and how does it grow with N?

A nightly that placed tracks draws the landscape again: ``render_landscape``
(``sonufy_model.landscape.render``) reads the current version's points from
DuckDB, writes ``landscape.png`` (dots below 20,000 points, per-pixel
density from there on) and ``landscape.html`` (a seeded sample of at most 50,000 tracks,
each with its 10 nearest neighbours, and the artist and genre maps with
theirs).

For each of ``--tracks`` (default 3,000, 30,000 and 300,000) a DuckDB store
is made outside the timing, without UMAP: clustered synthetic 256-d latents
(``bench/landscape.py``'s: 200 centres of Zipf-like sizes) as the current
model version's vectors, a genre per centre (200 genres: the map is
coloured by genre, 20 colours and grey), ten tracks an artist (within a
genre), a preview file on disk per track (empty; a nightly keeps its
previews by default, and the page links each track's), and 2-D points
clustered by centre, written as ``update_landscape`` writes them
(``_write_points``: 99% fitted with the fit row and the artist and genre
maps, then 1% placed by neighbours). Then the redraw runs in a fresh process,
as the nightly pays it, timed from after ``from sonufy_model import
landscape`` (the nightly's tasks import it at start), split into:

- read: ``landscape_points`` (every track's point, labels, preview and vector);
- colour: the choice of the label to colour by and its colours;
- png: ``render_png``;
- page: everything after the PNG: the group maps and their mean vectors
  (``landscape_vectors``, a second read of every vector), the page with the
  neighbours of its points (exact up to 20,000, approximate above) and the
  fit rows;
- total: the whole ``render`` call.

Before the timed runs, one untimed child draws the smallest store with the
density and approximate-neighbour paths forced, so that numba's on-disk
caches exist (as on a machine that has drawn a landscape before).

    .venv/bin/python bench/redraw.py [--tracks 3000 30000 300000] [--profile] [--no-warm-up]

``--profile`` also runs the largest size's child under cProfile (untimed)
and prints the renderer's own functions by cumulative time and the 15
costliest functions by their own time.

Last line: {"bench": "redraw", "tracks": [...], "total_s", "read_s",
"colour_s", "png_s", "page_s", "neighbours_s", "groups_s" (each {tracks:
seconds}), "exponent" (b of t ~ N^b between the two largest sizes),
"png_mb", "page_mb" (each {tracks: MB}), "import_s" ({tracks: seconds})}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonufy_model.store import LATENT_DIM, Store  # noqa: E402

VERSION = "bench"
PLACED_SHARE = 0.01
TRACKS_PER_ARTIST = 10
CLUSTERS = 8


def _labels(which: np.ndarray) -> tuple[list[str], list[str], list[str]]:
    """Track ids, artists (ten tracks an artist, within a centre) and genres."""
    n = len(which)
    order = np.argsort(which, kind="stable")
    starts = np.searchsorted(which[order], which[order])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts
    ids = [f"t{i:07d}" for i in range(n)]
    artists = [f"style {c} artist {r // TRACKS_PER_ARTIST}" for c, r in zip(which.tolist(), rank.tolist())]
    return ids, artists, [str(c) for c in which.tolist()]


def _register(store: Store) -> None:
    store.register_model(
        {"model_version": VERSION, "set_id": VERSION, "config": {}, "checkpoint": "none", "epochs": 0,
         "train_mse": None, "val_mse": None, "n_train_tracks": 0, "n_val_tracks": 0, "train_seconds": 0.0,
         "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM)},
        promote=False,
    )


def _preview_files(root: Path, ids: list[str]) -> list[str]:
    """An empty file per track, 1,000 to a folder, as a kept preview."""
    paths = []
    for i, track_id in enumerate(ids):
        folder = root / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{track_id}.mp3"
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        paths.append(str(path))
    return paths


def _fit_row(level: str, points: int, clusters: int | None) -> dict:
    from sonufy_model.landscape import MIN_DIST, scaled_neighbours

    return {"model_version": VERSION, "level": level, "points": points, "n_neighbors": scaled_neighbours(points),
            "min_dist": MIN_DIST, "clusters": clusters, "silhouette": None}


def make_store(root: Path, n: int, seed: int = 0) -> Path:
    """A store of ``n`` synthetic tracks with a current version, its vectors,
    previews on disk, track points (99% fitted, 1% placed) and the artist and
    genre maps, written through the store's own statements. No UMAP."""
    from bench.landscape import clustered_latents
    from bench.placement import _embed, _tracks
    from sonufy_model.landscape.persistence import _GroupMap, _write_points, group_means

    root.mkdir(parents=True, exist_ok=True)
    store = Store(root / "redraw.duckdb")
    _register(store)
    vectors, which = clustered_latents(n, seed=seed)
    ids, artists, genres = _labels(which)
    store.upsert_tracks(_tracks(ids, artists, genres))
    _embed(store, ids, vectors)
    store.record_previews(pl.DataFrame({
        "track_id": ids, "provider": ["spotify"] * n, "path": _preview_files(root / "previews", ids),
        "bytes": [0] * n, "duration_s": [30.0] * n,
    }))
    store.promote(VERSION)

    rng = np.random.default_rng(seed + 1)
    centres = rng.normal(size=(int(which.max()) + 1, 2)) * 6
    xy = (centres[which] + rng.normal(size=(n, 2)) * 0.5).astype(np.float32)
    tracks = pl.DataFrame({"track_id": ids, "artist": artists, "genre": [f"style {g}" for g in genres],
                           "x": xy[:, 0], "y": xy[:, 1]})
    means = group_means(tracks.select("track_id", "artist", "genre").with_columns(
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, LATENT_DIM))))
    del vectors
    group_maps = []
    for level in ("artist", "genre"):
        # Each group at the mean of its tracks' points (every artist lies
        # within one genre, so an artist's genre is its tracks' genre).
        at = tracks.group_by(level).agg(pl.col("x").mean().cast(pl.Float32), pl.col("y").mean().cast(pl.Float32))
        batch = (means[level].drop("vector").join(at.rename({level: "name"}), on="name", how="left",
                                                  maintain_order="left")
                 .with_columns((pl.col("genre").str.extract(r"(\d+)$").cast(pl.Int32) % CLUSTERS).alias("cluster")))
        group_maps.append(_GroupMap(level, batch, _fit_row(level, batch.height, CLUSTERS)))
    placed = max(1, round(n * PLACED_SHARE))
    fitted = n - placed
    _write_points(store, VERSION, tracks["track_id"][:fitted], xy[:fitted], "fit", replace_all=True,
                  fit_row=_fit_row("tracks", fitted, None), group_maps=group_maps)
    _write_points(store, VERSION, tracks["track_id"][fitted:], xy[fitted:], "neighbours", replace_all=False)
    return store.path


# -- the child: one redraw in a fresh process ------------------------------------------


def child(db: str, out: str, mode: str) -> None:
    """The nightly's redraw, timed inside a fresh process; ``mode`` timed,
    warm (the density and approximate-neighbour paths forced, untimed) or profile."""
    begin = time.perf_counter()
    from sonufy_model import landscape as ls
    from sonufy_model.landscape import clusters, page, pictures, static

    imported = time.perf_counter()
    spent: dict[str, float] = {}
    ended: dict[str, float] = {}

    def timing(module, name: str, key: str) -> None:
        inner = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                ended[key] = time.perf_counter()
                spent[key] = spent.get(key, 0.0) + ended[key] - start

        setattr(module, name, timed)

    for module, name, key in (
        (pictures, "landscape_points", "read"), (pictures, "choose_color_by", "colour"),
        (pictures, "coloring", "colour"), (pictures, "render_png", "png"),
        (pictures, "group_landscape_points", "groups"), (pictures, "group_means", "groups"),
        (pictures, "_query", "groups"), (page, "nearest_neighbours", "neighbours"),
        (pictures, "render_html", "html"),
    ):
        timing(module, name, key)
    if mode == "warm":
        static.DENSITY_FROM = 0
        clusters.EXACT_NEIGHBOURS_LIMIT = 0
    store = Store(Path(db))
    if mode == "profile":
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        ls.render(store, Path(out))
        profile.disable()
        stats = pstats.Stats(profile, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(r"sonufy_model/", 25)
        stats.sort_stats("tottime").print_stats(15)
        print(json.dumps({}))
        return
    start = time.perf_counter()
    result = ls.render(store, Path(out))
    done = time.perf_counter()
    print(json.dumps({
        "import_s": imported - begin, "total_s": done - start, "read_s": spent["read"],
        "colour_s": spent["colour"], "png_s": spent["png"], "page_s": done - ended["png"],
        "groups_s": spent.get("groups", 0.0), "neighbours_s": spent.get("neighbours", 0.0),
        "html_s": spent["html"], "tracks": result["tracks"], "html_points": result["html_points"],
        "color_by": result["color_by"], "png_bytes": Path(result["png"]).stat().st_size,
        "html_bytes": result["html_bytes"],
    }))


def run_child(db: Path, out: Path, mode: str = "timed") -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(db), str(out), mode],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} child failed:\n{done.stderr[-5000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_s"] = time.perf_counter() - started
    if mode == "profile":
        print(done.stderr, flush=True)
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, nargs="+", default=[3_000, 30_000, 300_000])
    parser.add_argument("--profile", action="store_true", help="profile the largest size's redraw (untimed)")
    parser.add_argument("--workdir", type=Path, help="where the stores go (kept); default a temporary folder")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the untimed warm-up child (tests)")
    parser.add_argument("--child", nargs=3, metavar=("DB", "OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}

    sizes = sorted(set(args.tracks))
    root = args.workdir or Path(tempfile.mkdtemp(prefix="sonufy-redraw-"))
    figures: dict[int, dict] = {}
    try:
        for i, n in enumerate(sizes):
            start = time.perf_counter()
            if (root / str(n)).exists():
                shutil.rmtree(root / str(n))
            db = make_store(root / str(n), n)
            print(f"{n:>9,} tracks: store made in {time.perf_counter() - start:.1f} s (outside the timing), "
                  f"{db.stat().st_size / 1e6:,.0f} MB", flush=True)
            if i == 0 and not args.no_warm_up:
                warm = run_child(db, root / str(n) / "warm", "warm")
                print(f"warm-up (density picture and approximate neighbours forced, untimed): {warm['total_s']:.1f} s",
                      flush=True)
            f = figures[n] = run_child(db, root / str(n) / "out")
            print(f"{n:>9,} tracks, fresh process: total {f['total_s']:6.2f} s = read {f['read_s']:5.2f} + colour "
                  f"{f['colour_s']:5.2f} + png {f['png_s']:5.2f} + page {f['page_s']:6.2f} s (of it group maps "
                  f"{f['groups_s']:.2f} s, neighbours {f['neighbours_s']:.2f} s); import of sonufy_model.landscape "
                  f"{f['import_s']:.2f} s before it; png {f['png_bytes'] / 1e6:.2f} MB, page "
                  f"{f['html_bytes'] / 1e6:.2f} MB ({f['html_points']:,} points), coloured by {f['color_by']}",
                  flush=True)
            if args.profile and n == sizes[-1]:
                run_child(db, root / str(n) / "profile", "profile")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    small, big = sizes[0], sizes[-1]
    exponent = None
    if len(sizes) >= 2:
        ratio = figures[big]["total_s"] / figures[small]["total_s"]
        print(f"growth: total at {big:,} / at {small:,} tracks: {ratio:.1f}x for {big / small:.0f}x the tracks",
              flush=True)
        below = sizes[-2]
        exponent = math.log(figures[big]["total_s"] / figures[below]["total_s"]) / math.log(big / below)
        print(f"between {below:,} and {big:,} tracks the total grows as N^{exponent:.2f}", flush=True)

    def per_size(key: str, scale: float = 1.0, digits: int = 3) -> dict:
        return {str(n): round(figures[n][key] / scale, digits) for n in sizes}

    result = {
        "bench": "redraw", "tracks": sizes, "total_s": per_size("total_s"), "read_s": per_size("read_s"),
        "colour_s": per_size("colour_s"), "png_s": per_size("png_s"), "page_s": per_size("page_s"),
        "neighbours_s": per_size("neighbours_s"), "groups_s": per_size("groups_s"),
        "exponent": None if exponent is None else round(exponent, 3),
        "png_mb": per_size("png_bytes", 1e6, 2), "page_mb": per_size("html_bytes", 1e6, 2),
        "import_s": per_size("import_s"),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
