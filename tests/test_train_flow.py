"""The train flow and `sonufy train`: a new model version on an existing build."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import SMALL_TRAINING as SMALL
from conftest import sql_rows
from flows.build import build
from flows.cli import main as cli
from flows.stages import training_options
from flows.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
N_TRACKS = 24


def test_training_options_are_trainconfig_fields_and_the_example_is_valid():
    example = yaml.safe_load((REPO_ROOT / "deployments" / "train.yaml").read_text())
    assert training_options(example)["devices"] == 1
    assert training_options({"max_epochs": 3})["max_epochs"] == 3
    with pytest.raises(ValueError, match="unknown key"):
        training_options({"epochs": 3})
    with pytest.raises(ValueError, match="manifest"):
        training_options({"manifest": "elsewhere.parquet"})


@pytest.mark.slow
def test_train_flow_adds_a_current_version_and_the_cli_one_that_is_not(prefect_api, tmp_path, capsys):
    db = tmp_path / "sonufy.duckdb"
    built = build(source="standin", db=str(db), demo_tracks=N_TRACKS, batch_size=32, workers=2, training=SMALL)
    first = built["counts"]["model_version"]

    version = train(db=str(db), config={**SMALL, "seed": 1})
    assert version != first
    rows = dict(sql_rows(db, "SELECT model_version, is_current FROM models"))
    assert rows == {first: False, version: True}
    # Promoted, so every track has a vector of the new version at once.
    assert sql_rows(db, f"SELECT count(DISTINCT track_id) FROM embeddings WHERE model_version = '{version}'")[0][0] \
        == N_TRACKS
    assert ("train", "completed") in sql_rows(db, "SELECT flow, status FROM runs")
    # ... and its own search index and map, as the build gave the first one.
    assert sql_rows(db, f"SELECT vectors FROM search_index WHERE model_version = '{version}'") == [(N_TRACKS,)]
    assert sql_rows(db, f"SELECT count(*) FROM landscape WHERE model_version = '{version}'") == [(N_TRACKS,)]
    assert cli(["recommend", "--db", str(db), "-k", "3", "--json", built["recommendations"][0]["seed_track_id"]]) == 0

    # The command: YAML config, options over it, --no-promote keeps the current version.
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "max_epochs": 5}))
    capsys.readouterr()
    assert cli(["train", "--db", str(db), "--config", str(config), "--max-epochs", "1", "--no-promote"]) == 0
    assert "registered" in capsys.readouterr().out
    assert sql_rows(db, "SELECT count(*) FROM models")[0][0] == 3
    assert sql_rows(db, "SELECT model_version FROM models WHERE is_current")[0][0] == version
    newest = sql_rows(db, f"SELECT epochs FROM models WHERE model_version NOT IN ('{first}', '{version}')")
    assert newest == [(1,)]  # --max-epochs over the YAML's 5

    config.write_text(yaml.safe_dump({"epochs": 1}))
    assert cli(["train", "--db", str(db), "--config", str(config)]) == 2
    assert "unknown key" in capsys.readouterr().err
