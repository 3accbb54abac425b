"""How fast does the reference autoencoder train? Samples (tiles) per second.

The reference model (filters 32/64/128/256, latent 256, ~7.9 M parameters)
trains for a fixed number of optimizer steps on synthetic uint8 spectrogram
shards (generated in a temporary directory) through the real data module and
a Lightning ``Trainer(max_steps=...)`` in this process: data loading,
forward, backward and Adam, no validation, no checkpoints. The first
``--warmup`` steps are not timed. The device is detected: CUDA with
``bf16-mixed`` when there is a GPU, else the CPU at ``32-true``.

    .venv/bin/python bench/train.py [--steps N] [--warmup W] [--batch-size 32]

From the measured rate it estimates one epoch of 125,000 tiles (e.g. 15,625
tracks x 8 crops). Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import torch

from sonufy_model.datamodule import SpectrogramDataModule
from sonufy_model.model import TimeFreqAutoencoder

EPOCH_TILES = 125_000
N_MELS, N_FRAMES = 128, 512
TRACKS_PER_SHARD = 128


class StepTimer(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started: float | None = None
        self.ended: float | None = None
        self.samples = 0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.started is None:
            self._sync()
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.started is not None:
            self.samples += len(batch)
            self._sync()
            self.ended = time.perf_counter()


def _shards(root: Path, n_tracks: int) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    records = []
    for index, start in enumerate(range(0, n_tracks, TRACKS_PER_SHARD)):
        rows = min(TRACKS_PER_SHARD, n_tracks - start)
        path = root / f"shard-{index:03d}.npy"
        np.save(path, rng.integers(0, 256, size=(rows, N_MELS, N_FRAMES), dtype=np.uint8))
        records += [{"track_id": f"t{start + row:06d}", "shard": str(path), "row": row} for row in range(rows)]
    return pl.DataFrame(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help="timed steps (default: 20 on CPU, 300 on a GPU)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (default: 3 on CPU, 20 on a GPU)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers (default: 0 on CPU, 4 on a GPU)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    precision = "bf16-mixed" if cuda else "32-true"
    steps = args.steps or (300 if cuda else 20)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 3)
    workers = args.num_workers if args.num_workers is not None else (4 if cuda else 0)
    crops_per_track = 8
    total_steps = warmup + steps
    # Enough training tracks that the steps fit in one epoch (validation takes ~10%).
    n_tracks = int(total_steps * args.batch_size / crops_per_track / 0.85) + 2

    torch.manual_seed(0)
    model = TimeFreqAutoencoder(latent_dim=256, filters=(32, 64, 128, 256))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {device}, precision {precision}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, lightning {L.__version__}")
    print(f"model: reference autoencoder, filters 32/64/128/256, latent 256, {n_params:,} parameters")
    print(f"data: {n_tracks} synthetic tracks ({N_MELS}x{N_FRAMES} uint8), {crops_per_track} crops each, "
          f"batch {args.batch_size}, {workers} loader workers; {warmup} warm-up + {steps} timed steps")

    with tempfile.TemporaryDirectory(prefix="sonufy-bench-train-") as tmp:
        manifest = _shards(Path(tmp), n_tracks)
        datamodule = SpectrogramDataModule(
            manifest, batch_size=args.batch_size, crops_per_track=crops_per_track, num_workers=workers, seed=0
        )
        timer = StepTimer(warmup)
        trainer = L.Trainer(
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            precision=precision,
            max_steps=total_steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            default_root_dir=tmp,
        )
        trainer.fit(model, datamodule=datamodule)

    assert timer.started is not None and timer.ended is not None and timer.samples > 0
    seconds = timer.ended - timer.started
    samples_per_s = timer.samples / seconds
    epoch_s = EPOCH_TILES / samples_per_s
    print(f"{timer.samples} tiles in {seconds:.2f} s: {samples_per_s:.1f} tiles/s, "
          f"{seconds / (timer.samples / args.batch_size) * 1000:.0f} ms/step")
    print(f"one epoch of {EPOCH_TILES:,} tiles: {epoch_s:,.0f} s ({epoch_s / 3600:.2f} h)")
    print(json.dumps({
        "bench": "train",
        "device": device,
        "precision": precision,
        "batch_size": args.batch_size,
        "timed_steps": steps,
        "samples_per_s": round(samples_per_s, 1),
        "epoch_125k_s": round(epoch_s, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
