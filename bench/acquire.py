"""Acquisition benchmark: scrape and fetch a stand-in catalog, concurrent against sequential.

Starts the stand-in in its own process (``python -m sonufy_demo.standin``,
so that it does not share the GIL with the client) with added latency and
injected faults, after warming its preview cache (rendering synthetic music
is not what is measured). Then, in the same run, against the same server:

- concurrent: the demo's genre queries scraped concurrently
  (``catalog.fetch_search_pages``), then every track fetched, checked by the
  downloads suite and recorded in DuckDB (``previews.fetch_previews`` and
  ``previews.record_outcomes``, what the fetch stage's tasks run on a batch;
  here every track is one batch) with the default 64 tracks in flight;
- sequential: the same code with one request at a time (Spotify concurrency
  1, one track in flight, one connection), on a subset: the first page (10
  results) of each query, about 120 tracks, since 2,000 one at a time would
  take minutes.

Tracks/s is tracks over wall time of scrape + fetch + record. "Lost" counts
catalog tracks the scrape did not find, plus scraped tracks that ended
neither downloaded nor quarantined; quarantined tracks are reported apart.

    .venv/bin/python bench/acquire.py            # 2,000 tracks, 50 ms, 5 % faults

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import polars as pl

from sonufy_demo.synth import STYLES, PreviewCache, build_catalog
from sonufy_model import catalog, previews, quality
from sonufy_model.config import ServiceSettings
from sonufy_model.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "sonufy-bench-standin-cache"


def _render(job: tuple[str, object]) -> None:
    directory, track = job
    PreviewCache(Path(directory)).get(track)


def warm_cache(n_tracks: int, seed: int, cache_dir: Path, workers: int) -> tuple[int, float]:
    """Render every preview the stand-in will serve, once, in parallel processes."""
    tracks = build_catalog(n_tracks, seed=seed, today=datetime.date.today())
    cache = PreviewCache(cache_dir)
    missing = [track for track in tracks if not cache.path_for(track).exists()]
    started = time.perf_counter()
    if missing:
        context = multiprocessing.get_context("spawn")  # no fork of a process with polars' and DuckDB's threads
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_render, [(str(cache_dir), track) for track in missing], chunksize=16))
    return len(missing), time.perf_counter() - started


def fault_flags(rate: float) -> dict[str, float]:
    """About ``rate`` of requests fail: API calls (429, 5xx, reset, Deezer quota), downloads (reset,
    truncated, not audio)."""
    return {
        "--rate-429": rate / 4,
        "--rate-5xx": rate / 4,
        "--reset-rate": rate / 4,
        "--deezer-quota-rate": rate / 4,
        "--truncate-share": rate * 3 / 8,
        "--garbage-share": rate * 3 / 8,
    }


class StandInProcess:
    def __init__(self, args: argparse.Namespace):
        command = [
            sys.executable, "-m", "sonufy_demo.standin", "--port", "0",
            "--tracks", str(args.tracks), "--seed", str(args.seed), "--cache-dir", str(args.cache_dir),
            "--latency-ms", str(args.latency_ms), "--retry-after", "1", "--fault-seed", str(args.seed),
        ]
        for flag, value in fault_flags(args.fault_rate).items():
            command += [flag, f"{value:.5f}"]
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        banner = self.process.stdout.readline()
        if " on " not in banner:
            self.stop()
            raise RuntimeError(f"the stand-in did not start: {banner!r}")
        self.base_url = banner.split(" on ")[1].split()[0]
        self.client_id = self.client_secret = None
        for line in iter(self.process.stdout.readline, ""):
            if "client id" in line:
                self.client_id = line.split()[-1]
            if "client secret" in line:
                self.client_secret = line.split()[-1]
                break

    def settings(self, **changes) -> ServiceSettings:
        return ServiceSettings(
            spotify_client_id=self.client_id,
            spotify_client_secret=self.client_secret,
            spotify_api_base=self.base_url,
            spotify_accounts_base=self.base_url,
            deezer_api_base=f"{self.base_url}/deezer",
            **changes,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def acquire(settings: ServiceSettings, queries: list[str], items_per_query: int | None, workdir: Path) -> dict:
    """Scrape, then fetch and record every scraped track; figures of the run."""
    store = Store(workdir / "sonufy.duckdb")
    started = time.perf_counter()
    pages = catalog.fetch_search_pages(settings, queries, items_per_query)
    tracks, _ = catalog.parse_search_pages(pages)
    store.upsert_tracks(tracks)
    scraped_s = time.perf_counter() - started
    pending = store.tracks_without_preview(settings.fetch_max_attempts)
    totals, _ = previews.record_outcomes(store, previews.fetch_previews(pending, settings, workdir / "previews"),
                                         settings=settings)
    elapsed = time.perf_counter() - started
    con = duckdb.connect(str(store.path), read_only=True)
    downloaded, quarantined, unaccounted = con.execute(
        """
        SELECT (SELECT count(*) FROM previews),
               (SELECT count(*) FROM quarantine WHERE stage = 'fetch'),
               (SELECT count(*) FROM tracks AS t
                WHERE t.track_id NOT IN (SELECT track_id FROM previews)
                  AND t.track_id NOT IN (SELECT track_id FROM quarantine WHERE stage = 'fetch'))
        """
    ).fetchone()
    reasons = con.execute(
        "SELECT reason FROM quarantine WHERE stage = 'fetch' ORDER BY track_id LIMIT 5"
    ).fetchall()
    con.close()
    return {
        "tracks": tracks.height,
        "pages": len(pages),
        "scrape_s": scraped_s,
        "seconds": elapsed,
        "tps": tracks.height / elapsed,
        "downloaded": downloaded,
        "quarantined": quarantined,
        "unaccounted": unaccounted,
        "track_ids": set(tracks["track_id"]),
        "reasons": [r[0] for r in reasons],
        "totals": totals,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=2000, help="stand-in catalog size (default 2000)")
    parser.add_argument("--latency-ms", type=int, default=50, help="added to every request (default 50)")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="share of requests that fail (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=64, help="tracks in flight, concurrent run (default 64)")
    parser.add_argument("--sequential-items-per-query", type=int, default=10,
                        help="results per genre query in the sequential run (default 10: one page)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"rendered previews, kept between runs (default {DEFAULT_CACHE})")
    args = parser.parse_args(argv)

    rendered, render_s = warm_cache(args.tracks, args.seed, args.cache_dir, os.cpu_count() or 2)
    print(f"preview cache: {rendered} rendered in {render_s:.1f} s (not measured), {args.cache_dir}", flush=True)
    quality.check_downloads(pl.DataFrame(schema=previews.DOWNLOAD_STATS_SCHEMA))  # load Great Expectations first

    standin = StandInProcess(args)
    queries = [f'genre:"{style}"' for style in STYLES]
    try:
        print(
            f"stand-in {standin.base_url} (pid {standin.process.pid}): {args.tracks} tracks, "
            f"{args.latency_ms} ms added latency, {args.fault_rate:.0%} faults "
            f"({', '.join(f'{k[2:]} {v:.2%}' for k, v in fault_flags(args.fault_rate).items())})",
            flush=True,
        )
        common = {"deezer_quota_wait_s": 1.0}
        fast = standin.settings(
            spotify_concurrency=len(queries), spotify_rate_per_s=10_000.0, deezer_rate_per_s=100_000.0,
            download_concurrency=args.concurrency, download_per_host=args.concurrency, **common,
        )
        slow = standin.settings(
            spotify_concurrency=1, spotify_rate_per_s=10_000.0, deezer_rate_per_s=100_000.0,
            download_concurrency=1, download_per_host=1, **common,
        )
        with tempfile.TemporaryDirectory(prefix="sonufy-bench-") as work:
            (Path(work) / "concurrent").mkdir()
            (Path(work) / "sequential").mkdir()
            fast_run = acquire(fast, queries, None, Path(work) / "concurrent")
            slow_run = acquire(slow, queries, args.sequential_items_per_query, Path(work) / "sequential")
    finally:
        standin.stop()

    catalog_ids = {t.track_id for t in build_catalog(args.tracks, seed=args.seed, today=datetime.date.today())}
    lost = len(catalog_ids - fast_run["track_ids"]) + fast_run["unaccounted"] + slow_run["unaccounted"]
    ratio = fast_run["tps"] / slow_run["tps"]
    for name, run, note in (
        ("concurrent", fast_run, f"{args.concurrency} tracks in flight, {len(queries)} queries at once"),
        ("sequential", slow_run, f"one request at a time, first {args.sequential_items_per_query} results per query"),
    ):
        print(
            f"{name:>10}: {run['tracks']} tracks ({run['pages']} pages, scraped in {run['scrape_s']:.1f} s), "
            f"{run['downloaded']} downloaded, {run['quarantined']} quarantined, {run['unaccounted']} unaccounted, "
            f"{run['seconds']:.1f} s: {run['tps']:.1f} tracks/s [{note}]",
            flush=True,
        )
        for reason in run["reasons"]:
            print(f"            quarantined: {reason}")
    print(f"     ratio: {ratio:.1f}x (target >= 20x); lost: {lost} (target 0)")
    print(json.dumps({
        "bench": "acquire",
        "tracks": fast_run["tracks"],
        "concurrent_tps": round(fast_run["tps"], 1),
        "sequential_tps": round(slow_run["tps"], 2),
        "ratio": round(ratio, 1),
        "lost": lost,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
