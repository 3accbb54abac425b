"""A store moved or copied with its data folder works where it lands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

import sql
from conftest import SMALL_TRAINING as SMALL
from flows.build import build
from flows.cli import main
from flows.nightly import nightly_refresh
from sonufy_model import gc
from sonufy_model.config import Paths
from sonufy_model.store import Store

N_TRACKS = 24


def _paths(db) -> tuple[list[str], list[str]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        shards = [row[0] for row in con.execute("SELECT DISTINCT shard FROM spectrograms ORDER BY 1").fetchall()]
        checkpoints = [row[0] for row in con.execute("SELECT checkpoint FROM models ORDER BY 1").fetchall()]
        checkpoints += [row[0] for row in con.execute("SELECT path FROM previews WHERE path IS NOT NULL").fetchall()]
    finally:
        con.close()
    return shards, checkpoints


@pytest.mark.slow
def test_a_store_moved_with_its_data_folder_answers_and_grows_where_it_lands(prefect_api, tmp_path, capsys):
    home = tmp_path / "home"
    built = build(source="standin", db=str(home / "sonufy.duckdb"), demo_tracks=N_TRACKS, batch_size=32, workers=2,
                  training=SMALL)
    seed = built["recommendations"][0]["seed_track_id"]
    shards, checkpoints = _paths(home / "sonufy.duckdb")
    assert shards and checkpoints
    assert all(not path.startswith("/") and path.startswith("sonufy.data/") for path in shards + checkpoints)

    # Moved: the old place is gone.
    moved = tmp_path / "elsewhere" / "music"
    moved.parent.mkdir()
    shutil.move(home, moved)
    db = moved / "sonufy.duckdb"
    store = Store(db)
    checkpoint = store.current_model().checkpoint
    assert Path(checkpoint).is_file() and checkpoint.startswith(str(moved))
    assert main(["recommend", "--db", str(db), seed, "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["recommendations"]) == 3
    clip = next((moved / "sonufy.data" / "previews").rglob("*.mp3"))
    assert main(["recommend", "--db", str(db), "--file", str(clip), "-k", "3"]) == 0  # the checkpoint, found
    assert main(["evaluate", "--db", str(db), "--label", "genre", "--resamples", "50"]) == 0  # the shards, read
    capsys.readouterr()
    # The nightly adds tracks there: new shards beside the old, the old model encoding them.
    result = nightly_refresh(source="standin", db=str(db), demo_tracks=N_TRACKS, demo_new_tracks=4, batch_size=4,
                             workers=1, data_docs=False)
    assert result["added"] == 4
    assert all(not path.startswith("/") for path in _paths(db)[0])
    # gc sees every recorded shard as in use: nothing of the moved store is an orphan.
    assert gc.collect(store, Paths.for_db(db), dry_run=True).shards == []


@pytest.mark.slow
def test_a_store_with_absolute_paths_is_migrated_to_relative_ones(prefect_api, tmp_path):
    db = tmp_path / "sonufy.duckdb"
    build(source="standin", db=str(db), demo_tracks=N_TRACKS, batch_size=32, workers=2, training=SMALL)
    # As a store of schema version 2 recorded them: absolute.
    con = duckdb.connect(str(db))
    con.execute("UPDATE spectrograms SET shard = ? || '/' || shard", [str(tmp_path)])
    con.execute("UPDATE models SET checkpoint = ? || '/' || checkpoint", [str(tmp_path)])
    con.execute("UPDATE previews SET path = ? || '/' || path", [str(tmp_path)])
    con.execute("UPDATE sonufy_schema SET version = 2")
    con.close()
    store = Store(db)
    assert store.current_model().checkpoint.startswith(str(tmp_path))  # read as they are, before migrating
    store.apply_schema()  # the first write migrates
    shards, checkpoints = _paths(db)
    assert all(path.startswith("sonufy.data/") for path in shards + checkpoints)
    assert store.schema_version() == sql.SCHEMA_VERSION
    manifest = store.spectrogram_manifest(store.current_model().set_id)
    assert all(np.load(path, mmap_mode="r").shape[1:] == (128, 512) for path in manifest["shard"].unique())
