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
"frequency" similarities are computed separately (for a model fusing texture
patterns, the stored vector's halves are the encoder's and the texture's
instead: :mod:`sonufy_model.fusion`).

The decoder only exists to train the encoder (reconstruction loss); inference
uses :meth:`TimeFreqAutoencoder.encode`.

Optional contrastive objective (``contrastive_weight > 0``): training batches
are then *pairs* of crops, ``(B, 2, n_mels, tile_frames)``, two random crops
of the same track per item. The loss is the reconstruction MSE of both crops
plus ``contrastive_weight`` × NT-Xent (InfoNCE) over the L2-normalised
latents: each crop's positive is the other crop of its track, its negatives
every crop of the other items in the batch. With weight 0 the model is the
reference autoencoder (same parameters, same loss). ``{stage}_mse`` is always
the reconstruction MSE alone, so checkpoint monitoring on ``val_mse`` stays
comparable across variants.

Invariance objective (``objective="invariance"``, the default of
``sonufy_model.training``'s presets): no decoder at all. Training batches are
pairs of wider crops of one track, taken at different positions (and, for a
whole song analysed on several excerpts, from different excerpts); each crop
becomes a random view (:mod:`sonufy_model.augment`: a small time stretch,
a masked band and span), and the encoder, through a small projection head,
learns to find a view's partner among the batch's other tracks (NT-Xent).
What stays the same across a track — instruments, production, texture —
is what the latent keeps; the head is only used in training, as in SimCLR.
Validation scores the same loss on fixed, unaugmented pairs of held-out
tracks (``val_loss``); there is no reconstruction and so no ``val_mse``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from sonufy_model.augment import AugmentSettings, augment
from sonufy_model.encoder_net import KERNEL_SIZE, PADDING, STRIDE, as_tiles, encode_tiles, encoder_branch
from sonufy_model.tiles import UINT8_SCALE

OBJECTIVES = ("reconstruction", "invariance")

def _deconv2d_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """ConvTranspose2d that doubles height and width exactly, ReLU, BatchNorm."""
    return nn.Sequential(
        nn.ConvTranspose2d(
            in_channels, out_channels, KERNEL_SIZE, stride=STRIDE, padding=PADDING, output_padding=1
        ),
        nn.ReLU(),
        nn.BatchNorm2d(out_channels),
    )


def as_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """A batch of stored uint8 spectrogram pixels as float32 in [0, 1]; a float batch as it is."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(UINT8_SCALE)
    return batch


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
        contrastive_weight: weight of the NT-Xent term added to the MSE; 0
            (the default) is the plain reference autoencoder. Above 0,
            batches of crop pairs ``(B, 2, n_mels, tile_frames)`` add the
            term; single-tile batches (validation) still score MSE only.
        temperature: NT-Xent softmax temperature over cosine similarities.
        time_pooling: how the time branch summarises its last conv stage:
            "flatten" (the reference: a linear map of every time position,
            so features depend on where events fall in the tile) or "mean"
            (an average over time positions first: shift-invariant, fewer
            parameters). Measured on the demo catalog and not the default
            (see README, "How good is it?").
        encode_tiles: fixed tiles per 30 s spectrogram whose latents a
            track's vector averages (:func:`sonufy_model.encoding.encode_spectrograms`).
            Part of the model version, so that every vector of a version is
            computed alike; 32 (the seed's) for checkpoints that predate it.
        objective: "reconstruction" (the seed's autoencoder, optionally with
            ``contrastive_weight``) or "invariance" (encoder and projection
            head only, NT-Xent between augmented views of one track; see the
            module docstring).
        projection_dim: output size of the invariance objective's projection
            head (training only).
        stretch, freq_mask_bands, time_mask_frames, pitch_semitones, gain_db, blur_bands,
        shuffle_segments, tilt_db, mix_below_db: the invariance
            objective's augmentations (:class:`sonufy_model.augment.AugmentSettings`).
    """

    def __init__(
        self,
        latent_dim: int = 256,
        n_mels: int = 128,
        tile_frames: int = 128,
        filters: tuple[int, ...] = (32, 64, 128, 256),
        learning_rate: float = 1e-3,
        contrastive_weight: float = 0.0,
        temperature: float = 0.1,
        time_pooling: str = "flatten",
        encode_tiles: int = 32,
        objective: str = "reconstruction",
        projection_dim: int = 128,
        stretch: float = 0.25,
        freq_mask_bands: int = 16,
        time_mask_frames: int = 24,
        pitch_semitones: float = 0.0,
        gain_db: float = 0.0,
        blur_bands: float = 0.0,
        shuffle_segments: int = 0,
        tilt_db: float = 0.0,
        mix_below_db: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        filters = tuple(int(f) for f in filters)
        if not filters:
            raise ValueError("filters must name at least one conv stage")
        if latent_dim % 2:
            raise ValueError(f"latent_dim must be even (half per branch), got {latent_dim}")
        scale = STRIDE ** len(filters)
        if n_mels % scale or tile_frames % scale:
            raise ValueError(
                f"n_mels ({n_mels}) and tile_frames ({tile_frames}) must be divisible by {scale} "
                f"for {len(filters)} stride-2 stages"
            )
        self.latent_dim = latent_dim
        self.n_mels = n_mels
        self.tile_frames = tile_frames
        self.learning_rate = learning_rate
        if contrastive_weight < 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {contrastive_weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.contrastive_weight = float(contrastive_weight)
        if encode_tiles < 1:
            raise ValueError(f"encode_tiles must be >= 1, got {encode_tiles}")
        self.encode_tiles = int(encode_tiles)
        if time_pooling not in ("flatten", "mean"):
            raise ValueError(f"time_pooling must be 'flatten' or 'mean', got {time_pooling!r}")
        self.temperature = float(temperature)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        self.augment_settings = AugmentSettings(
            stretch, freq_mask_bands, time_mask_frames, pitch_semitones, gain_db, blur_bands=blur_bands,
            shuffle_segments=shuffle_segments, tilt_db=tilt_db, mix_below_db=mix_below_db,
        )

        half = latent_dim // 2
        # Time branch: mel bands are channels, convolve along time.
        self.time_encoder = encoder_branch(n_mels, tile_frames, filters, half, time_pooling)
        # Frequency branch: time frames are channels, convolve along frequency.
        self.frequency_encoder = encoder_branch(tile_frames, n_mels, filters, half)

        if objective == "invariance":
            # SimCLR's head: the loss acts on its output, the latent keeps
            # what the head discards as irrelevant to telling tracks apart.
            self.projection = nn.Sequential(
                nn.Linear(latent_dim, 2 * latent_dim),
                nn.BatchNorm1d(2 * latent_dim),
                nn.ReLU(),
                nn.Linear(2 * latent_dim, projection_dim),
            )
            self.decoder_input = self.decoder = None
            return
        self._decoder_grid = (filters[-1], n_mels // scale, tile_frames // scale)
        self.decoder_input = nn.Linear(latent_dim, filters[-1] * (n_mels // scale) * (tile_frames // scale))
        # Mirror of the encoder: deepest filter count first, e.g. 256 -> 256/128/64/32.
        decoder_channels = (filters[-1], *reversed(filters))
        self.decoder = nn.Sequential(
            *[_deconv2d_block(c_in, c_out) for c_in, c_out in zip(decoder_channels[:-1], decoder_channels[1:])],
            nn.ConvTranspose2d(filters[0], 1, KERNEL_SIZE, stride=1, padding=PADDING),
            nn.Sigmoid(),
        )
        # The decoder's 2-D convolutions hold nearly all of the reference's
        # work; oneDNN (CPU) and cuDNN (GPU, bf16) run them faster on
        # channels-last tensors: 1.14x the training steps on 2 CPU cores in
        # fp32, 1.16x in bf16 (a plain training loop, batch 32). Same numbers,
        # another layout.
        self.decoder_memory_format = torch.channels_last
        self.decoder.to(memory_format=self.decoder_memory_format)

    def _as_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """Validate a batch of tiles and return it as ``(B, n_mels, tile_frames)``."""
        return as_tiles(x, self.n_mels, self.tile_frames)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embed tiles: ``(B, latent_dim)`` = [time half | frequency half]."""
        return encode_tiles(self, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruct tiles ``(B, 1, n_mels, tile_frames)`` in (0, 1) from latents."""
        if self.decoder is None:
            raise RuntimeError("the invariance objective has no decoder: use encode()")
        grid = self.decoder_input(z).view(-1, *self._decoder_grid)
        return self.decoder(grid.contiguous(memory_format=self.decoder_memory_format))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` as ``(B, 1, n_mels, tile_frames)``."""
        return self.decode(self.encode(x))

    def _as_pairs(self, x: torch.Tensor) -> torch.Tensor | None:
        """``(B, 2, n_mels, tile_frames)`` crop pairs, or None for a batch of single tiles."""
        if x.ndim == 4 and x.shape[1] == 2 and tuple(x.shape[2:]) == (self.n_mels, self.tile_frames):
            return x
        return None

    def _invariance_step(self, batch: torch.Tensor, stage: str) -> torch.Tensor:
        """NT-Xent between the two views of each track in a batch of pairs.

        Training pairs are ``(B, 2, n_mels, W)`` crops with ``W >=
        tile_frames``, augmented here into views; validation pairs are fixed
        ``(B, 2, n_mels, tile_frames)`` tiles, scored as they are.
        """
        if batch.ndim != 4 or batch.shape[1] != 2 or batch.shape[2] != self.n_mels:
            raise ValueError(
                f"the invariance objective trains on crop pairs (B, 2, {self.n_mels}, frames), "
                f"got {tuple(batch.shape)}"
            )
        n_items = batch.shape[0]
        crops = batch.transpose(0, 1).reshape(2 * n_items, self.n_mels, batch.shape[3])
        if stage == "train":
            views = augment(crops, self.tile_frames, self.augment_settings)
        else:
            views = crops[:, :, : self.tile_frames]
        projected = self.projection(self.encode(views))
        first, second = projected[:n_items], projected[n_items:]
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # Under DDP every rank scores its views against all ranks' views:
            # the negatives of the global batch, gradients flowing back to each.
            first = self.all_gather(first, sync_grads=True).flatten(0, 1)
            second = self.all_gather(second, sync_grads=True).flatten(0, 1)
        loss = nt_xent(first, second, self.temperature) if len(first) > 1 else projected.new_zeros(())
        self.log(f"{stage}_loss", loss, prog_bar=stage in ("train", "val"), on_epoch=True, sync_dist=True,
                 batch_size=n_items)
        return loss

    def _shared_step(self, batch: torch.Tensor, stage: str) -> torch.Tensor:
        """Loss of one batch, logging ``{stage}_mse``, ``{stage}_contrastive`` and ``{stage}_loss``.

        A batch is either single tiles ``(B, n_mels, tile_frames)`` /
        ``(B, 1, n_mels, tile_frames)`` or crop pairs
        ``(B, 2, n_mels, tile_frames)``. ``{stage}_mse`` is the reconstruction
        MSE of every tile in the batch. The contrastive term (NT-Xent over the
        pairs) is only computed for pair batches; otherwise it is logged as 0.
        The returned loss is ``mse + contrastive_weight * contrastive``.
        With the invariance objective see :meth:`_invariance_step`. Batches
        of stored uint8 pixels (what the data module serves) are scaled to
        [0, 1] here, on the model's device.
        """
        batch = as_unit_range(batch)
        if self.objective == "invariance":
            return self._invariance_step(batch, stage)
        pairs = self._as_pairs(batch)
        if pairs is not None:
            n_items = pairs.shape[0]
            # (B, 2, H, W) -> (2B, H, W): first crops of every item, then second crops.
            tiles = pairs.transpose(0, 1).reshape(2 * n_items, self.n_mels, self.tile_frames)
        else:
            tiles = self._as_tiles(batch)
        latents = self.encode(tiles)
        mse = F.mse_loss(self.decode(latents), tiles.unsqueeze(1))
        if pairs is not None and self.contrastive_weight > 0 and n_items > 1:
            contrastive = nt_xent(latents[:n_items], latents[n_items:], self.temperature)
        else:
            contrastive = mse.new_zeros(())
        loss = mse + self.contrastive_weight * contrastive if self.contrastive_weight > 0 else mse
        batch_size = tiles.shape[0]
        for name, value in (("mse", mse), ("contrastive", contrastive), ("loss", loss)):
            self.log(
                f"{stage}_{name}",
                value,
                prog_bar=stage in ("train", "val") and (name == "mse" or self.contrastive_weight > 0),
                on_epoch=True,
                sync_dist=True,
                batch_size=batch_size,
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


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's InfoNCE) between two views ``(B, D)`` of ``B`` items.

    The latents are L2-normalised; for each of the ``2B`` views the positive
    is the other view of its item and the negatives are the ``2B - 2`` views
    of the other items. Returns the mean cross-entropy over all ``2B`` views
    (``log(2B - 1)`` for uninformative latents).
    """
    n_items = first.shape[0]
    views = F.normalize(torch.cat([first, second], dim=0), dim=1)
    logits = views @ views.T / temperature
    # A view is never its own candidate.
    logits = logits.masked_fill(torch.eye(2 * n_items, dtype=torch.bool, device=logits.device), float("-inf"))
    index = torch.arange(n_items, device=logits.device)
    targets = torch.cat([index + n_items, index])
    return F.cross_entropy(logits, targets)
