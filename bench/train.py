"""How fast do Sonufy's models train? Tiles (views) per second, before and after tuning.

Each variant trains for a fixed number of optimizer steps on synthetic uint8
spectrogram shards (generated once in a temporary directory) through the
real data module and a Lightning ``Trainer(max_steps=...)`` in this process:
data loading, augmentation, forward, backward and Adam; no validation, no
checkpoints. The first ``--warmup`` steps (compilation included) are not
timed. Variants, all in one run so that their ratios share one machine state:

  reference, baseline   the seed's autoencoder (filters 32/64/128/256, about
                        7.9 M parameters, batch 32) as it trained before
                        tuning: fp32, its decoder in the plain memory layout,
                        the loader turning each tile into float32 on its own.
  reference, tuned      the same model and batch as the trainer runs it now
                        (decoder channels-last, batches of uint8 pixels scaled
                        by the model), in bf16 mixed precision where the
                        processor has bf16 instructions (else fp32), and
                        compiled (``compile: true``).
  default, baseline     the default model (preset "invariance": encoder only,
                        batch 64 crop pairs = 128 views), fp32, float32 tiles.
  default               the same as the trainer runs it now (uint8 batches);
                        and in bf16 mixed precision where supported.

The device is detected: on CUDA every variant runs in bf16-mixed. From each
rate it estimates one epoch of 125,000 tiles.

    .venv/bin/python bench/train.py [--steps N] [--warmup W] [--only reference|default]

Last line: one JSON object; ``samples_per_s`` and ``epoch_125k_s`` are the
tuned reference's, ``baseline_samples_per_s`` the untuned one's, ``ratio``
tuned over baseline, ``default`` the default model's figures (its own
``ratio``: uint8 batches over float32 tiles).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import torch

from sonufy_model.augment import AugmentSettings
from sonufy_model.datamodule import SpectrogramDataModule, _ShardTileDataset
from sonufy_model.model import TimeFreqAutoencoder
from sonufy_model.presets import PRESETS
from sonufy_model.tiles import TILE_FRAMES, UINT8_SCALE
from sonufy_model.training import compile_passes

EPOCH_TILES = 125_000
N_MELS, N_FRAMES = 128, 512
TRACKS_PER_SHARD = 128
CROPS_PER_TRACK = 8


class StepTimer(L.Callback):
    """Wall time and tiles (views) from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int, views_per_item: int) -> None:
        self.warmup = warmup
        self.views_per_item = views_per_item
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
            self.samples += len(batch) * self.views_per_item
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


@contextlib.contextmanager
def float_tiles_per_item():
    """The data module's loader as it was before tuning: each tile turned into
    float32 in [0, 1] on its own, so batches were collated (and copied to a
    GPU) at four bytes a pixel instead of one."""
    uint8_read = _ShardTileDataset._read_tile

    def read_float(self, track: int, offset: int) -> torch.Tensor:
        return uint8_read(self, track, offset).float().div_(UINT8_SCALE)

    _ShardTileDataset._read_tile = read_float
    try:
        yield
    finally:
        _ShardTileDataset._read_tile = uint8_read


def bf16_supported(cuda: bool) -> bool:
    """Whether bf16 mixed precision is fast here: a GPU with bf16, or a CPU with AVX-512 BF16 or AMX."""
    if cuda:
        return torch.cuda.is_bf16_supported()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def measure(name: str, manifest: pl.DataFrame, root: str, *, default: bool, precision: str, channels_last: bool,
            compiled: bool, uint8_batches: bool, steps: int, warmup: int, workers: int, cuda: bool) -> dict:
    """Train ``steps`` timed steps of one variant (the loader as it was
    before tuning unless ``uint8_batches``); its figures."""
    torch.manual_seed(0)
    if default:
        preset = PRESETS["invariance"]
        settings = AugmentSettings(gain_db=preset["gain_db"])
        model = TimeFreqAutoencoder(
            latent_dim=256, filters=preset["filters"], time_pooling=preset["time_pooling"], objective="invariance",
            temperature=preset["temperature"], gain_db=preset["gain_db"],
        )
        batch_size, views_per_item = preset["batch_size"], 2
        datamodule = SpectrogramDataModule(
            manifest, batch_size=batch_size, crops_per_track=preset["crops_per_track"], num_workers=workers,
            seed=0, invariance=True, crop_frames=settings.crop_frames(TILE_FRAMES),
        )
    else:
        model = TimeFreqAutoencoder(latent_dim=256, filters=(32, 64, 128, 256))
        batch_size, views_per_item = 32, 1
        datamodule = SpectrogramDataModule(
            manifest, batch_size=batch_size, crops_per_track=CROPS_PER_TRACK, num_workers=workers, seed=0
        )
        if not channels_last:
            model.decoder.to(memory_format=torch.contiguous_format)
            model.decoder_memory_format = torch.contiguous_format
    if compiled:
        compile_passes(model)
    timer = StepTimer(warmup, views_per_item)
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision=precision, max_steps=warmup + steps,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], default_root_dir=root,
    )
    with contextlib.nullcontext() if uint8_batches else float_tiles_per_item():
        trainer.fit(model, datamodule=datamodule)
    assert timer.started is not None and timer.ended is not None and timer.samples > 0, "no step was timed"
    seconds = timer.ended - timer.started
    rate = timer.samples / seconds
    figures = {"samples_per_s": round(rate, 1), "epoch_125k_s": round(EPOCH_TILES / rate, 1),
               "batch_size": batch_size, "precision": precision, "channels_last": channels_last,
               "compiled": compiled, "uint8_batches": uint8_batches, "ms_per_step": round(seconds / steps * 1000, 1)}
    print(f"{name:<22} {rate:8.1f} tiles/s  {figures['ms_per_step']:7.1f} ms/step  "
          f"epoch of {EPOCH_TILES:,} tiles {EPOCH_TILES / rate:8,.0f} s  "
          f"({precision}{', channels-last' if channels_last and not default else ''}"
          f"{', compiled' if compiled else ''}{', uint8 batches' if uint8_batches else ', float32 tiles'})",
          flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help="timed steps per variant (default: 20 on CPU, 300 on a GPU)")
    parser.add_argument("--warmup", type=int,
                        help="untimed first steps, compilation included (default: 5 on CPU, 20 on a GPU)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers (default: 0 on CPU, 4 on a GPU)")
    parser.add_argument("--only", choices=("reference", "default"), help="measure one model's variants only")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    bf16 = bf16_supported(cuda)
    fast_precision = "bf16-mixed" if bf16 else "32-true"
    steps = args.steps or (300 if cuda else 20)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 5)
    workers = args.num_workers if args.num_workers is not None else (4 if cuda else 0)
    # Enough tracks that every variant's steps fit in one epoch of its data
    # module (the default model: 64 pairs a step, 16 pairs per track an epoch;
    # validation holds out ~10%).
    n_tracks = int((warmup + steps) * 64 / 16 / 0.85) + 2
    n_tracks = max(n_tracks, int((warmup + steps) * 32 / CROPS_PER_TRACK / 0.85) + 2)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"lightning {L.__version__}, bf16 {'supported' if bf16 else 'not supported'}")
    print(f"data: {n_tracks} synthetic tracks ({N_MELS}x{N_FRAMES} uint8), {workers} loader workers; "
          f"{warmup} warm-up + {steps} timed steps per variant")

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sonufy-bench-train-") as tmp:
        manifest = _shards(Path(tmp), n_tracks)
        common = {"steps": steps, "warmup": warmup, "workers": workers, "cuda": cuda}
        baseline_precision = "bf16-mixed" if cuda else "32-true"
        variants = []
        if args.only in (None, "reference"):
            variants += [
                ("reference, baseline", dict(default=False, precision=baseline_precision, channels_last=False,
                                             compiled=False, uint8_batches=False)),
                ("reference, tuned", dict(default=False, precision=fast_precision, channels_last=True,
                                          compiled=True, uint8_batches=True)),
            ]
        if args.only in (None, "default"):
            variants += [
                ("default, baseline", dict(default=True, precision=baseline_precision, channels_last=True,
                                           compiled=False, uint8_batches=False)),
                ("default", dict(default=True, precision=baseline_precision, channels_last=True, compiled=False,
                                 uint8_batches=True)),
            ]
            if fast_precision != baseline_precision:
                variants += [("default, bf16", dict(default=True, precision=fast_precision, channels_last=True,
                                                    compiled=False, uint8_batches=True))]
        for name, options in variants:
            results[name] = measure(name, manifest, tmp, **options, **common)

    out: dict = {"bench": "train", "device": device, "timed_steps": steps}
    if "reference, tuned" in results:
        tuned, baseline = results["reference, tuned"], results["reference, baseline"]
        ratio = tuned["samples_per_s"] / baseline["samples_per_s"]
        print(f"reference, tuned / baseline: {ratio:.2f}x (same model and batch)")
        out |= {"precision": tuned["precision"], "batch_size": tuned["batch_size"],
                "samples_per_s": tuned["samples_per_s"], "epoch_125k_s": tuned["epoch_125k_s"],
                "baseline_samples_per_s": baseline["samples_per_s"], "ratio": round(ratio, 2)}
    if "default" in results:
        best = max((results[n] for n in ("default", "default, bf16") if n in results),
                   key=lambda r: r["samples_per_s"])
        own_ratio = results["default"]["samples_per_s"] / results["default, baseline"]["samples_per_s"]
        print(f"default, uint8 batches / float32 tiles: {own_ratio:.2f}x")
        out["default"] = {"samples_per_s": results["default"]["samples_per_s"],
                          "baseline_samples_per_s": results["default, baseline"]["samples_per_s"],
                          "ratio": round(own_ratio, 2),
                          "best_samples_per_s": best["samples_per_s"], "best_precision": best["precision"],
                          "epoch_125k_s": best["epoch_125k_s"]}
        if "reference, baseline" in results:
            versus = results["default"]["samples_per_s"] / results["reference, baseline"]["samples_per_s"]
            print(f"default model / reference baseline: {versus:.1f}x tiles/s")
            out["default"]["ratio_to_reference_baseline"] = round(versus, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
