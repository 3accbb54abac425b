"""How fast are spectrograms? Sonufy's stage against librosa one file at a time.

On N generated 30-second mp3 clips (the demo catalog's synthetic music):
  (a) naive: librosa.load then librosa.feature.melspectrogram, one file at a time;
  (b) decode only: soundfile reading each file (the floor for any method);
  (c) Sonufy's stage (decode, resample, mel, checks' statistics, uint8 shards)
      with 1 worker process and with 2.
Each of (c) runs in a fresh child process so that its peak resident memory
(its own plus its workers') is measured alone; (c) with 2 workers is also run
on 3N conversions (the clips reused) to show that memory does not grow with N.

    .venv/bin/python bench/spectrograms.py [--clips 1000]

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BATCH = 128
CACHE = Path(__file__).resolve().parent / "out" / "clips"


def _render(track) -> str:
    from sonufy_demo.synth import PreviewCache

    cache = PreviewCache(CACHE)
    cache.get(track)
    return str(cache.path_for(track))


def make_clips(n: int) -> list[str]:
    """n mp3 clips of the demo catalog, rendered once and kept under bench/out/."""
    from sonufy_demo.synth import build_catalog

    catalog = build_catalog(n)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(_render, catalog, chunksize=8))


def naive(paths: list[str]) -> float:
    import librosa
    import numpy as np

    started = time.perf_counter()
    for path in paths:
        y, sr = librosa.load(path, sr=22050, duration=30.0)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=128, fmax=8000)
        librosa.power_to_db(mel, ref=np.max)
    return len(paths) / (time.perf_counter() - started)


def decode_only(paths: list[str]) -> float:
    import soundfile as sf

    started = time.perf_counter()
    for path in paths:
        sf.read(path, dtype="float32")
    return len(paths) / (time.perf_counter() - started)


def sonufy_stage(paths: list[str], workers: int, repeat: int) -> dict:
    """Run in a child process: the stage over batches, shards written to a temp dir."""
    import polars as pl

    from sonufy_model import spectrograms
    from sonufy_model.audio import MelParams

    params = MelParams()
    files = pl.DataFrame(
        {"track_id": [f"t{i}" for i in range(len(paths) * repeat)], "path": paths * repeat}
    )
    # Start the worker processes before the clock: a run of the pipeline starts
    # them once, whatever the number of batches.
    spectrograms.start_workers(workers)
    with tempfile.TemporaryDirectory() as shards:
        started = time.perf_counter()
        converted = 0
        for offset in range(0, files.height, BATCH):
            batch = spectrograms.convert(files.slice(offset, BATCH), params, workers=workers)
            spectrograms.write_shard(batch, Path(shards), params.set_id)
            converted += len(batch.track_ids)
        seconds = time.perf_counter() - started
    spectrograms.shutdown_pools()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # RUSAGE_CHILDREN gives the largest child, so the workers count at most that each.
    return {"cps": converted / seconds, "converted": converted,
            "peak_rss_mb": (own + children * (workers if workers > 1 else 0)) / 1024}


def _child(workers: int, repeat: int, paths_file: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(workers), str(repeat), paths_file],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        workers, repeat, paths_file = int(args.child[0]), int(args.child[1]), args.child[2]
        print(json.dumps(sonufy_stage(Path(paths_file).read_text().split("\n"), workers, repeat)))
        return 0

    paths = make_clips(args.clips)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(paths))
    print(f"{len(paths)} clips of 30 s in {CACHE}")
    decode_cps = decode_only(paths)
    print(f"(b) decode only:          {decode_cps:7.1f} clips/s")
    naive_cps = naive(paths)
    print(f"(a) naive librosa:        {naive_cps:7.1f} clips/s")
    one = _child(1, 1, handle.name)
    print(f"(c) sonufy, 1 worker:     {one['cps']:7.1f} clips/s   peak RSS {one['peak_rss_mb']:.0f} MB")
    two = _child(2, 1, handle.name)
    print(f"(c) sonufy, 2 workers:    {two['cps']:7.1f} clips/s   peak RSS {two['peak_rss_mb']:.0f} MB")
    three_n = _child(2, 3, handle.name)
    print(f"(c) sonufy, 2 workers, {three_n['converted']} conversions: peak RSS {three_n['peak_rss_mb']:.0f} MB")
    os.unlink(handle.name)
    figures = {
        "bench": "spectrograms",
        "clips": len(paths),
        "naive_cps": round(naive_cps, 2),
        "decode_cps": round(decode_cps, 2),
        "sonufy_cps_1": round(one["cps"], 2),
        "sonufy_cps_2": round(two["cps"], 2),
        "ratio_vs_naive": round(one["cps"] / naive_cps, 2),
        "decode_over_sonufy": round(decode_cps / one["cps"], 2),
        "peak_rss_mb": round(two["peak_rss_mb"], 1),
        "peak_rss_mb_3x_clips": round(three_n["peak_rss_mb"], 1),
    }
    print(f"sonufy (1 worker) / naive = {figures['ratio_vs_naive']}x (target >= 2); "
          f"decode / sonufy = {figures['decode_over_sonufy']}x (target <= 1.6)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
