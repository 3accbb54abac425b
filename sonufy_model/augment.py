"""Augmentations of spectrogram crops for the invariance objective.

The invariance model learns what stays the same between two crops of one
track: its instruments, production and texture, not which notes happen to
sound. The augmentations add the nuisances a listener ignores when judging
"this sounds like that" — a few percent faster or slower (a time stretch,
done as a random resized crop along time), a band or a moment missing
(frequency and time masks), the volume a few dB up or down (gain) — so the
encoder cannot match crops by them. The gain is small on purpose: how loud a
track is mastered is part of how it sounds, and the spectrograms keep it
(audio.MelParams.level); the gain only stops the encoder from matching two
crops by their exact level.

A pitch shift (``pitch_semitones``: every frequency scaled by up to that
many semitones, the mel axis warped accordingly) is available and off by
default: on real music it cost precision (register and spectral envelope are
part of what makes a soundtrack or a composer recognisable), although it is
what lets the model group the synthetic demo catalog's styles across keys.
A rolled (not warped) mel axis was measured and left out too
(docs/model.md). Two more nuisances are options, off by default: a random
spectral tilt (``tilt_db``, an EQ that brightens or darkens the whole view)
and another track of the batch mixed in quietly (``mix_below_db``, another
band playing underneath). On the development corpus neither helped (three
seeds, tilt_db 6 and mix_below_db 6): the tilt moved soundtrack and composer
precision@10 by -0.012 each on average, mixing cost composer 0.015 to 0.030
in every seed; like the pitch shift, they blur what a recording's own sound
(its EQ, its instruments) says about where it belongs.

Everything is done on a batch at once, with torch ops, on the batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from sonufy_model.audio import ABSOLUTE_RANGE_DBFS

# mix_below_db: the share of views that get another track mixed in, and the
# span of the drop above mix_below_db (6 gives 6 to 18 dB below its level).
MIX_PROBABILITY = 0.5
MIX_SPAN_DB = 12.0


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random augmentations (0 turns one off).

    stretch: the crop's width varies by up to this share either way before it
        is resized to the tile width (0.25: 96 to 160 frames for 128).
    freq_mask_bands / time_mask_frames: the widest band (mel bands) and span
        (frames) set to silence, one of each per crop, widths uniform from 0.
    gain_db: each view's level moves by up to this many dB either way, on
        the absolute spectrogram scale (audio.ABSOLUTE_RANGE_DBFS).
    blur_bands: each view is smoothed along the mel axis by a Gaussian whose
        width (standard deviation, in mel bands) is uniform from 0 to this:
        the harmonics that spell out the notes blur, the spectral envelope
        (the instruments' colour) stays.
    shuffle_segments: each view is cut along time into this many equal
        segments, put back in a random order: the melody's and the rhythm's
        order is lost, the sound of each moment is kept.
    tilt_db: each view gets a spectral tilt, a straight line in dB across
        the mel bands whose rise from the lowest band to the highest is
        uniform in [-tilt_db, +tilt_db], centred on the middle of the mel
        axis (that stays as it was; each end moves by at most tilt_db / 2).
        An EQ that brightens or darkens the whole view.
    mix_below_db: with probability :data:`MIX_PROBABILITY` each view has a
        window of another track's crop of the batch added to it in power,
        that track's level lowered by ``mix_below_db`` to ``mix_below_db +``
        :data:`MIX_SPAN_DB` dB (uniform): out = 10·log10(10^(a/10) +
        10^((b - r)/10)) per bin, a the view's dB, b the other's, r the drop.
        0 is off.
    """

    stretch: float = 0.25
    freq_mask_bands: int = 16
    time_mask_frames: int = 24
    pitch_semitones: float = 0.0
    gain_db: float = 0.0
    blur_bands: float = 0.0
    shuffle_segments: int = 0
    tilt_db: float = 0.0
    mix_below_db: float = 0.0
    # The mel scale the pitch shift warps: the spectrograms' (MelParams) top.
    fmax: float = 8000.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.stretch < 1.0:
            raise ValueError(f"stretch must be in [0, 1), got {self.stretch}")
        if not 0.0 <= self.pitch_semitones <= 12.0:
            raise ValueError(f"pitch_semitones must be in [0, 12], got {self.pitch_semitones}")
        if not 0.0 <= self.gain_db <= 24.0:
            raise ValueError(f"gain_db must be in [0, 24], got {self.gain_db}")
        if self.freq_mask_bands < 0 or self.time_mask_frames < 0:
            raise ValueError("mask widths must be >= 0")
        if not 0.0 <= self.blur_bands <= 16.0:
            raise ValueError(f"blur_bands must be in [0, 16], got {self.blur_bands}")
        if self.shuffle_segments < 0 or self.shuffle_segments == 1:
            raise ValueError(f"shuffle_segments must be 0 (off) or >= 2, got {self.shuffle_segments}")
        if not 0.0 <= self.tilt_db <= 48.0:
            raise ValueError(f"tilt_db must be in [0, 48], got {self.tilt_db}")
        if not 0.0 <= self.mix_below_db <= 60.0:
            raise ValueError(f"mix_below_db must be 0 (off) or in (0, 60], got {self.mix_below_db}")

    def crop_frames(self, tile_frames: int) -> int:
        """Frames a training crop must have for the widest stretched view of a tile."""
        return int(round(tile_frames * (1.0 + self.stretch)))


def augment(crops: torch.Tensor, tile_frames: int, settings: AugmentSettings) -> torch.Tensor:
    """Random views ``(B, n_mels, tile_frames)`` of crops ``(B, n_mels, W)``, W >= tile_frames.

    Each view takes a random window of ``tile_frames × (1 ± stretch)`` frames
    (clipped to the crop) at a random place in its crop, resized to
    ``tile_frames`` by linear interpolation, its frequencies scaled by up to
    ``pitch_semitones`` either way, another crop of the batch mixed in
    (``mix_below_db``), its level moved by up to ``gain_db``, tilted
    (``tilt_db``), smoothed along the mel axis (``blur_bands``), its time
    segments shuffled (``shuffle_segments``), then masks one band and one
    span. Values stay in [0, 1]; one unit is the width of
    audio.ABSOLUTE_RANGE_DBFS (120 dB), the scale the dB settings assume.

    Mixing takes the other crop from another place in the batch, never the
    view's own crop nor, for an even batch, the one half a batch away: the
    model passes a batch of pairs as all first views, then all second views,
    so that one is the same track.
    """
    if crops.ndim != 3 or crops.shape[2] < tile_frames:
        raise ValueError(f"expected crops (B, n_mels, >= {tile_frames} frames), got {tuple(crops.shape)}")
    batch, n_mels, width = crops.shape
    device = crops.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device="cpu").to(device)

    low = tile_frames * (1.0 - settings.stretch)
    high = min(float(width), tile_frames * (1.0 + settings.stretch))
    window = low + (high - low) * uniform(batch)  # frames each view covers
    start = (width - window) * uniform(batch)
    # grid_sample reads the crop at fractional frame positions: x in [-1, 1]
    # spans the crop's width (align_corners=True: -1 and 1 are the end frames).
    positions = start[:, None] + torch.linspace(0.0, 1.0, tile_frames, device=device)[None] * (window[:, None] - 1)
    x = positions / max(width - 1, 1) * 2 - 1
    y = torch.linspace(-1.0, 1.0, n_mels, device=device)[None].expand(batch, n_mels)
    if settings.pitch_semitones > 0:
        y = _pitch_rows(batch, n_mels, settings, uniform).to(device)
    grid = torch.stack(
        [x[:, None, :].expand(batch, n_mels, tile_frames), y[:, :, None].expand(batch, n_mels, tile_frames)], dim=-1
    )
    views = F.grid_sample(crops.unsqueeze(1), grid.to(crops.dtype), mode="bilinear", align_corners=True)[:, 0]

    db_low, db_high = ABSOLUTE_RANGE_DBFS
    db_per_unit = db_high - db_low
    if settings.mix_below_db > 0:
        views = _mix_other(
            views, crops, settings.mix_below_db / db_per_unit, MIX_SPAN_DB / db_per_unit, db_per_unit, uniform
        )
    if settings.gain_db > 0:
        gain = (uniform(batch) * 2 - 1) * (settings.gain_db / db_per_unit)
        views = views + gain.to(views.dtype)[:, None, None]
    if settings.tilt_db > 0:
        slopes = (uniform(batch) * 2 - 1) * (settings.tilt_db / db_per_unit)
        ramp = torch.linspace(-0.5, 0.5, n_mels, device=device)  # lowest band -0.5, highest +0.5
        views = views + (slopes[:, None] * ramp[None]).to(views.dtype)[:, :, None]
    if settings.blur_bands > 0:
        views = _blur_bands(views, settings.blur_bands * uniform(batch))
    if settings.shuffle_segments >= 2:
        views = _shuffle_segments(views, settings.shuffle_segments, uniform)

    masked = torch.zeros_like(views, dtype=torch.bool)
    for size, axis, length in ((settings.freq_mask_bands, 1, n_mels), (settings.time_mask_frames, 2, tile_frames)):
        if size == 0:
            continue
        widths = (uniform(batch) * (size + 1)).floor()
        starts = (uniform(batch) * (length - widths + 1)).floor()
        index = torch.arange(length, device=device)[None]
        hit = (index >= starts[:, None]) & (index < (starts + widths)[:, None])  # (B, length)
        masked |= hit[:, :, None] if axis == 1 else hit[:, None, :]
    return views.masked_fill(masked, 0.0).clamp_(0.0, 1.0)


def _mix_other(views: torch.Tensor, crops: torch.Tensor, below: float, span: float, db_per_unit: float,
               uniform) -> torch.Tensor:
    """Views ``(B, n_mels, T)`` with a window of another crop added in power, on half of them.

    ``below`` and ``span`` are in the tensor's units (dB / ``db_per_unit``):
    the other is lowered by ``below`` to ``below + span``. Each view draws
    its other crop at a random offset in the batch other than 0 and, for an
    even batch, half the batch (the same track in the model's layout); with
    fewer than 3 crops there is no other track and nothing is mixed.
    """
    batch, n_mels, frames = views.shape
    width = crops.shape[2]
    offsets = [k for k in range(1, batch) if 2 * k != batch]
    if not offsets:
        return views
    device = views.device
    choice = (uniform(batch) * len(offsets)).floor().long().clamp_(max=len(offsets) - 1)
    others = (torch.arange(batch) + torch.tensor(offsets)[choice.cpu()]) % batch
    starts = (uniform(batch) * (width - frames + 1)).floor().long().clamp_(max=width - frames)
    index = (starts.cpu()[:, None] + torch.arange(frames)[None]).to(device)
    other = torch.gather(crops[others.to(device)], 2, index[:, None, :].expand(batch, n_mels, frames)).to(views.dtype)
    drop = (below + span * uniform(batch)).to(views.dtype)
    mixed = (uniform(batch) < MIX_PROBABILITY).to(device)
    # 10·log10(10^(a/10) + 10^(b/10)) in units of db_per_unit dB is c·logaddexp(a/c, b/c),
    # c = 10 / (ln 10 · db_per_unit).
    c = 10.0 / (np.log(10.0) * db_per_unit)
    summed = c * torch.logaddexp(views / c, (other - drop[:, None, None]) / c)
    return torch.where(mixed[:, None, None], summed, views)


def _blur_bands(views: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Each view ``(B, n_mels, T)`` smoothed along the mel axis by a Gaussian of its own ``sigmas[b]`` bands.

    The kernel is normalised (a flat spectrum stays as it is) and the edges
    are padded with their own value, so the level is kept; a width of 0 is
    the identity.
    """
    batch, n_mels, frames = views.shape
    radius = max(1, int(np.ceil(3 * float(sigmas.max()))))
    offsets = torch.arange(-radius, radius + 1, device=views.device, dtype=views.dtype)
    sig = sigmas.to(views.device, views.dtype).clamp(min=1e-3)[:, None]
    kernels = torch.exp(-0.5 * (offsets[None] / sig) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)  # (B, taps)
    # One group per (view, frame) row: the frames become rows, the mel axis the signal.
    rows = F.pad(views.transpose(1, 2).reshape(1, batch * frames, n_mels), (radius, radius), mode="replicate")
    smoothed = F.conv1d(rows, kernels.repeat_interleave(frames, 0)[:, None, :], groups=batch * frames)
    return smoothed.view(batch, frames, n_mels).transpose(1, 2)


def _shuffle_segments(views: torch.Tensor, segments: int, uniform) -> torch.Tensor:
    """Each view's ``segments`` equal time segments in a random order of its own (frames past them stay)."""
    batch, n_mels, frames = views.shape
    length = frames // segments
    order = torch.argsort(uniform(batch, segments), dim=1)
    within = torch.arange(length, device=views.device)
    index = (order[:, :, None] * length + within[None, None]).reshape(batch, segments * length)
    tail = torch.arange(segments * length, frames, device=views.device)[None].expand(batch, -1)
    index = torch.cat([index, tail], dim=1)
    return torch.gather(views, 2, index[:, None, :].expand(batch, n_mels, frames))


def _pitch_rows(batch: int, n_mels: int, settings: AugmentSettings, uniform) -> torch.Tensor:
    """Per view, where each output mel band reads from (grid_sample's [-1, 1]) to scale every frequency by r.

    A band centred on f reads the input at f / r, converted back to a
    (fractional) band index on the mel scale; bands that would read past the
    top read silence.
    """
    import librosa

    centres = librosa.mel_frequencies(n_mels=n_mels, fmin=0.0, fmax=settings.fmax)
    ratios = 2.0 ** ((uniform(batch).cpu().numpy() * 2 - 1) * settings.pitch_semitones / 12)
    index = np.stack([np.interp(centres / r, centres, np.arange(n_mels), right=n_mels + 1.0) for r in ratios])
    return torch.from_numpy(index / max(n_mels - 1, 1) * 2 - 1).float()
