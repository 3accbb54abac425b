"""How fast is top-10 search in the latent space, and how fast is encoding?

Writes ``--n`` clustered 256-d vectors (a mixture of a few thousand Gaussian
clusters of varied size and spread, standardised per dimension like the real
latents) into a DuckDB file through the store's own code path (tracks,
models, embeddings), builds the inverted-file index, then times 100 top-10
queries (vectors of tracks, perturbed) three ways:

- index: ``sonufy_model.search.similar`` through the index,
- exact SQL: the same with ``use_index=False`` (a full scan in DuckDB),
- numpy: normalised matrix product over the same vectors in memory, the
  same-run baseline every ratio is against.

Queries run with the database already open in the process (DuckDB reuses the
open instance); the time to open the file cold is reported apart.
Recall@10 is the index's overlap with the exact top 10. Encoding throughput:
synthetic uint8 spectrogram shards (tracks x 128 x 512) read back through
``read_spectrograms`` and encoded by a freshly initialised autoencoder
(``encode_spectrograms`` + ``mean_per_track``).

    .venv/bin/python bench/search.py [--n 1000000] [--queries 100] [--encode-tracks 256]

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonufy_model import search  # noqa: E402
from sonufy_model.schemas import TRACK_SCHEMA  # noqa: E402
from sonufy_model.store import LATENT_DIM, Store  # noqa: E402
from sonufy_model.training import TrainConfig  # noqa: E402

CHUNK = 100_000


def clustered_latents(n: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """n float32 vectors from a mixture of Gaussian clusters, standardised per dimension."""
    centres = rng.standard_normal((clusters, LATENT_DIM)).astype(np.float32)
    weights = rng.pareto(1.5, clusters) + 1.0  # a few big clusters, many small ones
    weights /= weights.sum()
    spread = rng.uniform(0.4, 1.2, clusters).astype(np.float32)
    labels = rng.choice(clusters, n, p=weights)
    out = np.empty((n, LATENT_DIM), np.float32)
    for start in range(0, n, CHUNK):
        part = labels[start : start + CHUNK]
        noise = rng.standard_normal((len(part), LATENT_DIM), dtype=np.float32)
        out[start : start + CHUNK] = centres[part] + spread[part, None] * noise
    out -= out.mean(axis=0)
    out /= out.std(axis=0)
    return out


def write_space(store: Store, vectors: np.ndarray) -> None:
    n = len(vectors)
    store.register_model(
        {"model_version": "bench", "set_id": "bench", "config": {}, "checkpoint": "none", "epochs": 0,
         "train_mse": None, "val_mse": None, "n_train_tracks": 0, "n_val_tracks": 0, "train_seconds": 0.0,
         "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM)},
        promote=False,
    )
    for start in range(0, n, CHUNK):
        ids = [f"t{i:08d}" for i in range(start, min(n, start + CHUNK))]
        m = len(ids)
        store.upsert_tracks(pl.DataFrame(
            {"track_id": ids, "source": ["spotify"] * m, "title": [f"title {i}" for i in ids],
             "artist": [f"artist {int(i[1:]) % 50_000}" for i in ids], "artists": None, "artist_id": None,
             "album": None, "album_id": None, "release_date": None, "duration_ms": None, "isrc": None,
             "explicit": None, "popularity": None, "uri": None, "preview_url": None, "path": None,
             "found_by": None},
            schema=TRACK_SCHEMA,
        ))
        part = vectors[start : start + m]
        store.record_embeddings(pl.DataFrame({"track_id": ids, "model_version": ["bench"] * m}).with_columns(
            pl.Series("raw", part, dtype=pl.Array(pl.Float32, LATENT_DIM)),
            pl.Series("vector", part, dtype=pl.Array(pl.Float32, LATENT_DIM)),
        ))
    store.promote("bench")


def timed(fn, queries) -> tuple[list[float], list]:
    times, results = [], []
    for q in queries:
        started = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - started) * 1000)
    return times, results


def encode_throughput(tracks: int, directory: Path, encode_tiles: int) -> float:
    import torch

    from sonufy_model.encoding import encode_spectrograms, mean_per_track
    from sonufy_model.model import TimeFreqAutoencoder
    from sonufy_model.spectrograms import read_spectrograms

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []
    for shard_number, start in enumerate(range(0, tracks, 128)):
        count = min(128, tracks - start)
        shard = directory / f"shard-{shard_number}.npy"
        np.save(shard, rng.integers(0, 256, (count, 128, 512), dtype=np.uint8))
        rows += [{"track_id": f"e{start + i}", "shard": str(shard), "row": i} for i in range(count)]
    manifest = pl.DataFrame(rows)
    model = TimeFreqAutoencoder(encode_tiles=encode_tiles).eval()
    encode_spectrograms(model, read_spectrograms(manifest.head(2)))  # warm-up
    started = time.perf_counter()
    per_clip = encode_spectrograms(model, read_spectrograms(manifest))
    mean_per_track(manifest["track_id"], per_clip)
    return tracks / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors (default: 1,000,000)")
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--cells", type=int, help="index cells (default: search.default_cells)")
    parser.add_argument("--nprobe", type=int, help="cells probed (default: search.default_nprobe)")
    parser.add_argument("--sweep", type=int, nargs="*", default=[],
                        help="also time the index at these nprobe values (p50 and recall@10 each)")
    parser.add_argument("--encode-tracks", type=int, default=256, help="tracks for encoding throughput (0: skip)")
    parser.add_argument("--dir", help="where to write the DuckDB file (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp_path = Path(tmp)
        rng = np.random.default_rng(0)
        vectors = clustered_latents(args.n, args.clusters, rng)
        store = Store(tmp_path / "search.duckdb")
        started = time.perf_counter()
        write_space(store, vectors)
        print(f"wrote {args.n:,} tracks and vectors in {time.perf_counter() - started:.1f} s", flush=True)

        built = search.build_index(store, cells=args.cells, nprobe=args.nprobe)
        print(f"index: {built['cells']} cells, nprobe {built['nprobe']}, built in {built['build_seconds']:.1f} s",
              flush=True)

        picks = rng.choice(args.n, args.queries, replace=False)
        queries = vectors[picks] + 0.3 * rng.standard_normal((args.queries, LATENT_DIM), dtype=np.float32)

        started = time.perf_counter()
        duckdb.connect(str(store.path)).close()
        open_ms = (time.perf_counter() - started) * 1000
        keep_open = duckdb.connect(str(store.path))  # the instance stays cached while a connection is open
        try:
            def top10(q, use_index):
                return search.similar(store, vector=q, k=10, use_index=use_index)["track_id"].to_list()

            # Warm-up: every query once through the index (its cells into
            # DuckDB's buffer pool, as in a running service), one exact scan.
            timed(lambda q: top10(q, True), queries)
            top10(queries[0], False)
            index_ms, index_ids = timed(lambda q: top10(q, True), queries)
            exact_ms, exact_ids = timed(lambda q: top10(q, False), queries)
            sweep = {}
            for probes in args.sweep:
                # The probe count bound now: timed() calls it at once, within this iteration.
                ms, ids = timed(lambda q, probes=probes: search.similar(store, vector=q, k=10,
                                                                        nprobe=probes)["track_id"].to_list(),
                                queries)
                sweep[probes] = (float(np.percentile(ms, 50)),
                                 float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])))
        finally:
            keep_open.close()

        units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        del vectors

        def numpy_top10(q):
            scores = units @ (q / np.linalg.norm(q))
            best = np.argpartition(-scores, 10)[:10]
            return best[np.argsort(-scores[best])]

        numpy_ms, numpy_ids = timed(numpy_top10, queries)
        numpy_named = [[f"t{i:08d}" for i in ids] for ids in numpy_ids]
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(index_ids, exact_ids)]))
        agree = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids, numpy_named)]))
        size_mb = store.path.stat().st_size / 2**20

        encode_tps = None
        if args.encode_tracks:
            # A new model version's tile count, and the seed's 32 as the baseline.
            encode_tps = encode_throughput(args.encode_tracks, tmp_path, TrainConfig.encode_tiles)
            seed_tps = encode_throughput(args.encode_tracks, tmp_path, 32)

    p50 = lambda ms: float(np.percentile(ms, 50))  # noqa: E731
    p95 = lambda ms: float(np.percentile(ms, 95))  # noqa: E731
    print(f"top-10 over {args.n:,} vectors, {args.queries} queries (p50 / p95 ms):")
    print(f"  index      {p50(index_ms):8.1f} / {p95(index_ms):8.1f}   {p50(index_ms) / p50(numpy_ms):6.2f}x numpy")
    print(f"  exact SQL  {p50(exact_ms):8.1f} / {p95(exact_ms):8.1f}   {p50(exact_ms) / p50(numpy_ms):6.2f}x numpy")
    print(f"  numpy      {p50(numpy_ms):8.1f} / {p95(numpy_ms):8.1f}")
    print(f"recall@10 of the index vs exact: {recall:.3f}; exact SQL vs numpy overlap: {agree:.3f}")
    for probes, (ms, swept_recall) in sweep.items():
        print(f"  nprobe {probes:4d}: p50 {ms:8.1f} ms, recall@10 {swept_recall:.3f}")
    print(f"index build {built['build_seconds']:.1f} s; file {size_mb:,.0f} MiB; cold open {open_ms:.0f} ms")
    if encode_tps is not None:
        print(f"encoding: {encode_tps:.1f} tracks/s ({args.encode_tracks} tracks, {TrainConfig.encode_tiles} tiles "
              f"each); the seed's 32 tiles: {seed_tps:.1f} tracks/s ({encode_tps / seed_tps:.1f}x)")
    result = {
        "bench": "search", "n": args.n,
        "index_p50_ms": round(p50(index_ms), 2), "index_p95_ms": round(p95(index_ms), 2),
        "exact_sql_p50_ms": round(p50(exact_ms), 2), "numpy_p50_ms": round(p50(numpy_ms), 2),
        "recall_at_10": round(recall, 4), "index_build_s": round(built["build_seconds"], 2),
        "encode_tps": round(encode_tps, 1) if encode_tps is not None else None,
        "index_vs_numpy": round(p50(index_ms) / p50(numpy_ms), 2),
        "exact_sql_vs_numpy": round(p50(exact_ms) / p50(numpy_ms), 2),
        "cells": built["cells"], "nprobe": built["nprobe"], "file_mib": round(size_mb, 1),
        "open_ms": round(open_ms, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
