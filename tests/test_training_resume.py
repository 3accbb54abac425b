"""A training run is named by what it trains, so a rerun after a kill resumes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SMALL_TRAINING as SMALL
from conftest import sql_rows
from flows.build import build
from sonufy_model.training import (
    TrainConfig,
    model_registration,
    new_model_version,
    run_key,
    unregistered_run,
)

N_TRACKS = 24
# Long enough to be killed midway: early stopping cannot end it first.
LONG = {**SMALL, "max_epochs": 30, "early_stopping_patience": 30}


def test_the_run_key_says_what_is_trained_not_where():
    config = TrainConfig.from_dict({"manifest": "a/manifest.parquet", "output_dir": "a", **SMALL}).to_dict()
    manifest = "track_id,excerpt,shard,row\nt1,0,s1,0\nt2,0,s1,1\n"
    key = run_key("set-1", config, manifest)
    assert run_key("set-1", {**config, "manifest": "b/manifest.parquet", "output_dir": "b"}, manifest) == key
    assert run_key("set-2", config, manifest) != key
    assert run_key("set-1", {**config, "seed": 1}, manifest) != key
    assert run_key("set-1", config, manifest + "t3,0,s2,0\n") != key


def test_a_run_folder_is_resumed_until_its_version_is_registered(tmp_path):
    import datetime
    import time

    import numpy as np

    from sonufy_model.standardise import Standardiser

    key = "0123456789abcdef"
    started = datetime.datetime(2026, 3, 1, 4, 5, 6, tzinfo=datetime.timezone.utc)
    assert new_model_version(key, started) == "ae-20260301T040506Z-0123456789"
    assert new_model_version(key).endswith("Z-0123456789")

    class Registered:
        def __init__(self, *versions):
            self.versions = set(versions)

        def model(self, version):
            if version not in self.versions:
                raise LookupError(version)
            return version

    older, newer = tmp_path / "ae-20260301T000000Z-0123456789", tmp_path / "ae-20260302T000000Z-0123456789"
    older.mkdir()
    time.sleep(0.01)
    newer.mkdir()
    (tmp_path / "ae-20260303T000000Z-fedcba9876").mkdir()  # another key
    assert unregistered_run(Registered(), tmp_path, key) == newer, "the newest first"
    assert unregistered_run(Registered(newer.name), tmp_path, key) == older
    assert unregistered_run(Registered(newer.name, older.name), tmp_path, key) is None

    result = {"checkpoint_path": "best.ckpt", "epochs": 3, "train_mse": 0.5, "val_mse": float("nan"),
              "val_score": 0.25, "n_train_tracks": 20, "n_val_tracks": 4, "seconds": 9.5}
    standardiser = Standardiser(np.zeros(2, np.float32), np.ones(2, np.float32))
    row = model_registration("v1", "set-1", {"preset": "p"}, result, standardiser)
    assert row == {
        "model_version": "v1", "set_id": "set-1", "config": {"preset": "p"}, "checkpoint": "best.ckpt",
        "epochs": 3, "train_mse": 0.5, "val_mse": None, "val_loss": 0.25, "n_train_tracks": 20,
        "n_val_tracks": 4, "train_seconds": 9.5, "latent_mean": standardiser.mean, "latent_scale": standardiser.scale,
    }
    assert model_registration("v1", "s", {}, {**result, "val_mse": 0.1, "val_score": None},
                              standardiser)["val_loss"] is None


def _train_command(db: Path, config: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))",
            "train", "--db", str(db), "--config", str(config)]


@pytest.mark.slow
def test_a_training_run_killed_midway_is_resumed_by_the_rerun(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    db = tmp_path / "sonufy.duckdb"
    first = build(source="standin", db=str(db), demo_tracks=N_TRACKS, batch_size=32, workers=2,
                  training=SMALL)["counts"]["model_version"]
    models_dir = tmp_path / "sonufy.data" / "models"
    assert (models_dir / first).is_dir()
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(LONG))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1"}

    # Its own session, so that the kill takes the trainer process with it, as a
    # machine going down would.
    process = subprocess.Popen(_train_command(db, config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "trainer: epoch 3/30" in line:  # epoch 2's checkpoint is on disk
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    [killed] = [folder for folder in models_dir.iterdir() if folder.name != first]
    assert (killed / "checkpoints" / "last.ckpt").is_file()
    assert not (killed / "result.json").exists()
    assert sql_rows(db, "SELECT count(*) FROM models")[0][0] == 1

    rerun = subprocess.run(_train_command(db, config), capture_output=True, text=True, env=env, timeout=600)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert f"resuming the unfinished training run in {killed}" in output
    assert f"Resuming from {killed / 'checkpoints' / 'last.ckpt'}" in output
    # The same folder became the version: no second run folder, all 30 epochs counted.
    assert sorted(folder.name for folder in models_dir.iterdir()) == sorted([first, killed.name])
    assert sql_rows(db, "SELECT model_version, epochs, is_current FROM models WHERE model_version <> "
                f"'{first}'") == [(killed.name, 30, True)]

    # Another config is another run, in a folder of its own.
    config.write_text(yaml.safe_dump({**LONG, "max_epochs": 1}))
    assert subprocess.run(_train_command(db, config), capture_output=True, env=env, timeout=600).returncode == 0
    assert len(list(models_dir.iterdir())) == 3
