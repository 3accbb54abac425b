"""The reference time/frequency convolutional autoencoder.

The encoder looks at a mel-spectrogram tile twice with 1-D convolutions:

* the **time branch** slides along time, with the mel bands as channels, so it
  learns how the spectrum evolves (rhythm, onsets, note changes);
* the **frequency branch** slides along frequency, with the time frames as
  channels, so it learns the spectral shape (timbre, register, brightness).

Each branch ends in its own linear projection to ``latent_dim // 2``
features and the two are concatenated. Downstream code relies on that layout:
``latent[:, :latent_dim // 2]`` is the time half and
``latent[:, latent_dim // 2:]`` the frequency half, from which "time" and
"frequency" similarities are computed separately.

The decoder only exists to train the encoder (reconstruction loss); inference
uses :meth:`TimeFreqAutoencoder.encode`.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

# Every encoder and decoder stage halves or doubles the resolution with the
# same kernel, so the tile shapes stay exact (see ``_conv1d_block``).
_KERNEL_SIZE = 5
_PADDING = 2
_STRIDE = 2


def _conv1d_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv1d that halves the length (kernel 5, stride 2, padding 2), ReLU, BatchNorm."""
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, _KERNEL_SIZE, stride=_STRIDE, padding=_PADDING),
        nn.ReLU(),
        nn.BatchNorm1d(out_channels),
    )


def _deconv2d_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """ConvTranspose2d that doubles height and width exactly, ReLU, BatchNorm."""
    return nn.Sequential(
        nn.ConvTranspose2d(
            in_channels, out_channels, _KERNEL_SIZE, stride=_STRIDE, padding=_PADDING, output_padding=1
        ),
        nn.ReLU(),
        nn.BatchNorm2d(out_channels),
    )


def _encoder_branch(in_channels: int, length: int, filters: tuple[int, ...], out_features: int) -> nn.Sequential:
    """One 1-D convolutional branch: conv blocks, flatten, linear projection."""
    channels = (in_channels, *filters)
    blocks = [_conv1d_block(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:])]
    reduced_length = length // _STRIDE ** len(filters)
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(filters[-1] * reduced_length, out_features))


class TimeFreqAutoencoder(L.LightningModule):
    """Autoencoder over ``(n_mels, tile_frames)`` spectrogram tiles in [0, 1].

    Batches: every ``*_step`` receives a plain float tensor of tiles, shape
    ``(B, n_mels, tile_frames)`` (``(B, 1, n_mels, tile_frames)`` is accepted
    too); no dict or tuple wrapping. The reconstruction target is the input.

    Args:
        latent_dim: size of the embedding; must be even (half per branch).
        n_mels: mel bands per tile (height).
        tile_frames: time frames per tile (width).
        filters: channels of the encoder's conv stages; the decoder mirrors
            them. Each stage halves (encoder) or doubles (decoder) the
            resolution, so ``n_mels`` and ``tile_frames`` must be divisible
            by ``2 ** len(filters)`` (16 for the default four stages).
        learning_rate: Adam learning rate.
    """

    def __init__(
        self,
        latent_dim: int = 256,
        n_mels: int = 128,
        tile_frames: int = 128,
        filters: tuple[int, ...] = (32, 64, 128, 256),
        learning_rate: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        filters = tuple(int(f) for f in filters)
        if not filters:
            raise ValueError("filters must name at least one conv stage")
        if latent_dim % 2:
            raise ValueError(f"latent_dim must be even (half per branch), got {latent_dim}")
        scale = _STRIDE ** len(filters)
        if n_mels % scale or tile_frames % scale:
            raise ValueError(
                f"n_mels ({n_mels}) and tile_frames ({tile_frames}) must be divisible by {scale} "
                f"for {len(filters)} stride-2 stages"
            )
        self.latent_dim = latent_dim
        self.n_mels = n_mels
        self.tile_frames = tile_frames
        self.learning_rate = learning_rate

        half = latent_dim // 2
        # Time branch: mel bands are channels, convolve along time.
        self.time_encoder = _encoder_branch(n_mels, tile_frames, filters, half)
        # Frequency branch: time frames are channels, convolve along frequency.
        self.frequency_encoder = _encoder_branch(tile_frames, n_mels, filters, half)

        self._decoder_grid = (filters[-1], n_mels // scale, tile_frames // scale)
        self.decoder_input = nn.Linear(latent_dim, filters[-1] * (n_mels // scale) * (tile_frames // scale))
        # Mirror of the encoder: deepest filter count first, e.g. 256 -> 256/128/64/32.
        decoder_channels = (filters[-1], *reversed(filters))
        self.decoder = nn.Sequential(
            *[_deconv2d_block(c_in, c_out) for c_in, c_out in zip(decoder_channels[:-1], decoder_channels[1:])],
            nn.ConvTranspose2d(filters[0], 1, _KERNEL_SIZE, stride=1, padding=_PADDING),
            nn.Sigmoid(),
        )

    def _as_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """Validate a batch of tiles and return it as ``(B, n_mels, tile_frames)``."""
        if x.ndim == 4 and x.shape[1] == 1:
            x = x.squeeze(1)
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_mels, self.tile_frames):
            raise ValueError(
                f"expected tiles of shape (B, {self.n_mels}, {self.tile_frames}) "
                f"or (B, 1, {self.n_mels}, {self.tile_frames}), got {tuple(x.shape)}"
            )
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embed tiles: ``(B, latent_dim)`` = [time half | frequency half]."""
        tiles = self._as_tiles(x)
        time_features = self.time_encoder(tiles)
        frequency_features = self.frequency_encoder(tiles.transpose(1, 2))
        return torch.cat([time_features, frequency_features], dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruct tiles ``(B, 1, n_mels, tile_frames)`` in (0, 1) from latents."""
        grid = self.decoder_input(z).view(-1, *self._decoder_grid)
        return self.decoder(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` as ``(B, 1, n_mels, tile_frames)``."""
        return self.decode(self.encode(x))

    def _shared_step(self, batch: torch.Tensor, stage: str) -> torch.Tensor:
        """Reconstruction MSE of one batch of tiles, logged as ``{stage}_mse``."""
        tiles = self._as_tiles(batch)
        loss = F.mse_loss(self(tiles), tiles.unsqueeze(1))
        self.log(
            f"{stage}_mse",
            loss,
            prog_bar=stage in ("train", "val"),
            on_epoch=True,
            sync_dist=True,
            batch_size=tiles.shape[0],
        )
        return loss

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)
