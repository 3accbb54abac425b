"""The training run's settings: :class:`TrainConfig`, loadable from YAML.

Kept apart from :mod:`sonufy_model.training` (torch and Lightning) so that
the flows, their typed parameters and the command line can read and check a
configuration without importing them: importing torch and Lightning took
about 4.6 s of a nightly's start-up on 2 cores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sonufy_model.fusion import TEXTURES
from sonufy_model.presets import DEFAULT_PRESET, PRESETS


class ConfigError(ValueError):
    """The training configuration is missing, malformed or inconsistent."""


@dataclass
class TrainConfig:
    """Everything a training run needs; loadable from YAML.

    ``batch_size`` is the GLOBAL batch: each of the ``devices × num_nodes``
    processes gets ``batch_size // (devices × num_nodes)`` tiles per step, so
    changing the device count keeps the optimisation roughly the same.
    ``max_time_s`` time-boxes the run (Lightning stops after the current
    step and still validates and checkpoints). ``limit_train_batches`` is
    passed to the Trainer as-is (an int counts batches, a float is a
    fraction of the epoch).
    """

    manifest: str
    output_dir: str
    max_epochs: int = 20
    max_time_s: float | None = None
    batch_size: int = 32
    crops_per_track: int = 8
    val_fraction: float = 0.1
    val_tiles_per_track: int = 4
    num_workers: int = 0
    seed: int = 0
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    # Which preset from_dict/from_yaml started from (None: built field by field).
    preset: str | None = None
    num_nodes: int = 1
    limit_train_batches: float | int | None = None
    early_stopping_patience: int = 5
    enable_progress_bar: bool = False
    log_every_n_steps: int = 10
    # Model hyperparameters (see TimeFreqAutoencoder).
    latent_dim: int = 256
    filters: tuple[int, ...] = (32, 64, 128, 256)
    learning_rate: float = 1e-3
    # Contrastive variant: > 0 adds weight x NT-Xent between two crops of one
    # track (training batches become crop pairs); 0 is the reference.
    contrastive_weight: float = 0.0
    temperature: float = 0.1
    time_pooling: str = "flatten"
    # "reconstruction" (the seed's autoencoder) or "invariance" (see PRESETS).
    objective: str = "reconstruction"
    projection_dim: int = 128
    # The invariance objective's augmentations (sonufy_model.augment).
    stretch: float = 0.25
    freq_mask_bands: int = 16
    time_mask_frames: int = 24
    pitch_semitones: float = 0.0
    gain_db: float = 0.0
    blur_bands: float = 0.0
    shuffle_segments: int = 0
    tilt_db: float = 0.0
    mix_below_db: float = 0.0
    # torch.compile the model before fitting: costs about 30 s of compiling
    # at the start, then ran the reference autoencoder 1.2x faster on 2 CPU
    # cores (bench/train.py); the default model, all small 1-D convolutions,
    # gained nothing from it, so it is off.
    compile: bool = False
    # Tiles per spectrogram averaged into a track's vector. 8 scores as 32
    # (the seed's) on the demo catalog's evaluation, at a quarter of the
    # encoding work (docs/performance.md, "How fast is search?").
    encode_tiles: int = 8
    # "blocks6" (the paper's six) or "blocks" (five, spectral contrast left
    # out): a track's vector fuses the encoder's with those block-level
    # texture patterns (sonufy_model.fusion); "none": the encoder's alone.
    texture: str = "none"

    def __post_init__(self) -> None:
        if self.texture not in TEXTURES:
            raise ConfigError(f"texture {self.texture!r}: expected one of {list(TEXTURES)}")
        # YAML and JSON give lists; the model's hyperparameters use a tuple.
        self.filters = tuple(int(f) for f in self.filters)
        self.manifest = str(self.manifest)
        self.output_dir = str(self.output_dir)

    @property
    def monitor(self) -> str:
        """The validation metric that picks the best checkpoint and stops early."""
        return "val_loss" if self.objective == "invariance" else "val_mse"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from a mapping of field names to values, on top of its preset.

        ``preset`` (default :data:`DEFAULT_PRESET`) names the starting point in
        :data:`PRESETS`; every other key overrides it. Constructing
        ``TrainConfig(...)`` directly uses no preset, only the fields' defaults.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source} has unknown key(s) {unknown}")
        missing = sorted(name for name in ("manifest", "output_dir") if name not in data)
        if missing:
            raise ConfigError(f"{source} lacks required key(s) {missing}")
        preset = data.get("preset") or DEFAULT_PRESET
        if preset not in PRESETS:
            raise ConfigError(f"{source}: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **data, "preset": preset})

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load a config from a YAML mapping of field names to values (see :meth:`from_dict`)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a YAML mapping of TrainConfig fields")
        return cls.from_dict(data, f"config {path}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serialisable dict (``filters`` as a list)."""
        data = dataclasses.asdict(self)
        data["filters"] = list(self.filters)
        return data


#: The config keys that say where a run's files are, not what it trains.
PATH_KEYS = ("manifest", "output_dir")
