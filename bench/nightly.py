"""How long does a nightly refresh take, next to the build it refreshes?

Builds the stand-in's demo catalog of ``--tracks`` tracks (training
time-boxed to ``--train-s``: the bench measures the nightly, not training),
then runs two nightly refreshes, each as its own process as a deployment
would (imports included): one on a catalog that has gained ``--new-share``
new releases (found with tag:new), one on the same catalog again (nothing
new). A temporary local Prefect API serves every run.

    .venv/bin/python bench/nightly.py [--tracks 5000] [--new-share 0.01] [--train-s 60]

Targets: the 1 % nightly within 5 % of the build's time; the empty nightly
under 30 s. Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]


def nightly(db: Path, tracks: int, new_tracks: int, api_url: str) -> tuple[float, dict]:
    """Wall seconds of a nightly in a fresh process, and its result."""
    code = (
        "import json, sys; from flows.nightly import nightly_refresh; "
        f"r = nightly_refresh(source='standin', db={str(db)!r}, demo_tracks={tracks}, "
        f"demo_new_tracks={new_tracks}); print('RESULT ' + json.dumps(r, default=str))"
    )
    env = {**os.environ, "PREFECT_API_URL": api_url}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"nightly failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return seconds, json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=5000)
    parser.add_argument("--new-share", type=float, default=0.01)
    parser.add_argument("--train-s", type=float, default=60.0)
    parser.add_argument("--workdir", help="keep the database here (default: a temporary directory)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.build import build

    new_tracks = max(1, round(args.tracks * args.new_share))
    with tempfile.TemporaryDirectory(prefix="sonufy-bench-nightly-") as tmp, \
            prefect_test_harness(server_startup_timeout=120):
        db = Path(args.workdir or tmp) / "sonufy.duckdb"
        api_url = prefect.settings.PREFECT_API_URL.value()
        started = time.perf_counter()
        built = build(source="standin", db=str(db), demo_tracks=args.tracks,
                      training={"max_time_s": args.train_s, "max_epochs": 2})
        build_s = time.perf_counter() - started
        print(f"build: {args.tracks} tracks, {built['counts'].get('total_embeddings')} encoded, {build_s:.1f} s",
              flush=True)
        new_s, new_result = nightly(db, args.tracks, new_tracks, api_url)
        print(f"nightly with {new_tracks} new releases: {new_result['added']} added, {new_s:.1f} s "
              f"({new_s / build_s:.2%} of the build); stages: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in new_result["timings"].items()), flush=True)
        empty_s, empty_result = nightly(db, args.tracks, new_tracks, api_url)
        print(f"nightly with nothing new: {empty_result['added']} added, {empty_s:.1f} s "
              f"({empty_s / build_s:.2%} of the build); stages: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in empty_result["timings"].items()), flush=True)
    print(json.dumps({
        "bench": "nightly",
        "build_s": round(build_s, 1),
        "nightly_1pct_ratio": round(new_s / build_s, 4),
        "nightly_empty_s": round(empty_s, 1),
        "tracks": args.tracks,
        "new_tracks": new_tracks,
        "added": new_result["added"],
        "nightly_1pct_s": round(new_s, 1),
        "nightly_empty_ratio": round(empty_s / build_s, 4),
    }))


if __name__ == "__main__":
    main()
