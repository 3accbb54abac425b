"""Train the autoencoder in its own process.

Run it as a command, never inside the orchestrator's process::

    python -m sonufy_model.training --config train.yaml --result-json result.json \\
        [--max-epochs N] [--max-time-s S] [--devices N] [--strategy ddp] ...

Lightning's DDP launcher starts the other ranks by re-executing this command
line, so the entry point must be a module that does nothing but train. Every
rank runs :func:`train`; only global rank 0 writes the result JSON.

Training resumes from ``<output_dir>/checkpoints/last.ckpt`` when it exists,
so a time-boxed or interrupted run continues where it stopped when the same
command is run again (with a larger ``max_epochs`` once that was reached).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from sonufy_model.augment import AugmentSettings
from sonufy_model.datamodule import ManifestError, SpectrogramDataModule, load_manifest
from sonufy_model.model import TimeFreqAutoencoder
from sonufy_model.outputs import write_atomically
from sonufy_model.standardise import Standardiser
from sonufy_model.tiles import TILE_FRAMES
from sonufy_model.train_config import PATH_KEYS, ConfigError, TrainConfig  # noqa: F401 (re-exported)

LAST_CHECKPOINT_NAME = "last.ckpt"
#: What a finished run writes in its folder (``--result-json`` from the train task).
RESULT_NAME = "result.json"
# Starts every line of StepReport's, so that a launcher can tell them from the rest.
PROGRESS_PREFIX = "progress "


class EpochReport(Callback):
    """One line per epoch on stdout, for whoever launched this process.

    The progress bar is off in pipelines; this keeps a time-boxed run from
    being minutes of silence in the orchestrator's logs.
    """

    def __init__(self) -> None:
        self._started = time.perf_counter()

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        names = (
            ("train_loss_epoch", "val_loss")
            if getattr(pl_module, "objective", "") == "invariance"
            else ("train_mse_epoch", "train_contrastive_epoch", "val_mse")
        )
        shown = ", ".join(f"{name} {float(metrics[name]):.5f}" for name in names if name in metrics)
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown} "
            f"({time.perf_counter() - self._started:.0f} s)",
            flush=True,
        )


class StepReport(Callback):
    """A line on stdout at most every ``every_s`` seconds, for a launcher to
    draw a progress bar and log from (``tasks.training``)::

        progress {"phase": "train", "step": 120, "total": 1500, "epoch": 2, "max_epochs": 20,
                  "loss": 2.13, "elapsed_s": 45.2, "left_s": 74.8}

    ``step`` counts optimizer steps (those of a resumed run included),
    ``total`` is the step the run ends at unless early stopping or the time
    box ends it first (null when unbounded, and during the sanity check),
    ``loss`` a moving average of the training loss (null before the first
    step), ``left_s`` the smaller of the steps still to go at this run's
    pace and the time box's remainder (null while neither is known).
    ``phase`` is "train", "validate" (held-out batches; also the sanity
    check before the first step) or "done". Only global rank 0 prints.
    """

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self._started = time.perf_counter()
        self._first_step = 0
        self._last_print = -math.inf
        self._loss: Any = None  # a tensor on the model's device: no sync per step
        # Known from the start of training (not during the sanity check, which
        # must not set up the training data early).
        self._total: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._first_step = trainer.global_step
        total = trainer.estimated_stepping_batches if trainer.max_epochs not in (None, -1) else math.inf
        self._total = int(total) if math.isfinite(total) else None
        self._emit(trainer, "train", force=True)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None:
            loss = loss.detach().float()
            self._loss = loss if self._loss is None else self._loss.lerp(loss, 0.1)
        self._emit(trainer, "train")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any,
                                **kwargs: Any) -> None:
        self._emit(trainer, "validate")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._emit(trainer, "done", force=True)

    def _emit(self, trainer: L.Trainer, phase: str, force: bool = False) -> None:
        now = time.perf_counter()
        if not trainer.is_global_zero or (not force and now - self._last_print < self.every_s):
            return
        self._last_print = now
        elapsed = now - self._started
        step, total = trainer.global_step, self._total
        lefts = []
        done_here = step - self._first_step
        if total is not None and done_here > 0:
            lefts.append(max(total - step, 0) * elapsed / done_here)
        timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
        box_left = timer.time_remaining() if timer is not None else None
        if box_left is not None:
            lefts.append(max(box_left, 0.0))
        state = {
            "phase": phase,
            "step": step,
            "total": total,
            "epoch": trainer.current_epoch + (phase != "done"),
            "max_epochs": trainer.max_epochs,
            "loss": None if self._loss is None else round(float(self._loss), 5),
            "elapsed_s": round(elapsed, 1),
            "left_s": 0.0 if phase == "done" else (round(min(lefts), 1) if lefts else None),
        }
        print(PROGRESS_PREFIX + json.dumps(state), flush=True)


class RankReport(Callback):
    """One line per process at its first training batch: rank, world size and batch.

    Every rank prints it (not only rank 0), so the launcher's output shows
    that all processes trained and how many tiles each one got per step.
    """

    def __init__(self) -> None:
        self._reported = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._reported:
            self._reported = True
            print(
                f"rank {trainer.global_rank}/{trainer.world_size}: "
                f"first training batch of {len(batch)} tiles",
                flush=True,
            )


#: A run folder's name ends with this many characters of its run key.
RUN_KEY_CHARS = 10


def run_key(set_id: str, config: Mapping[str, Any], manifest_csv: str) -> str:
    """What a training run trains, as a digest: its spectrogram set, its
    resolved configuration (where its files are aside) and the spectrograms
    it reads (``manifest_csv``, the manifest as CSV in its stored order).

    Two runs with the same key train the same model, so a run killed before
    it finished is resumed by the next one with its key (its folder keeps the
    last checkpoint), and a run on more tracks or another config starts anew.
    """
    described = {"set_id": set_id, "config": {k: v for k, v in config.items() if k not in PATH_KEYS}}
    digest = hashlib.sha1(json.dumps(described, sort_keys=True, default=str).encode())
    digest.update(manifest_csv.encode())
    return digest.hexdigest()


def runs_with_key(models_dir: Path, key: str) -> list[Path]:
    """The run folders under ``models_dir`` named with ``key``, newest first."""
    suffix = "-" + key[:RUN_KEY_CHARS]
    folders = [folder for folder in models_dir.glob(f"*{suffix}") if folder.is_dir()]
    return sorted(folders, key=lambda folder: folder.stat().st_mtime, reverse=True)


def new_model_version(key: str, now: datetime | None = None) -> str:
    """A version named by when it started (``now``, default: the current UTC
    time) and what it trains (its run key, :func:`run_key`)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return f"ae-{stamp}-{key[:RUN_KEY_CHARS]}"


def unregistered_run(store, models_dir: Path, key: str) -> Path | None:
    """The newest run folder with ``key`` whose version ``store`` does not
    know (``store.model`` raises LookupError): a run killed while training,
    or after it but before it was registered. None when every run with the
    key was registered."""
    for folder in runs_with_key(models_dir, key):
        try:
            store.model(folder.name)
        except LookupError:
            return folder
    return None


def finite_or_none(value: float | None) -> float | None:
    """A score for the models table: None where there is none (NaN from the trainer)."""
    return None if value is None or value != value else float(value)


def model_registration(version: str, set_id: str, config: Mapping[str, Any], result: Mapping[str, Any],
                       standardiser: Standardiser) -> dict[str, Any]:
    """The models-table row of a finished run (``Store.register_model``'s
    record): its ``result`` (the trainer's result.json), its resolved
    ``config`` and its latent ``standardiser``."""
    return {
        "model_version": version,
        "set_id": set_id,
        "config": dict(config),
        "checkpoint": result["checkpoint_path"],
        "epochs": result["epochs"],
        "train_mse": result["train_mse"],
        "val_mse": finite_or_none(result["val_mse"]),
        "val_loss": finite_or_none(result.get("val_score")),
        "n_train_tracks": result["n_train_tracks"],
        "n_val_tracks": result["n_val_tracks"],
        "train_seconds": result["seconds"],
        "latent_mean": standardiser.mean,
        "latent_scale": standardiser.scale,
    }


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``checkpoint_path`` is the checkpoint with the lowest validation score
    (``monitor``: ``val_mse`` for the reconstruction objective, ``val_loss``
    for the invariance one; the model to encode with), ``val_score`` that
    score, and ``val_mse`` the reconstruction MSE (NaN without a decoder). ``train_mse`` is the mean
    training MSE of the last epoch run in this process (NaN when this process
    had no epoch left to run). ``epochs`` counts the epochs run so far,
    including those of the run this one resumed (``resumed_from``) and an
    epoch cut short by the time box.
    """

    checkpoint_path: str
    last_checkpoint_path: str
    epochs: int
    train_mse: float
    val_mse: float
    n_train_tracks: int
    n_val_tracks: int
    seconds: float
    resumed_from: str | None = None
    monitor: str = "val_mse"
    val_score: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train(config: TrainConfig, progress_every_s: float | None = None) -> TrainResult:
    """Fit the autoencoder on ``config.manifest``; see :class:`TrainConfig`.

    With ``progress_every_s``, rank 0 prints a :class:`StepReport` line at
    most that often.

    Raises:
        ManifestError: the manifest or a shard is missing or unusable, or too
            few tracks to hold one out for validation.
        ConfigError: the global batch is smaller than the number of processes.
    """
    started = time.perf_counter()
    manifest = load_manifest(config.manifest)  # fail fast, before any process group starts
    L.seed_everything(config.seed, workers=True)

    output_dir = Path(config.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    checkpointing = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best-{epoch:03d}-{" + config.monitor + ":.5f}",
        monitor=config.monitor,
        mode="min",
        save_top_k=1,
        save_last=True,
    )
    trainer = L.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=config.precision,
        max_epochs=config.max_epochs,
        max_time=None if config.max_time_s is None else timedelta(seconds=config.max_time_s),
        limit_train_batches=config.limit_train_batches,
        callbacks=[
            checkpointing,
            EpochReport(),
            RankReport(),
            EarlyStopping(monitor=config.monitor, mode="min", patience=config.early_stopping_patience),
            *([StepReport(progress_every_s)] if progress_every_s is not None else []),
        ],
        logger=CSVLogger(save_dir=output_dir, name="logs"),
        default_root_dir=output_dir,
        enable_progress_bar=config.enable_progress_bar,
        log_every_n_steps=config.log_every_n_steps,
    )

    n_processes = trainer.num_devices * trainer.num_nodes
    per_device_batch = config.batch_size // n_processes
    if per_device_batch < 1:
        raise ConfigError(f"batch_size {config.batch_size} is smaller than the {n_processes} training processes")
    if per_device_batch * n_processes != config.batch_size:
        rank_zero_warn(
            f"batch_size {config.batch_size} is not divisible by {n_processes} processes; "
            f"the effective global batch is {per_device_batch * n_processes}"
        )

    # One set of augmentation settings: the model draws its views with them,
    # and the data must serve crops wide enough for their widest stretch.
    augment_settings = AugmentSettings(
        config.stretch, config.freq_mask_bands, config.time_mask_frames, config.pitch_semitones, config.gain_db,
        blur_bands=config.blur_bands, shuffle_segments=config.shuffle_segments, tilt_db=config.tilt_db,
        mix_below_db=config.mix_below_db,
    )
    datamodule = SpectrogramDataModule(
        manifest,
        batch_size=per_device_batch,
        val_fraction=config.val_fraction,
        crops_per_track=config.crops_per_track,
        val_tiles_per_track=config.val_tiles_per_track,
        num_workers=config.num_workers,
        seed=config.seed,
        pairs=config.contrastive_weight > 0,
        invariance=config.objective == "invariance",
        crop_frames=augment_settings.crop_frames(TILE_FRAMES),
    )
    datamodule.setup("fit")
    if not datamodule.val_track_ids:
        raise ManifestError(
            f"manifest {config.manifest} has {len(datamodule.train_track_ids)} track(s); "
            "training needs at least 2 so that one is held out for validation"
        )
    assert datamodule.spectrogram_shape is not None
    model = TimeFreqAutoencoder(
        latent_dim=config.latent_dim,
        n_mels=datamodule.spectrogram_shape[0],
        filters=config.filters,
        learning_rate=config.learning_rate,
        contrastive_weight=config.contrastive_weight,
        temperature=config.temperature,
        time_pooling=config.time_pooling,
        encode_tiles=config.encode_tiles,
        objective=config.objective,
        projection_dim=config.projection_dim,
        stretch=config.stretch,
        freq_mask_bands=config.freq_mask_bands,
        time_mask_frames=config.time_mask_frames,
        pitch_semitones=config.pitch_semitones,
        gain_db=config.gain_db,
        blur_bands=config.blur_bands,
        shuffle_segments=config.shuffle_segments,
        tilt_db=config.tilt_db,
        mix_below_db=config.mix_below_db,
    )

    last_checkpoint = checkpoint_dir / LAST_CHECKPOINT_NAME
    resume_from = str(last_checkpoint) if last_checkpoint.is_file() else None
    if resume_from:
        rank_zero_info(f"Resuming from {resume_from}")
    if config.compile:
        compile_passes(model)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)

    train_mse = trainer.callback_metrics.get("train_mse_epoch")
    best_score = checkpointing.best_model_score
    return TrainResult(
        # Without any validation score (e.g. zero epochs ever ran) the last
        # checkpoint is the best available model.
        checkpoint_path=checkpointing.best_model_path or checkpointing.last_model_path,
        last_checkpoint_path=checkpointing.last_model_path,
        epochs=trainer.current_epoch,
        train_mse=float("nan") if train_mse is None else float(train_mse),
        val_mse=float("nan") if config.monitor != "val_mse" or best_score is None else float(best_score),
        n_train_tracks=len(datamodule.train_track_ids),
        n_val_tracks=len(datamodule.val_track_ids),
        seconds=time.perf_counter() - started,
        resumed_from=resume_from,
        monitor=config.monitor,
        val_score=float("nan") if best_score is None else float(best_score),
    )


def compile_passes(model: TimeFreqAutoencoder) -> None:
    """torch.compile the model's encoder and decoder passes in place.

    The passes, not the whole LightningModule: Dynamo cannot trace
    Lightning's ``self.log`` inside a step (torch 2.13). They are instance
    attributes, so the checkpoint's weights keep their plain names.
    """
    model.encode = torch.compile(model.encode)
    if model.decoder is not None:
        model.decode = torch.compile(model.decode)


@rank_zero_only
def _write_result_json(result: TrainResult, path: Path) -> None:
    # Whole or absent: its presence tells a rerun that the run finished.
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    write_atomically(path, lambda staged: staged.write_text(text))


def _devices(text: str) -> str | int:
    """``"2"`` -> 2 devices; anything else (``"auto"``, ``"0,1"``) as Lightning parses it."""
    return int(text) if text.lstrip("-").isdigit() else text


def _batch_limit(text: str) -> int | float:
    """``"5"`` -> 5 batches; ``"0.25"`` -> a quarter of the epoch."""
    return int(text) if text.isdigit() else float(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sonufy_model.training",
        description="Train the Sonufy time/frequency autoencoder. Options after --config override the YAML.",
    )
    parser.add_argument("--config", type=Path, required=True, help="YAML file of TrainConfig fields")
    parser.add_argument("--result-json", type=Path, help="where global rank 0 writes the TrainResult")
    # Overrides: absent options leave the config untouched (SUPPRESS keeps them out of the namespace).
    overrides = parser.add_argument_group("overrides")
    for flag, kind in (
        ("--manifest", str),
        ("--output-dir", str),
        ("--max-epochs", int),
        ("--max-time-s", float),
        ("--batch-size", int),
        ("--num-workers", int),
        ("--seed", int),
        ("--accelerator", str),
        ("--devices", _devices),
        ("--strategy", str),
        ("--precision", str),
        ("--num-nodes", int),
        ("--limit-train-batches", _batch_limit),
    ):
        overrides.add_argument(flag, type=kind, default=argparse.SUPPRESS)
    overrides.add_argument(
        "--progress-bar",
        dest="enable_progress_bar",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--progress-every-s", type=float, default=None, metavar="S",
        help=f"print a line starting {PROGRESS_PREFIX.strip()!r} (JSON: step, total, loss, time left) at most "
        "every S seconds, for a launcher to draw a progress bar from",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status.

    Under DDP the other ranks re-run ``sys.argv``, so pass ``argv`` only for
    single-process runs.
    """
    args = vars(_parser().parse_args(argv))
    config_path, result_path = args.pop("config"), args.pop("result_json")
    progress_every_s = args.pop("progress_every_s")
    try:
        config = dataclasses.replace(TrainConfig.from_yaml(config_path), **args)
        result = train(config, progress_every_s)
    except (ConfigError, ManifestError) as exc:
        print(f"sonufy_model.training: error: {exc}", file=sys.stderr)
        return 2
    rank_zero_info(f"Training finished: {json.dumps(result.to_dict())}")
    if result_path is not None:
        _write_result_json(result, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
