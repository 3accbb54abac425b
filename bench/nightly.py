"""How long does the build take, stage by stage, and a nightly refresh next to it?

First synthesises the audio of every track the stand-in will serve (the
catalog of ``--tracks`` tracks and the nightly's new releases) into the
build's preview cache, outside any timing: the stand-in plays Spotify and
Deezer, whose audio exists before anyone asks for it, so rendering it is no
part of Sonufy's build (it took about half of this bench's build figure
before). Then builds the stand-in's catalog (training time-boxed to
``--train-s``: training is timed but left out of the build's tracks/s) and
prints seconds and tracks/s for every stage: the tracks the build encoded
over the stage's seconds. Then runs ``--repeats`` rounds (3) of nightly
refreshes, each night as its own process as a deployment would (imports
included) and each round on fresh copies of the built store: one night on a
catalog that has gained ``--new-share`` new releases (found with tag:new),
one on the same catalog again (nothing new). A night on this machine moves
by a second or two from run to run, so the figures are the rounds' medians,
each with its range over the rounds (``*_range``: least, most). The nights
talk to a stand-in already running in this process, as a deployment's
nightly talks to Spotify and Deezer (``--source spotify`` with the stand-in's
endpoints in the environment): a night does not pay for starting the
services it calls (the 20,000-track stand-in's catalog takes about 2 s to
make). A temporary local Prefect API
serves every run.

    .venv/bin/python bench/nightly.py [--tracks 5000] [--new-share 0.01] [--train-s 60] [--repeats 3]

Targets: at least 20 tracks/s end to end, training excluded (build_tps:
tracks encoded over the build's wall time less the train stage); the 1 %
nightly within 5 % of the build's time; the empty nightly under 10 s; the
nightly's seconds per new track (the 1 % night less the empty one, over the
tracks it added: ``nightly_s_per_new_track``) flat from 2,000 to 20,000
tracks. Last line: one JSON object with the figures, ``stages`` the seconds
per stage of the build, ``nightly_stages`` and ``nightly_empty_stages``
those of the two nights.

A night with work pays some costs once whatever it adds (Great Expectations'
import, the spectrogram workers, torch and the model, the redraw), which the
empty night does not pay, so ``nightly_s_per_new_track`` still carries them
over a small night's few tracks. A third night of each round, on another
copy of the store as the build left it, adds ``--marginal-factor`` times as
many releases (3 by default; 0 skips it); the slope between the round's two
nights with work is what one more new track costs
(``nightly_marginal_s_per_new_track``), and what is left of the 1 % night at
zero tracks is a busy night's fixed cost (``nightly_busy_fixed_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]


def service_environment(settings) -> dict[str, str]:
    """The environment that points ``--source spotify`` at a running stand-in (``settings``: its own)."""
    return {
        "SPOTIFY_CLIENT_ID": settings.spotify_client_id,
        "SPOTIFY_CLIENT_SECRET": settings.spotify_client_secret.get_secret_value(),
        "SONUFY_SPOTIFY_API_BASE": settings.spotify_api_base,
        "SONUFY_SPOTIFY_ACCOUNTS_BASE": settings.spotify_accounts_base,
        "SONUFY_DEEZER_API_BASE": settings.deezer_api_base,
    }


def nightly(db: Path, api_url: str, service_env: dict[str, str]) -> tuple[float, dict]:
    """Wall seconds of a nightly in a fresh process against the running
    stand-in ``service_env`` points at, and its result."""
    code = (
        "import json, sys; from flows.nightly import nightly_refresh; "
        f"r = nightly_refresh(source='spotify', db={str(db)!r}); print('RESULT ' + json.dumps(r, default=str))"
    )
    env = {**os.environ, **service_env, "PREFECT_API_URL": api_url}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"nightly failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return seconds, json.loads(line[len("RESULT "):])


def copy_store(db: Path, to: Path) -> None:
    """The store ``db`` again at ``to``: the DuckDB file, its write-ahead log
    and its published snapshot copied; the files of its data folder (previews,
    spectrogram shards, models: up to gigabytes at 20,000 tracks) hard-linked,
    since a run adds files there or replaces them whole, never writes into one."""
    import shutil

    from sonufy_model.config import Paths

    to.parent.mkdir(parents=True, exist_ok=True)
    for path in (db, db.with_name(db.name + ".wal")):
        if path.exists():
            shutil.copy2(path, to.with_name(path.name))
    snapshots = db.with_name(f"{db.stem}.snapshot")  # the published copy readers open (Store.snapshot_path)
    if snapshots.is_dir():
        shutil.copytree(snapshots, to.with_name(f"{to.stem}.snapshot"))
    shutil.copytree(Paths.for_db(db).data_dir, Paths.for_db(to).data_dir, copy_function=os.link)


def stages_text(timings: dict[str, float]) -> str:
    """A run's stages for the printed lines: ``discover 4.7 s, fetch 0.2 s, ...``."""
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())


def rounded(timings: dict[str, float]) -> dict[str, float]:
    """A run's stages for the JSON line, to a tenth of a second."""
    return {name: round(seconds, 1) for name, seconds in timings.items()}


def _render(cache_dir: Path, tracks: list) -> int:
    """Render ``tracks`` into the preview cache (those not already there); how many were rendered."""
    from sonufy_demo.synth import PreviewCache

    cache, rendered = PreviewCache(cache_dir), 0
    for track in tracks:
        if not cache.path_for(track).exists():
            cache.get(track)
            rendered += 1
    return rendered


def synthesise(cache_dir: Path, tracks: int, new_tracks: int, workers: int) -> tuple[float, int]:
    """Render the previews the stand-in serves to the build and the nightly
    (the one of ``flows.sources.open_source``: the catalog, its compilations
    served by the original's ISRC, and ``new_tracks`` new releases) into
    ``cache_dir``, on ``workers`` processes; the seconds and the files rendered."""
    from flows.sources import standin_config
    from sonufy_demo.standin import StandIn

    catalog = StandIn(standin_config(tracks, new_tracks=new_tracks)).catalog
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        rendered = sum(pool.map(_render, [cache_dir] * workers, [catalog[i::workers] for i in range(workers)]))
    return time.perf_counter() - started, rendered


def cached_previews(cache_dir: Path) -> int:
    return sum(1 for _ in cache_dir.glob("*.mp3")) if cache_dir.is_dir() else 0


def nights_round(db: Path, api_url: str, tracks: int, cache_dir: Path, new_tracks: int, more_tracks: int,
                 number: int, build_s: float) -> dict:
    """One round of nights, each in a fresh process, on copies of the built
    store ``db``: ``new_tracks`` new releases, then the same store again with
    nothing new; and, on another copy, ``more_tracks`` new releases (none
    when 0). Each night's seconds and result."""
    from flows.sources import standin_config
    from sonufy_demo.standin import StandIn

    work = db.parent / f"round-{number}"
    night_db, more_db = work / "nights" / db.name, work / "more" / db.name
    copy_store(db, night_db)
    if more_tracks:
        copy_store(db, more_db)
    done: dict = {}
    with StandIn(standin_config(tracks, cache_dir, new_tracks)) as services:
        service_env = service_environment(services.service_settings())
        done["new"] = nightly(night_db, api_url, service_env)
        done["empty"] = nightly(night_db, api_url, service_env)
    if more_tracks:
        with StandIn(standin_config(tracks, cache_dir, more_tracks)) as services:
            done["more"] = nightly(more_db, api_url, service_environment(services.service_settings()))
    for name, releases in (("new", new_tracks), ("more", more_tracks), ("empty", 0)):
        if name in done:
            seconds, result = done[name]
            what = "nothing new" if name == "empty" else f"{releases} new releases"
            print(f"round {number}, nightly with {what}: {result['added']} added, {seconds:.1f} s "
                  f"({seconds / build_s:.2%} of the build); stages: " + stages_text(result["timings"]), flush=True)
    return done


def summarise(rounds: list[dict], build_s: float) -> dict:
    """The nights' figures over the rounds: the median of each, and its range
    (least, most) over the rounds beside it as ``<key>_range``; ``lines`` to print."""
    from statistics import median

    def ranged(key: str, values: list[float], digits: int) -> dict:
        return {key: round(median(values), digits),
                f"{key}_range": [round(min(values), digits), round(max(values), digits)]}

    new_s = [r["new"][0] for r in rounds]
    empty_s = [r["empty"][0] for r in rounds]
    added = [r["new"][1]["added"] for r in rounds]
    # What each new track costs the nightly beyond its fixed start-up, by the
    # issue's definition: the 1 % night less the empty one, over the tracks it added.
    per_track = [(n - e) / max(a, 1) for n, e, a in zip(new_s, empty_s, added)]
    middle = sorted(range(len(rounds)), key=lambda i: new_s[i])[len(rounds) // 2]  # the median round's stages
    figures = {
        "repeats": len(rounds),
        "added": added[middle],
        **ranged("nightly_1pct_s", new_s, 1),
        **ranged("nightly_1pct_ratio", [s / build_s for s in new_s], 4),
        **ranged("nightly_empty_s", empty_s, 1),
        "nightly_empty_ratio": round(median(empty_s) / build_s, 4),
        **ranged("nightly_s_per_new_track", per_track, 3),
        "nightly_stages": rounded(rounds[middle]["new"][1]["timings"]),
        "nightly_empty_stages": rounded(rounds[middle]["empty"][1]["timings"]),
    }
    lines = [
        f"over {len(rounds)} rounds, median [least, most]: 1 % night {figures['nightly_1pct_s']} s "
        f"{figures['nightly_1pct_s_range']} ({figures['nightly_1pct_ratio']:.2%} of the build, "
        f"{figures['nightly_1pct_ratio_range'][1]:.2%} at most); empty night {figures['nightly_empty_s']} s "
        f"{figures['nightly_empty_s_range']}; 1 % night less the empty one, per new track: "
        f"{figures['nightly_s_per_new_track']} s {figures['nightly_s_per_new_track_range']}"
    ]
    more = [r for r in rounds if "more" in r and r["more"][1]["added"] > r["new"][1]["added"]]
    if more:
        slopes = [(r["more"][0] - r["new"][0]) / (r["more"][1]["added"] - r["new"][1]["added"]) for r in more]
        fixed = [r["new"][0] - slope * r["new"][1]["added"] for r, slope in zip(more, slopes)]
        figures.update({
            "nightly_more_added": more[0]["more"][1]["added"],
            **ranged("nightly_more_s", [r["more"][0] for r in more], 1),
            # One more new track, between the two nights with work of a round;
            # and what the 1 % night costs at zero tracks by that slope.
            **ranged("nightly_marginal_s_per_new_track", slopes, 3),
            **ranged("nightly_busy_fixed_s", fixed, 1),
        })
        lines.append(f"one more new track: {figures['nightly_marginal_s_per_new_track']} s "
                     f"{figures['nightly_marginal_s_per_new_track_range']}; a night with work, at zero tracks: "
                     f"{figures['nightly_busy_fixed_s']} s {figures['nightly_busy_fixed_s_range']}")
    figures["lines"] = lines
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=5000)
    parser.add_argument("--new-share", type=float, default=0.01)
    parser.add_argument("--train-s", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes that synthesise the stand-in's audio before the timing")
    parser.add_argument("--marginal-factor", type=float, default=3.0,
                        help="a third night, on a copy of the built store, adds this many times the new releases "
                             "(0: no third night)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of nights, each on fresh copies of the built store: the figures are their "
                             "medians, with their ranges")
    parser.add_argument("--workdir", help="keep the database here (default: a temporary directory)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.build import build
    from sonufy_model.config import Paths

    new_tracks = max(1, round(args.tracks * args.new_share))
    more_tracks = round(new_tracks * args.marginal_factor) if args.marginal_factor > 0 else 0
    with tempfile.TemporaryDirectory(prefix="sonufy-bench-nightly-") as tmp, \
            prefect_test_harness(server_startup_timeout=120):
        db = Path(args.workdir or tmp) / "sonufy.duckdb"
        api_url = prefect.settings.PREFECT_API_URL.value()
        cache_dir = Paths.for_db(db).data_dir / "standin-cache"
        synth_s, rendered = 0.0, 0
        for releases in sorted({new_tracks, more_tracks} - {0}):
            seconds, count = synthesise(cache_dir, args.tracks, releases, args.workers)
            synth_s, rendered = synth_s + seconds, rendered + count
        print(f"stand-in audio: {rendered} previews synthesised in {synth_s:.1f} s on {args.workers} processes, "
              "before and outside the timing", flush=True)
        in_cache = cached_previews(cache_dir)
        started = time.perf_counter()
        built = build(source="standin", db=str(db), demo_tracks=args.tracks,
                      training={"max_time_s": args.train_s, "max_epochs": 2})
        build_s = time.perf_counter() - started
        late = cached_previews(cache_dir) - in_cache  # synthesised inside the timing after all: should be 0
        encoded = built["counts"].get("total_embeddings") or 0
        stages = built["timings"]
        train_s = stages.get("train", 0.0)
        build_tps = encoded / max(build_s - train_s, 1e-9)
        print(f"build: {args.tracks} tracks, {encoded} encoded, {build_s:.1f} s, "
              f"{build_tps:.1f} tracks/s training excluded ({build_s - train_s:.1f} s); "
              f"previews synthesised inside the timing: {late}", flush=True)
        for name, seconds in [*stages.items(), ("other", build_s - sum(stages.values()))]:
            rate = f"{encoded / seconds:10.1f} tracks/s" if seconds > 0 else ""
            print(f"  {name:<13} {seconds:8.1f} s {rate}"
                  + ("  (flow start and end, stand-in start and stop)" if name == "other" else ""), flush=True)
        # The catalog, a day later: the stand-in the build's source started,
        # with the new releases. Each round of nights starts from its own copy
        # of the store as the build left it, so that rounds repeat one another.
        rounds = [nights_round(db, api_url, args.tracks, cache_dir, new_tracks, more_tracks, number, build_s)
                  for number in range(1, args.repeats + 1)]
    summary = summarise(rounds, build_s)
    for line in summary.pop("lines"):
        print(line, flush=True)
    print(json.dumps({
        "bench": "nightly",
        "build_s": round(build_s, 1),
        "build_tps": round(build_tps, 2),
        "stages": rounded(stages),
        "stage_tps": {name: round(encoded / seconds, 1) for name, seconds in stages.items() if seconds > 0},
        "encoded": encoded,
        "synth_s": round(synth_s, 1),
        "synth_in_build": late,
        "tracks": args.tracks,
        "new_tracks": new_tracks,
        **summary,
    }))


if __name__ == "__main__":
    main()
