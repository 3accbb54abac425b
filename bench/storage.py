"""Which store lets readers and the writer run at once: DuckLake, or a published snapshot?

Issue 13's two candidates, measured on the same clustered latents as
bench/search.py (``--n`` vectors, the inverted-file index of
sonufy_model/search.py built once in a DuckDB file through the store's code):

- snapshot: the writer works on its DuckDB file and, after each run, copies
  it to a read-only snapshot that it renames into place (readers keep the copy
  they opened). Measured: the copy-and-rename (its cost is the file's size,
  whatever the run added) and top-10 through the index on the snapshot.
- DuckLake: the same tables as Parquet files plus a SQLite catalog (vectors
  as FLOAT[], the cells sorted by cell, ``--row-group`` rows per Parquet row
  group). Measured: the conversion, top-10 through the same probe on the lake
  (p50/p95, recall@10 against the exact top 10; Sonufy's own search on the
  snapshot beside it), a nightly's append of
  ``--new-share`` new vectors (one commit), top-10 after it, and a writer
  committing batches while two reader processes query: how long each waited,
  and whether every count a reader saw was a whole number of batches.

    .venv/bin/python bench/storage.py [--n 1000000] [--queries 50] [--dir /tmp]

Needs the ducklake and sqlite extensions (pip packages duckdb-extension-ducklake
and duckdb-extension-sqlite 1.5.5, not Sonufy's dependencies) laid out as
DuckDB looks for them, ``<--extensions>/v1.5.5/linux_amd64/ducklake.duckdb_extension``
and ``.../sqlite_scanner.duckdb_extension``:

    pip install --target /tmp/duckext duckdb-extension-ducklake==1.5.5 duckdb-extension-sqlite==1.5.5
    mkdir -p /tmp/duckext_dir/v1.5.5/linux_amd64
    cp /tmp/duckext/duckdb_extension_ducklake/extensions/v1.5.5/ducklake.duckdb_extension \
       /tmp/duckext_dir/v1.5.5/linux_amd64/
    cp /tmp/duckext/duckdb_extension_sqlite/extensions/v1.5.5/sqlite.duckdb_extension \
       /tmp/duckext_dir/v1.5.5/linux_amd64/sqlite_scanner.duckdb_extension

The three searches are timed interleaved, query by query, so that other load
on the machine weighs on each alike. Last line: one JSON object with the
figures (docs/decisions/storage.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from search import clustered_latents, write_space  # noqa: E402  (bench/search.py)

from sonufy_model import search  # noqa: E402
from sonufy_model.store import LATENT_DIM, Store  # noqa: E402

# The index probe of sql/search.sql (search_index_candidates) on lake tables,
# where vectors are FLOAT[] (DuckLake has no fixed-size arrays) and are cast.
LAKE_PROBE = """
WITH q AS NOT MATERIALIZED (SELECT $v::FLOAT[256] AS v),
probe AS NOT MATERIALIZED (
    SELECT c.cell FROM lake.search_centroids AS c, q
    ORDER BY array_inner_product(c.centroid::FLOAT[256], q.v) DESC LIMIT {nprobe}
)
SELECT s.track_id, t.title, array_inner_product(s.unit::FLOAT[256], q.v) AS score
FROM lake.search_cells AS s JOIN lake.tracks AS t USING (track_id), q
WHERE s.cell IN (SELECT cell FROM probe)
ORDER BY score DESC, s.track_id LIMIT 10
"""


def lake_connect(extensions: str, catalog: Path, data: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"extension_directory": extensions, "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": True})
    # WAL: SQLite readers never wait for the catalog's writer (without it a
    # reader failed with "database is locked" while the writer committed).
    con.execute(f"ATTACH 'ducklake:sqlite:{catalog}' AS lake (DATA_PATH '{data}/', META_JOURNAL_MODE 'WAL', "
                "META_BUSY_TIMEOUT 10000)")
    return con


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def reader(extensions, catalog, data, queries_file, batch, stop_file):
    """Query the lake until stop_file exists (its own process): latencies, and the counts of written rows seen."""
    queries = np.load(queries_file)
    con = lake_connect(extensions, catalog, data)
    print("ready", flush=True)
    ms, seen, i = [], set(), 0
    while not os.path.exists(stop_file) or i < 5:
        q = queries[i % len(queries)]
        started = time.perf_counter()
        con.execute(LAKE_PROBE.format(nprobe=8), {"v": q}).fetchall()
        [(count,)] = con.execute("SELECT count(*) FROM lake.search_cells WHERE cell = -1").fetchall()
        ms.append((time.perf_counter() - started) * 1000)
        seen.add(count)
        i += 1
    print(json.dumps({"ms": ms, "seen": sorted(seen), "whole": all(c % batch == 0 for c in seen)}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--new-share", type=float, default=0.01)
    parser.add_argument("--row-group", type=int, default=2048, help="Parquet rows per row group in the lake")
    parser.add_argument("--extensions", default="/tmp/duckext_dir")
    parser.add_argument("--concurrency-s", type=float, default=20.0)
    parser.add_argument("--dir", help="where the temporary folder goes")
    parser.add_argument("--workdir", help="a folder kept between runs: the DuckDB file and the lake are reused")
    parser.add_argument("--reader", nargs=4, help=argparse.SUPPRESS)  # catalog data queries.npy stop-file
    args = parser.parse_args(argv)
    if args.reader:
        catalog, data, queries_file, stop_file = args.reader
        return reader(args.extensions, catalog, data, queries_file, 500, stop_file)
    result: dict = {"bench": "storage", "n": args.n}

    with (contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory(dir=args.dir)) as tmp:
        tmp_path = Path(tmp)
        tmp_path.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        vectors = clustered_latents(args.n, args.clusters, rng)
        store = Store(tmp_path / "store.duckdb")
        if not store.path.exists():
            started = time.perf_counter()
            write_space(store, vectors)
            result["native_write_s"] = round(time.perf_counter() - started, 1)
            built = search.build_index(store)
            result["native_index_s"] = round(built["build_seconds"], 1)
            with duckdb.connect(str(store.path)) as con:
                con.execute("CHECKPOINT")
        state = search.index_state(store)
        built = {"cells": state.cells, "nprobe": state.nprobe}
        result.update(cells=state.cells, nprobe=state.nprobe)
        result["native_mib"] = round(store.path.stat().st_size / 2**20, 1)
        print(json.dumps(result), flush=True)

        picks = rng.choice(args.n, args.queries, replace=False)
        queries = vectors[picks] + 0.3 * rng.standard_normal((args.queries, LATENT_DIM), dtype=np.float32)
        units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        exact = []
        for q in queries:
            scores = units @ (q / np.linalg.norm(q))
            best = np.argpartition(-scores, 10)[:10]
            exact.append({f"t{i:08d}" for i in best})

        # -- snapshot: copy the file, rename it into place --------------------
        snapshot = tmp_path / "published.duckdb"
        started = time.perf_counter()
        shutil.copyfile(store.path, tmp_path / ".published.tmp")
        os.fsync(os.open(tmp_path / ".published.tmp", os.O_RDONLY))
        os.replace(tmp_path / ".published.tmp", snapshot)
        result["snapshot_publish_s"] = round(time.perf_counter() - started, 2)
        snap = Store(snapshot, reader=True)
        result["snapshot_mib"] = round(snapshot.stat().st_size / 2**20, 1)

        # -- DuckLake on a SQLite catalog ------------------------------------
        catalog, data = tmp_path / "lake.sqlite", tmp_path / "lake"
        for old in (catalog, catalog.with_name(catalog.name + "-wal"), catalog.with_name(catalog.name + "-shm")):
            old.unlink(missing_ok=True)  # the lake is made anew each run (the DuckDB file is reused)
        shutil.rmtree(data, ignore_errors=True)
        con = lake_connect(args.extensions, catalog, data)
        con.execute(f"ATTACH '{store.path}' AS src (READ_ONLY)")
        con.execute(f"CALL lake.set_option('parquet_row_group_size', {args.row_group})")
        started = time.perf_counter()
        con.execute("CREATE TABLE lake.tracks AS SELECT track_id, title, artist FROM src.tracks")
        con.execute("CREATE TABLE lake.embeddings AS SELECT track_id, model_version, vector::FLOAT[] AS vector, "
                    "created_at FROM src.embeddings")
        con.execute("CREATE TABLE lake.search_centroids AS SELECT cell, centroid::FLOAT[] AS centroid "
                    "FROM src.search_centroids")
        con.execute("CREATE TABLE lake.search_cells AS SELECT cell, track_id, unit::FLOAT[] AS unit "
                    "FROM src.search_cells ORDER BY cell")
        result["lake_convert_s"] = round(time.perf_counter() - started, 1)
        con.execute("DETACH src")
        result["lake_mib"] = round(sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 2**20, 1)

        # -- top-10, interleaved query by query so that the machine's other
        # load weighs on each the same: the full search on the snapshot
        # (sonufy_model.search.similar, what `sonufy recommend` runs), the
        # bare probe on the snapshot's tables, the bare probe on the lake.
        native = duckdb.connect(str(snapshot), read_only=True)  # the instance stays cached (as bench/search.py)
        bare_native = LAKE_PROBE.replace("lake.", "").format(nprobe=built["nprobe"])
        bare_lake = LAKE_PROBE.format(nprobe=built["nprobe"])
        ways = {
            "snapshot_search": lambda q: search.similar(snap, vector=q, k=10)["track_id"].to_list(),
            "snapshot_probe": lambda q: [r[0] for r in native.execute(bare_native, {"v": q}).fetchall()],
            "lake_probe": lambda q: [r[0] for r in con.execute(bare_lake, {"v": q}).fetchall()],
        }

        def timed_all(names):
            ms, hits = {n: [] for n in names}, {n: [] for n in names}
            for q in queries:  # warm-up
                for name in names:
                    ways[name](q)
            for q, truth in zip(queries, exact):
                for name in names:
                    t0 = time.perf_counter()
                    ids = ways[name](q)
                    ms[name].append((time.perf_counter() - t0) * 1000)
                    hits[name].append(len(set(ids) & truth) / 10)
            for name in names:
                p50, p95 = percentiles(ms[name])
                result[f"{name}_p50_ms"], result[f"{name}_p95_ms"] = round(p50, 1), round(p95, 1)
                result[f"{name}_recall"] = round(float(np.mean(hits[name])), 3)

        timed_all(list(ways))
        print(json.dumps(result), flush=True)

        # a nightly: new_share new vectors into embeddings and their cells, one commit
        new = int(args.n * args.new_share)
        fresh = clustered_latents(new, 300, np.random.default_rng(1))
        ids = [f"n{i:08d}" for i in range(new)]
        centroids = np.asarray(con.execute("SELECT centroid FROM lake.search_centroids ORDER BY cell").fetchnumpy()
                               ["centroid"].tolist(), dtype=np.float32)
        cells_of = np.asarray(con.execute("SELECT cell FROM lake.search_centroids ORDER BY cell").fetchnumpy()["cell"])
        unit = fresh / np.linalg.norm(fresh, axis=1, keepdims=True)
        nearest = cells_of[np.argmax(unit @ centroids.T, axis=1)]
        batch = pl.DataFrame({"track_id": ids, "cell": nearest}).with_columns(
            pl.Series("vector", fresh, dtype=pl.List(pl.Float32)),
            pl.Series("unit", unit.astype(np.float32), dtype=pl.List(pl.Float32)))
        con.register("batch", batch.to_arrow())
        started = time.perf_counter()
        con.begin()
        con.execute("INSERT INTO lake.tracks SELECT track_id, 'new ' || track_id, 'a' FROM batch")
        con.execute("INSERT INTO lake.embeddings SELECT track_id, 'bench', vector, now() FROM batch")
        con.execute("INSERT INTO lake.search_cells SELECT cell, track_id, unit FROM batch ORDER BY cell")
        con.commit()
        result["lake_nightly_append_s"] = round(time.perf_counter() - started, 2)
        timed_all(["lake_probe"])  # after the append: the new file is scanned too
        result["lake_after_append_p50_ms"] = result["lake_probe_p50_ms"]
        print(json.dumps(result), flush=True)

        # -- a writer and two readers at once ---------------------------------
        per_batch = 500
        np.save(tmp_path / "queries.npy", queries[:10])
        stop_file = tmp_path / "stop"
        readers = [subprocess.Popen([sys.executable, __file__, "--extensions", args.extensions, "--reader",
                                     str(catalog), str(data), str(tmp_path / "queries.npy"), str(stop_file)],
                                    stdout=subprocess.PIPE, text=True) for _ in range(2)]
        for p in readers:
            assert p.stdout.readline().strip() == "ready"
        stop_at = time.time() + args.concurrency_s
        commit_ms, batches = [], 0
        while time.time() < stop_at:
            rows = pl.DataFrame({"cell": [-1] * per_batch, "track_id": [f"w{batches}-{i}" for i in range(per_batch)]}
                                ).with_columns(pl.Series("unit", units[:per_batch], dtype=pl.List(pl.Float32)))
            con.register("rows", rows.to_arrow())
            t0 = time.perf_counter()
            con.execute("INSERT INTO lake.search_cells SELECT cell, track_id, unit FROM rows")
            commit_ms.append((time.perf_counter() - t0) * 1000)
            batches += 1
        stop_file.touch()
        outputs = [p.communicate(timeout=120)[0] for p in readers]
        if not all(o.strip() for o in outputs):
            raise SystemExit("a reader failed (its error is above)")
        seen = [json.loads(o.splitlines()[-1]) for o in outputs]
        reader_ms = [m for s in seen for m in s["ms"]]
        result.update(
            concurrent_batches=batches, concurrent_commit_p50_ms=round(percentiles(commit_ms)[0], 1),
            concurrent_commit_max_ms=round(max(commit_ms), 1),
            concurrent_reader_queries=len(reader_ms), concurrent_reader_p50_ms=round(percentiles(reader_ms)[0], 1),
            concurrent_reader_max_ms=round(max(reader_ms), 1),
            concurrent_states_seen=[len(s["seen"]) for s in seen],
            concurrent_whole_batches=all(s["whole"] for s in seen),
        )
        con.close()
        native.close()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
