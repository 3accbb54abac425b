"""Distributed training on CPU: two DDP processes (gloo) through the entry point.

Lightning's DDP launcher re-executes ``python -m sonufy_model.training`` for
rank 1, so this is the same path a multi-GPU run takes, minus the GPUs.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
N_MELS, N_FRAMES = 128, 512
SMALL_FILTERS = [4, 8, 16, 32]
GLOBAL_BATCH = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _manifest(root: Path) -> Path:
    """12 tiny uint8 tracks in two shards, and their parquet manifest."""
    rng = np.random.default_rng(99)
    spectrograms = rng.integers(0, 255, size=(12, N_MELS, N_FRAMES), dtype=np.uint8)
    records = []
    for index, rows in enumerate((range(0, 6), range(6, 12))):
        shard = root / f"shard-{index}.npy"
        np.save(shard, spectrograms[list(rows)])
        records += [{"track_id": f"t{i:02d}", "shard": str(shard), "row": row} for row, i in enumerate(rows)]
    path = root / "manifest.parquet"
    pl.DataFrame(records).write_parquet(path)
    return path


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains_on_both_ranks(tmp_path):
    config = {
        "manifest": str(_manifest(tmp_path)),
        "output_dir": str(tmp_path / "run"),
        "batch_size": GLOBAL_BATCH,
        "crops_per_track": 4,
        "val_fraction": 0.25,
        "filters": SMALL_FILTERS,
        "seed": 3,
    }
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    command = [
        sys.executable, "-m", "sonufy_model.training", "--config", str(config_path),
        "--result-json", str(results / "result.json"),
        "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu",
        "--max-epochs", "1", "--limit-train-batches", "2",
    ]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",  # two ranks on a 2-core machine: no oversubscription
    }
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK"):
        env.pop(name, None)
    process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-4000:]

    # Both ranks trained, each on its share of the global batch.
    ranks = dict(re.findall(r"rank (\d)/2: first training batch of (\d+) tiles", process.stdout))
    assert ranks == {"0": str(GLOBAL_BATCH // 2), "1": str(GLOBAL_BATCH // 2)}, output[-4000:]

    # Exactly one result JSON, from rank 0.
    assert [p.name for p in results.iterdir()] == ["result.json"]
    result = json.loads((results / "result.json").read_text())
    assert result["epochs"] == 1
    # The default preset: the invariance model, its NT-Xent over both ranks' views.
    assert result["monitor"] == "val_loss" and math.isfinite(result["val_score"]) and result["val_score"] > 0
    assert result["n_train_tracks"] + result["n_val_tracks"] == 12
    assert Path(result["checkpoint_path"]).is_file()
    assert Path(result["last_checkpoint_path"]).is_file()

    # Two optimizer steps (limit_train_batches), logged once (rank 0's logger).
    metrics = pl.read_csv(tmp_path / "run" / "logs" / "version_0" / "metrics.csv")
    assert metrics["step"].max() <= 2 and metrics["val_loss"].drop_nulls().len() == 1
