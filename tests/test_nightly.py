"""The nightly refresh and the retrain flow on a small demo catalog.

A real Prefect API (the session's test server), real DuckDB files, real HTTP
to the stand-in (whose catalog gains new releases between runs), real
processes for the readers, the killed nightly and training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from flows.build import build
from flows.nightly import nightly_refresh
from flows.retrain import retrain
from sonufy_model.store import Store

N_TRACKS = 30
TRAINING = {"max_epochs": 1, "max_time_s": 60, "batch_size": 8, "crops_per_track": 2}


@pytest.fixture(scope="module")
def built(prefect_api, tmp_path_factory):
    db = tmp_path_factory.mktemp("nightly") / "sonufy.duckdb"
    build(source="standin", db=str(db), demo_tracks=N_TRACKS, batch_size=16, workers=1, training=TRAINING)
    return db


@pytest.fixture
def built_copy(built, tmp_path):
    """A copy of the built store with its data folder, for a test that changes
    it (the store records its shards and checkpoints relative to its own
    folder). Returns (db, data_dir)."""
    db = tmp_path / "sonufy.duckdb"
    shutil.copy(built, db)
    shutil.copytree(built.with_suffix(".data"), db.with_suffix(".data"))
    return db, str(db.with_suffix(".data"))


def _sql(db, query, params=None):
    with Store(db).connect(read_only=True) as con:
        return con.execute(query, params).fetchall()


def _nightly(db, new_tracks, **options):
    return nightly_refresh(source="standin", db=str(db), demo_tracks=N_TRACKS, demo_new_tracks=new_tracks,
                           batch_size=8, workers=1, **options)


def _latest_artifact(key):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      limit=1, sort="CREATED_DESC")
    return found[0] if found else None


@pytest.mark.slow
def test_a_nightly_adds_only_the_new_releases_and_reports_them(built):
    before = _sql(built, "SELECT count(*) FROM latent")[0][0]
    # A reader holds the file when the nightly starts: the nightly waits for it, never fails.
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, time
        con = duckdb.connect({str(built)!r}, read_only=True)
        print(con.execute("SELECT count(*) FROM latent").fetchone()[0], flush=True)
        time.sleep(3)
    """)], stdout=subprocess.PIPE, text=True)
    assert int(reader.stdout.readline()) == before
    result = _nightly(built, new_tracks=4)
    assert reader.wait(timeout=30) == 0
    assert result["added"] == 4 and result["counts"]["new_tracks"] == 4
    assert _sql(built, "SELECT count(*), count(DISTINCT track_id) FROM latent")[0] == (before + 4, before + 4)
    assert set(result["timings"]) >= {"discover", "fetch", "spectrograms", "encode", "report"}
    added = _latest_artifact("nightly-added")
    assert added is not None and "4 tracks added" in added.description
    report = _latest_artifact("nightly-report")
    assert "nightly: 4 tracks added" in report.data
    quality = _latest_artifact("nightly-quality")
    assert "suite tracks" in str(quality.data) and "suite spectrograms" in str(quality.data)
    assert result["data_docs"].startswith("file://") and os.path.exists(result["data_docs"][len("file://"):])
    # The new tracks are placed by the saved UMAP (no refit), and the maps redrawn and republished.
    assert result["counts"]["landscape_placed"] == 4 and "landscape_fitted" not in result["counts"]
    summary = _latest_artifact("sonufy-landscape-summary")
    assert f"{before + 4:,} tracks" in summary.data

    # Nothing new tonight: nothing fetched, converted or encoded, and the
    # pictures are not redrawn (their files untouched).
    pictures = [built.with_suffix(".data") / "landscape" / name for name in ("landscape.png", "landscape.html")]
    drawn = [path.stat().st_mtime_ns for path in pictures]
    again = _nightly(built, new_tracks=4)
    assert again["added"] == 0
    # tag:new found tonight's albums, tonight's four tracks' among them, and read none of them again.
    assert again["counts"]["albums_known"] > result["counts"]["albums_known"]
    assert not {"fetched", "stored", "encoded", "landscape_placed", "landscape_fitted"} & set(again["counts"])
    assert [path.stat().st_mtime_ns for path in pictures] == drawn
    assert _sql(built, "SELECT count(*) FROM latent")[0][0] == before + 4


@pytest.mark.slow
def test_a_nightly_that_finds_another_writer_exits_cleanly(built, capsys):
    from flows.cli import main

    # Another process writes the store (a build, say): it holds the writer lock.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from sonufy_model.store import Store
        with Store({str(built)!r}).writer("build") as busy:
            print("held" if busy is None else busy, flush=True)
            sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _sql(built, "SELECT count(*) FROM runs")[0][0]
        result = _nightly(built, new_tracks=4)
        # So does a retrain told not to wait, and the command says so.
        capsys.readouterr()
        assert main(["retrain", "--db", str(built), "--wait", "0"]) == 0
        said = capsys.readouterr().out
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert "writer.lock is held by pid" in result["skipped"] and "(build, since" in result["skipped"]
    assert said.startswith("nothing done: ") and "writer.lock is held by pid" in said
    assert _sql(built, "SELECT count(*) FROM runs")[0][0] == before  # it wrote nothing


@pytest.mark.slow
def test_two_nightlies_at_once_beside_a_reader_that_holds_the_store_throughout(built_copy, capsys):
    """Two nightlies started together: one writes, the other exits cleanly.
    Meanwhile a reader holds the published store for the whole run, `sonufy
    sql -c` answers, and afterwards `sonufy recommend` answers from the new
    snapshot while the reader still sees the one it opened."""
    from prefect.settings import PREFECT_API_URL

    from flows.cli import main

    db, data_dir = built_copy
    runs_before = _sql(db, "SELECT count(*) FROM runs")[0][0]
    snapshot = Store(db).publish()
    before = _sql(db, "SELECT count(*) FROM latent")[0][0]
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, duckdb
        con = duckdb.connect({str(snapshot)!r}, read_only=True)
        for _ in range(2):
            print(con.execute("SELECT count(*) FROM latent").fetchone()[0], flush=True)
            sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert int(reader.stdout.readline()) == before
    code = (f"import json; from flows.nightly import nightly_refresh; r = nightly_refresh(source='standin', "
            f"db={str(db)!r}, data_dir={data_dir!r}, demo_tracks={N_TRACKS}, demo_new_tracks=6, batch_size=8, "
            f"workers=1, data_docs=False); print('RESULT ' + json.dumps(r, default=str))")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env, cwd=os.getcwd()) for _ in range(2)]
    total = N_TRACKS + 6
    answers = []
    while any(run.poll() is None for run in runs):  # ad-hoc SQL during the nightly
        assert main(["sql", "--db", str(db), "-c", "SELECT count(*) AS n FROM latent"]) == 0
        answers.append(int(re.findall(r"\b\d+\b", capsys.readouterr().out)[-1]))
        time.sleep(0.5)
    results = []
    for run in runs:
        output = run.communicate(timeout=600)[0]
        assert run.returncode == 0, output[-3000:]
        results.append(json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:]))
    skipped = [r for r in results if "skipped" in r]
    assert len(skipped) == 1 and "writer.lock is held by pid" in skipped[0]["skipped"]
    assert answers and set(answers) <= {before, total}, answers  # whole runs only
    assert _sql(db, "SELECT count(*), count(DISTINCT track_id) FROM latent")[0] == (total, total)
    assert _sql(db, "SELECT count(*) FROM runs")[0][0] == runs_before + 1  # one run wrote, one did nothing

    # Published at the end of the run: readers that open the store now see it...
    assert Store(db, reader=True).counts()["embeddings"] >= total
    new_track = _sql(snapshot, "SELECT track_id FROM latent ORDER BY track_id")[-1][0]
    assert main(["recommend", new_track, "--db", str(db), "--json", "-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["recommendations"]) == 3
    # ...while the reader that held the old snapshot throughout still sees it whole.
    reader.stdin.write("\n")
    reader.stdin.flush()
    assert int(reader.stdout.readline()) == before
    reader.stdin.close()
    assert reader.wait(timeout=30) == 0


@pytest.mark.slow
def test_a_nightly_killed_midway_is_finished_by_the_next(built_copy):
    from prefect.settings import PREFECT_API_URL

    # A copy: each kill point starts from the same database.
    db, data_dir = built_copy
    base = _sql(db, "SELECT count(*) FROM latent")[0][0]
    snapshot = Store(db).publish()
    code = (f"from flows.nightly import nightly_refresh; nightly_refresh(source='standin', db={str(db)!r}, "
            f"data_dir={data_dir!r}, demo_tracks={N_TRACKS}, demo_new_tracks=12, batch_size=4, workers=1)")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=os.getcwd())
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "record-spectrograms[batch 2]" in line:  # previews and a shard recorded, more to come
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    problems = [line for line in seen if "Failed" in line or "Error" in line]
    assert process.returncode == -signal.SIGKILL, "".join(problems[:10] + seen[-10:])
    assert _sql(db, "SELECT count(*) FROM latent")[0][0] < N_TRACKS + 12
    assert _sql(snapshot, "SELECT count(*) FROM latent")[0][0] == base  # readers: the last whole state

    result = nightly_refresh(source="standin", db=str(db), data_dir=data_dir, demo_tracks=N_TRACKS,
                             demo_new_tracks=12, batch_size=4, workers=1, data_docs=False)
    # The 12 new releases include those the built store may already have (the catalog grows).
    total = N_TRACKS + 12
    assert _sql(db, "SELECT count(*), count(DISTINCT track_id) FROM latent")[0] == (total, total)
    assert _sql(snapshot, "SELECT count(*) FROM latent")[0][0] == total  # published by the rerun
    assert _sql(db, "SELECT count(*) FROM spectrograms")[0][0] == _sql(
        db, "SELECT count(DISTINCT (track_id, set_id, excerpt)) FROM spectrograms")[0][0]
    assert _sql(db, "SELECT count(*) FROM tracks")[0][0] == _sql(db, "SELECT count(DISTINCT isrc) FROM tracks")[0][0]
    # The rerun reports the killed run's additions as its own, and the killed run as crashed.
    assert result["added"] == total - base
    assert ("crashed",) in _sql(db, "SELECT status FROM runs WHERE flow = 'nightly'")


@pytest.mark.slow
def test_a_nightly_remakes_saved_lists_with_new_tracks_and_reports_what_changed(built_copy, tmp_path, monkeypatch,
                                                                               capsys):
    import requests

    from flows.cli import main as cli
    from sonufy_demo.standin import StandIn, StandInConfig
    from sonufy_model.config import ServiceSettings
    from sonufy_model.spotify_user import ensure_login

    db, data_dir = built_copy
    # Seeds no nightly finds again (released over a month ago: tag:new is two weeks).
    gone, *seeds = [track_id for (track_id,) in _sql(
        db, "SELECT track_id FROM latent JOIN tracks USING (track_id) "
            "WHERE release_date < CAST(current_date - INTERVAL 30 DAY AS VARCHAR) ORDER BY track_id LIMIT 3")]
    # The listener's Spotify account: a stand-in serving the same catalog, new releases included.
    with StandIn(StandInConfig(n_tracks=N_TRACKS, compilation_share=0.1, new_tracks=12)) as spotify:
        token = tmp_path / "spotify-token.json"
        for name, value in {"SPOTIFY_CLIENT_ID": spotify.config.client_id, "SONUFY_SPOTIFY_TOKEN_FILE": str(token),
                            "SONUFY_SPOTIFY_API_BASE": spotify.spotify_api_base,
                            "SONUFY_SPOTIFY_ACCOUNTS_BASE": spotify.spotify_accounts_base}.items():
            monkeypatch.setenv(name, value)
        # Logged in once, the browser's part driven over HTTP: /authorize approves and redirects.
        ensure_login(ServiceSettings.from_env(),
                     ask=lambda url: requests.get(url, allow_redirects=False, timeout=10).headers["Location"])
        playlist = tmp_path / "mix.m3u8"
        assert cli(["playlist", "save", "Nightly mix", "--db", str(db), "--radio", *seeds, "-n", "60",
                    "--max-per-artist", "60", "--playlist", str(playlist), "--to-spotify", "Nightly mix"]) == 0
        assert cli(["playlist", "save", "Orphan", "--db", str(db), "--radio", gone, "-n", "3"]) == 0
        capsys.readouterr()
        before = {t for (t,) in _sql(db, "SELECT unnest(track_ids) FROM saved_playlists WHERE name = 'Nightly mix'")}
        with Store(db).transaction() as con:  # the orphan's seed leaves the store (its file was deleted, say)
            for table in ("embeddings", "spectrograms", "previews", "tracks"):
                con.execute(f"DELETE FROM {table} WHERE track_id = ?", [gone])

        space = {track_id for (track_id,) in _sql(db, "SELECT track_id FROM latent")}
        # The catalog has gained 12 new releases since the build (some of them
        # may be in this copy already, added by an earlier test's nightly).
        result = _nightly(db, new_tracks=12, data_dir=data_dir)

        joined = {track_id for (track_id,) in _sql(db, "SELECT track_id FROM latent")} - space
        assert len(joined) >= 8 and result["added"] == len(joined)
        lists = {one["name"]: one for one in result["saved_lists"]}
        mix = lists["Nightly mix"]
        now = [track_id for (track_id,) in _sql(
            db, "SELECT unnest(track_ids) FROM saved_playlists WHERE name = 'Nightly mix'")]
        added_ids = set(now) - before
        assert mix["problem"] is None and added_ids == joined and len(mix["added"]) == len(joined)
        assert before - set(now) == {gone} and mix["removed"] == [f"{gone} (no longer in the store)"]
        assert not set(seeds) & set(now) and len(now) == len(set(now))
        assert len([line for line in playlist.read_text().splitlines() if line.startswith("#EXTINF")]) == len(now)
        [pushed] = [p for p in spotify.user_playlists.values() if p.name == "Nightly mix"]
        assert pushed.track_ids == now and not pushed.public
        assert lists["Orphan"]["problem"].startswith(f"seed {gone} is no longer in the latent space")

        report = _latest_artifact("nightly-saved-lists")
        assert "# Saved lists: 2 made again, 1 with a problem" in report.data
        assert "| Nightly mix | " in report.data and all(name in report.data for name in mix["added"])
        secret = json.loads(token.read_text())
        assert secret["access_token"] not in report.data and secret["refresh_token"] not in report.data
        assert secret["access_token"] not in json.dumps(result, default=str)


def _score_current_as_candidate_plus(monkeypatch, current_version: str, offset: float) -> None:
    """The retrain flow's evaluations really run and are recorded, but the
    current version is then scored as the candidate plus ``offset`` on every
    query (the flow scores the candidate first): the paired difference is
    exactly -offset, whatever the two small models learned."""
    import flows.retrain

    evaluate_version = flows.retrain.evaluate_version
    scored = {}

    def evaluate(store, model_version, labels, k):
        result = evaluate_version(store, model_version, labels, k)
        if model_version != current_version:
            scored["candidate"] = result
            return result
        rows = []
        for row in scored["candidate"]["rows"]:
            if row["space"] == "latent" and "per_query" in row:
                precision = np.asarray(row["per_query"]["precision"], dtype=float) + offset
                row = dict(row, precision=row["precision"] + offset,
                           per_query=dict(row["per_query"], precision=precision))
            rows.append(row)
        return dict(result, rows=rows)

    monkeypatch.setattr(flows.retrain, "evaluate_version", evaluate)


@pytest.mark.slow
def test_retrain_evaluates_the_candidate_against_the_current_version_and_promotes_it(built_copy, monkeypatch):
    db, data_dir = built_copy
    before = Store(db).current_model().model_version
    # Scored the same as the current version on every query: not worse, promoted.
    _score_current_as_candidate_plus(monkeypatch, before, 0.0)
    # Another writer (a nightly running late, say) holds the store for 2 s when
    # the retrain is due: the retrain waits for it instead of skipping a week.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from sonufy_model.store import Store
        with Store({str(db)!r}).writer("nightly") as busy:
            print("held" if busy is None else busy, flush=True)
            time.sleep(2)
    """)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "held"
        result = retrain(db=str(db), data_dir=data_dir, config=TRAINING, labels=["genre"], k=3,
                         wait_for_running_s=120)
        assert holder.poll() == 0  # it had let go before the retrain could write
    finally:
        holder.wait(timeout=30)
    candidate = result["candidate"]
    assert result["promoted"] and candidate != before, result["reason"]
    assert "+0.0000 [+0.0000, +0.0000]" in result["reason"] and "not worse" in result["reason"]
    assert result["candidate_score"] is not None and result["current_score"] is not None
    table = _latest_artifact("retrain-evaluation")
    assert candidate in table.description and before in table.description and "promoted" in table.description
    assert Store(db).current_model().model_version == candidate
    assert _sql(db, "SELECT count(DISTINCT model_version), count(*) FROM latent")[0] == (
        1, _sql(db, "SELECT count(*) FROM embeddings WHERE model_version = ?", [before])[0][0])
    evaluated = {row[0] for row in _sql(db, "SELECT DISTINCT model_version FROM evaluations")}
    assert evaluated == {before, candidate}


@pytest.mark.slow
def test_retrain_keeps_the_current_version_when_the_candidate_is_worse_beyond_the_interval(built_copy, monkeypatch):
    db, data_dir = built_copy
    before = Store(db).current_model().model_version
    latent_before = _sql(db, "SELECT track_id, model_version FROM latent ORDER BY track_id")
    # 0.2 below the current version on every query: the whole interval is below zero.
    _score_current_as_candidate_plus(monkeypatch, before, 0.2)
    result = retrain(db=str(db), data_dir=data_dir, config=TRAINING, labels=["genre"], k=3)
    candidate = result["candidate"]
    assert not result["promoted"] and candidate != before and result["current"] == before
    assert "-0.2000 [-0.2000, -0.2000]" in result["reason"]
    assert "worse (the whole interval is below zero)" in result["reason"]
    table = _latest_artifact("retrain-evaluation")
    assert candidate in table.description and "not promoted" in table.description
    # Queries still answer from the current version; the candidate stays registered, without vectors.
    assert Store(db).current_model().model_version == before
    assert _sql(db, "SELECT track_id, model_version FROM latent ORDER BY track_id") == latent_before
    assert _sql(db, "SELECT count(*) FROM models WHERE model_version = ?", [candidate])[0][0] == 1
    assert _sql(db, "SELECT count(*) FROM embeddings WHERE model_version = ?", [candidate])[0][0] == 0
    evaluated = {row[0] for row in _sql(db, "SELECT DISTINCT model_version FROM evaluations")}
    assert evaluated == {before, candidate}
