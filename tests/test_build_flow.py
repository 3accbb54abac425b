"""The whole DAG, end to end: the build flow on a small demo catalog.

A real Prefect API (the session's test server), a real DuckDB file, real HTTP
to the stand-in, a real training process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from flows.build import build
from flows.cli import main as cli
from flows.cli.common import print_recommendations
from sonufy_demo.synth import build_catalog
from sonufy_model.evaluate import precision_at_k

N_TRACKS = 60
TRAINING = {"max_epochs": 2, "max_time_s": 180, "batch_size": 16, "crops_per_track": 4}

pytestmark = pytest.mark.slow  # every test here waits for the module's build


def _run(db, data_dir=None):
    return build(source="standin", db=str(db), data_dir=data_dir, demo_tracks=N_TRACKS, batch_size=32, workers=2,
                 training=TRAINING)


@pytest.fixture(scope="module")
def built(prefect_api, tmp_path_factory):
    db = tmp_path_factory.mktemp("e2e") / "sonufy.duckdb"
    return db, _run(db)


def _sql(db, query, params=None):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(query, params).fetchall()
    finally:
        con.close()


def test_every_stage_filled_its_table(built):
    db, result = built
    counts = result["counts"]
    assert counts["total_tracks"] == N_TRACKS
    assert counts["total_previews"] == N_TRACKS
    assert counts["total_spectrograms"] == N_TRACKS
    assert counts["total_embeddings"] == N_TRACKS
    assert counts["total_models"] == 1 and counts["total_quarantined"] == 0
    assert _sql(db, "SELECT count(*) FROM latent")[0][0] == N_TRACKS
    [(status, flow)] = _sql(db, "SELECT status, flow FROM runs")
    assert (status, flow) == ("completed", "build")


def test_vectors_are_256_finite_numbers(built):
    db, _ = built
    rows = _sql(db, "SELECT vector FROM embeddings")
    vectors = np.array([row[0] for row in rows], dtype=np.float32)
    assert vectors.shape == (N_TRACKS, 256)
    assert np.isfinite(vectors).all()
    assert (np.linalg.norm(vectors, axis=1) > 0).all()
    [(set_id, config, val_mse, val_loss)] = _sql(
        db, "SELECT set_id, config->>'objective', val_mse, val_loss FROM models WHERE is_current"
    )
    # The default model is the invariance one: selected on its validation loss, no decoder and so no MSE.
    assert config == "invariance" and val_mse is None and np.isfinite(val_loss)
    assert set_id.startswith("mel-128x512")


def test_recommendations_exclude_the_query_and_are_sorted(built):
    db, result = built
    recommendations = result["recommendations"]
    assert len(recommendations) == 10
    seed_id = recommendations[0]["seed_track_id"]
    assert seed_id not in {row["track_id"] for row in recommendations}
    cosines = [row["cosine"] for row in recommendations]
    assert cosines == sorted(cosines, reverse=True)
    assert _sql(db, "SELECT track_id FROM similar_to(?, 10)", [seed_id]) == [
        (row["track_id"],) for row in recommendations
    ]


def test_the_build_reports_seconds_per_stage(built):
    _, result = built
    timings = result["timings"]
    assert list(timings) == ["scrape", "fetch", "spectrograms", "train", "encode", "search index", "landscape",
                             "recommend"]
    assert all(seconds >= 0 for seconds in timings.values()) and timings["train"] > 0


def test_recommendations_show_each_tracks_style(built, capsys):
    _, result = built
    style = {track.track_id: track.style for track in build_catalog(N_TRACKS)}
    rows = result["recommendations"]
    assert [row["style"] for row in rows] == [style[row["track_id"]] for row in rows]
    assert rows[0]["seed_style"] == style[rows[0]["seed_track_id"]]

    print_recommendations(rows, rows[0]["seed"], False)
    table = capsys.readouterr().out
    assert f"Sounds like: {rows[0]['seed']} ({rows[0]['seed_style']})" in table
    header = next(line for line in table.splitlines() if "artist" in line)
    assert header.index("artist") < header.index("style") < header.index("title")
    assert "seed" not in header  # one seed: named in the title, not in a column of 1s
    for row in rows:
        line = next(line for line in table.splitlines() if row["title"] in line)
        assert line.index(row["artist"]) < line.index(row["style"]) < line.index(row["title"])


def test_the_duckdb_shell_answers_similar_to_from_the_file(built):
    db, result = built
    seed_id = result["recommendations"][0]["seed_track_id"]
    shell = Path(sys.executable).with_name("duckdb")
    output = subprocess.run(
        [str(shell), "-readonly", "-csv", "-noheader", str(db), "-c",
         f"SELECT track_id FROM similar_to('{seed_id}', 10)"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()
    assert output == [row["track_id"] for row in result["recommendations"]]


def test_neighbours_share_the_style_far_above_chance(built):
    db, _ = built
    style = {track.track_id: track.style for track in build_catalog(N_TRACKS)}
    rows = _sql(db, "SELECT track_id, vector FROM latent ORDER BY track_id")
    vectors = np.array([row[1] for row in rows])
    labels = [style[row[0]] for row in rows]
    score = precision_at_k(vectors, labels, k=5)
    print(f"precision@5 of same-style neighbours: {score['precision']:.3f} (chance {score['chance']:.3f})")
    assert score["precision"] > 2 * score["chance"]


def test_a_rerun_resumes_without_duplicates_or_retraining(built, prefect_api, tmp_path):
    # On a copy (the built models and shards): the other tests see the store of one build.
    db = tmp_path / "sonufy.duckdb"
    shutil.copy(built[0], db)
    first = built[1]
    again = _run(db, data_dir=str(built[0].with_suffix(".data")))
    assert again["counts"]["model_version"] == first["counts"]["model_version"]
    for table in ("tracks", "previews", "spectrograms", "embeddings"):
        assert again["counts"][f"total_{table}"] == first["counts"][f"total_{table}"]
    assert "encoded" not in again["counts"] and "stored" not in again["counts"]
    assert _sql(db, "SELECT count(*), count(DISTINCT track_id) FROM embeddings")[0] == (N_TRACKS, N_TRACKS)
    assert _sql(db, "SELECT count(*) FROM runs WHERE status = 'completed'")[0][0] == 2


def test_cli_recommend_prints_a_table_and_names_bad_input(built, capsys):
    db, result = built
    seed = result["recommendations"][0]["seed"]
    assert cli(["recommend", seed, "--db", str(db), "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "Sounds like" in out and result["recommendations"][0]["title"] in out
    assert cli(["recommend", "Nobody - Nothing", "--db", str(db)]) == 2
    assert "'Nobody - Nothing'" in capsys.readouterr().err
    assert cli(["recommend", "x", "--db", str(db.parent / "missing.duckdb")]) == 2
    assert "missing.duckdb" in capsys.readouterr().err


def test_a_folder_of_own_files_builds_with_no_account(prefect_api, tmp_path):
    import soundfile as sf

    from sonufy_demo.synth import render_clip

    music = tmp_path / "Music"
    catalog = build_catalog(24)[:8]
    for number, track in enumerate(catalog, start=1):
        album = music / track.artist / track.album
        album.mkdir(parents=True, exist_ok=True)
        sf.write(album / f"{number:02d} {track.title}.flac", render_clip(track, seconds=40.0), 22050)
    db = tmp_path / "own.duckdb"
    result = build(source=f"folder:{music}", db=str(db), workers=1, excerpts=2, keep_previews=False,
                   training={"max_epochs": 1, "max_time_s": 60, "batch_size": 8, "crops_per_track": 2})
    assert result["counts"]["total_embeddings"] == len(catalog)
    # 40 s files, two 30 s excerpts each, one vector per track (their mean).
    assert result["counts"]["total_spectrograms"] == 2 * len(catalog)
    assert _sql(db, "SELECT count(DISTINCT excerpt) FROM spectrograms")[0][0] == 2
    rows = _sql(db, "SELECT artist, title, source, path FROM latent ORDER BY path")
    assert {(artist, title) for artist, title, _, _ in rows} == {(t.artist, t.title) for t in catalog}
    # Dropping previews never touches the user's own files.
    assert all(source == "folder" and Path(path).is_file() for _, _, source, path in rows)
    assert result["counts"].get("previews_dropped", 0) == 0
