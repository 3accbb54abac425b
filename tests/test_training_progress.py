"""Training's progress: the trainer reports its steps, the task draws and logs them."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import threading
import time
from collections import deque

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from sonufy_model import training
from tasks import progress
from tasks.progress import TrainingProgress, terminal_bars
from tasks.training import follow_trainer


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    """8 random uint8 spectrograms in one shard, and their manifest."""
    root = tmp_path_factory.mktemp("progress")
    spectrograms = np.random.default_rng(3).integers(0, 256, (8, 128, 512), dtype=np.uint8)
    np.save(root / "shard.npy", spectrograms)
    path = root / "manifest.parquet"
    pl.DataFrame({"track_id": [f"t{i}" for i in range(8)], "shard": str(root / "shard.npy"),
                  "row": list(range(8))}).write_parquet(path)
    return str(path)


def _states(text: str) -> list[dict]:
    return [json.loads(line[len(training.PROGRESS_PREFIX):]) for line in text.splitlines()
            if line.startswith(training.PROGRESS_PREFIX)]


def _config(output_dir, **changes) -> training.TrainConfig:
    return training.TrainConfig.from_dict({
        "manifest": changes.pop("manifest"), "output_dir": str(output_dir), "max_epochs": 2,
        "limit_train_batches": 3, "batch_size": 4, "crops_per_track": 2, "val_fraction": 0.25,
        "accelerator": "cpu", "devices": 1, "filters": [4, 8, 16, 32], "max_time_s": 600, **changes,
    })


def test_the_trainer_reports_steps_total_loss_and_time_left(manifest, tmp_path, capsys):
    result = training.train(_config(tmp_path / "run", manifest=manifest), progress_every_s=0.0)
    states = _states(capsys.readouterr().out)

    train_states = [s for s in states if s["phase"] == "train"]
    assert train_states and {"validate", "done"} <= {s["phase"] for s in states}
    assert states[-1]["phase"] == "done" and states[-1]["step"] == 6 and states[-1]["epoch"] == result.epochs == 2
    # The sanity check validates before training has set up its data: no total yet.
    assert states[0] == {**states[0], "phase": "validate", "step": 0, "total": None}
    assert all(s["total"] == 6 and s["max_epochs"] == 2 for s in states[1:])
    steps = [s["step"] for s in train_states]
    assert steps == sorted(steps) and steps[-1] == 6
    stepped = [s for s in train_states if s["step"] > 0]
    assert all(math.isfinite(s["loss"]) for s in stepped)
    # The time left is the steps to go at this pace, within the 600 s box.
    assert all(0 <= s["left_s"] <= 600 for s in stepped)
    assert [s["left_s"] for s in stepped if s["step"] == 6] == [0.0] * len([s for s in stepped if s["step"] == 6])


def test_reporting_changes_nothing_in_training_and_is_off_by_default(manifest, tmp_path, capsys):
    reported = training.train(_config(tmp_path / "reported", manifest=manifest, max_epochs=1), progress_every_s=0.0)
    assert _states(capsys.readouterr().out)
    silent = training.train(_config(tmp_path / "silent", manifest=manifest, max_epochs=1))
    assert _states(capsys.readouterr().out) == []
    assert silent.val_score == reported.val_score and silent.epochs == reported.epochs == 1


def _line(step: int, phase: str = "train", loss: float | None = 1.5) -> str:
    state = {"phase": phase, "step": step, "total": 100, "epoch": 1, "max_epochs": 4, "loss": loss,
             "elapsed_s": float(step), "left_s": float(100 - step)}
    return training.PROGRESS_PREFIX + json.dumps(state) + "\n"


def _logger(name: str) -> tuple[logging.Logger, list[str]]:
    messages: list[str] = []
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger.handlers = [handler]
    logger.propagate = False
    return logger, messages


def test_progress_lines_are_logged_every_interval_and_other_lines_kept(monkeypatch):
    logger, messages = _logger("sonufy.test.train-interval")
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)
    tail: deque[str] = deque()
    output = [_line(0, loss=None), _line(10), "epoch 1/4: train_loss_epoch 1.50000 (3 s)\n", "some warning\n",
              training.PROGRESS_PREFIX + "not json\n", _line(100, "done")]
    follow_trainer(output, TrainingProgress(logger), logger, tail)
    # No interval passed: only the epoch line and the end are logged.
    assert messages == ["trainer: epoch 1/4: train_loss_epoch 1.50000 (3 s)",
                        "train: finished after 100 steps, epoch 1 of 4, loss 1.5000, 100 s"]
    assert list(tail) == ["epoch 1/4: train_loss_epoch 1.50000 (3 s)", "some warning",
                          training.PROGRESS_PREFIX + "not json"]

    messages.clear()
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    follow_trainer([_line(10), _line(20, "validate")], TrainingProgress(logger), logger, deque())
    assert messages[0].startswith("train: step 10 of 100 (10%), epoch 1 of 4, loss 1.5000, 10 s, about 0:01:30 left")
    assert "validating" in messages[1]


def test_a_quiet_trainer_is_still_logged(monkeypatch):
    """A line is due every LOG_EVERY_S even while the trainer says nothing."""
    logger, messages = _logger("sonufy.test.train-quiet")
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.1)
    read, write = os.pipe()

    def trainer() -> None:
        with os.fdopen(write, "w") as out:
            out.write(_line(5))
            out.flush()
            time.sleep(0.5)  # a slow step
            out.write(_line(100, "done"))

    thread = threading.Thread(target=trainer)
    thread.start()
    with os.fdopen(read) as output:
        follow_trainer(output, TrainingProgress(logger), logger, deque())
    thread.join()
    quiet = [m for m in messages if "no report for" in m]
    assert quiet and all(m.startswith("train: step 5 of 100") for m in quiet)
    assert messages[-1].startswith("train: finished after 100 steps")


def test_the_training_bar_shows_steps_loss_and_time_left():
    screen = io.StringIO()
    logger, _ = _logger("sonufy.test.train-bar")
    with terminal_bars(Console(file=screen, force_terminal=True, width=120)):
        TrainingProgress(logger).update(json.loads(_line(40)[len(training.PROGRESS_PREFIX):]))
    text = screen.getvalue()
    # Steps, the trainer's own estimate of the time left (60 s), loss and epoch.
    assert "train" in text and "40/100" in text and "0:01:00" in text
    assert "loss 1.5000" in text and "epoch 1/4" in text

    piped = io.StringIO()
    with terminal_bars(Console(file=piped, force_terminal=False)):
        TrainingProgress(logger).update(json.loads(_line(40)[len(training.PROGRESS_PREFIX):]))
    assert piped.getvalue() == ""
