"""The time/frequency encoder in plain torch: what turns tiles into latents.

:class:`sonufy_model.model.TimeFreqAutoencoder` (a LightningModule) trains
it; :class:`TileEncoder` runs it. Encoding needs neither Lightning nor the
decoder or projection head, and importing Lightning costs about 2.3 s of a
nightly on 2 cores (it imports torch._dynamo), more than the night spends
encoding its new tracks; so a trained version is loaded here, from its
checkpoint's hyperparameters and the encoder's weights, with torch alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# Every encoder and decoder stage halves or doubles the resolution with the
# same kernel, so the tile shapes stay exact (see ``conv1d_block``).
KERNEL_SIZE = 5
PADDING = 2
STRIDE = 2
#: The modules of a checkpoint that make up the encoder.
ENCODER_MODULES = ("time_encoder", "frequency_encoder")


def conv1d_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv1d that halves the length (kernel 5, stride 2, padding 2), ReLU, BatchNorm."""
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, KERNEL_SIZE, stride=STRIDE, padding=PADDING),
        nn.ReLU(),
        nn.BatchNorm1d(out_channels),
    )


def encoder_branch(
    in_channels: int, length: int, filters: tuple[int, ...], out_features: int, pooling: str = "flatten"
) -> nn.Sequential:
    """One 1-D convolutional branch: conv blocks, then flatten (or mean over positions), linear projection."""
    channels = (in_channels, *filters)
    blocks = [conv1d_block(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:])]
    if pooling == "mean":
        return nn.Sequential(*blocks, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(filters[-1], out_features))
    reduced_length = length // STRIDE ** len(filters)
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(filters[-1] * reduced_length, out_features))


def as_tiles(x: torch.Tensor, n_mels: int, tile_frames: int) -> torch.Tensor:
    """Validate a batch of tiles and return it as ``(B, n_mels, tile_frames)``."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x.squeeze(1)
    if x.ndim != 3 or tuple(x.shape[1:]) != (n_mels, tile_frames):
        raise ValueError(
            f"expected tiles of shape (B, {n_mels}, {tile_frames}) "
            f"or (B, 1, {n_mels}, {tile_frames}), got {tuple(x.shape)}"
        )
    return x


def encode_tiles(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, latent_dim)`` = [time half | frequency half] of a batch of tiles,
    through ``module``'s two branches (``time_encoder``, ``frequency_encoder``)."""
    tiles = as_tiles(x, module.n_mels, module.tile_frames)
    time_features = module.time_encoder(tiles)
    frequency_features = module.frequency_encoder(tiles.transpose(1, 2))
    return torch.cat([time_features, frequency_features], dim=1)


class TileEncoder(nn.Module):
    """A trained version's encoder, for inference (:func:`sonufy_model.encoding.encode_spectrograms`)."""

    def __init__(self, latent_dim: int = 256, n_mels: int = 128, tile_frames: int = 128,
                 filters: tuple[int, ...] = (32, 64, 128, 256), time_pooling: str = "flatten",
                 encode_tiles: int = 32) -> None:
        super().__init__()
        filters = tuple(int(f) for f in filters)
        self.latent_dim, self.n_mels, self.tile_frames = latent_dim, n_mels, tile_frames
        self.encode_tiles = int(encode_tiles)
        half = latent_dim // 2
        # The same modules, under the same names, as TimeFreqAutoencoder's.
        self.time_encoder = encoder_branch(n_mels, tile_frames, filters, half, time_pooling)
        self.frequency_encoder = encoder_branch(tile_frames, n_mels, filters, half)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return encode_tiles(self, x)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> TileEncoder:
        """The encoder of a Lightning checkpoint of TimeFreqAutoencoder, in eval mode."""
        saved = torch.load(path, map_location=device, weights_only=False)  # our own file: hyperparameters too
        hparams = saved.get("hyper_parameters", {})
        encoder = cls(**{name: hparams[name] for name in
                         ("latent_dim", "n_mels", "tile_frames", "filters", "time_pooling", "encode_tiles")
                         if name in hparams})
        weights = {name: value for name, value in saved["state_dict"].items()
                   if name.split(".", 1)[0] in ENCODER_MODULES}
        encoder.load_state_dict(weights)  # strict: every encoder weight is there, or the file is not ours
        return encoder.to(device).eval()
