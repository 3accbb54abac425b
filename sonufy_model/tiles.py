"""Fixed tiling of mel spectrograms, shared by validation and batch encoding.

A track's spectrogram is 512 frames long but the autoencoder sees 128-frame
tiles. Validation and inference must look at the *same* tiles every time so
that validation losses are comparable across epochs and a track's embedding is
a pure function of its audio. Both use the evenly spaced tiles defined here.
"""

from __future__ import annotations

import numpy as np

#: Width of the tiles the encoder sees: 128 frames, about 3 s of audio.
TILE_FRAMES = 128

#: Spectrogram pixels are stored as round(255 * s) with s in [0, 1].
UINT8_SCALE = 255.0


def fixed_tile_offsets(n_frames: int = 512, n_tiles: int = 32, tile_frames: int = 128) -> np.ndarray:
    """Return the start frames of ``n_tiles`` evenly spaced tiles.

    The first tile starts at frame 0 and the last one ends exactly at the last
    frame, so together the tiles cover the whole clip (overlapping when
    ``n_tiles * tile_frames > n_frames``). A single tile starts at 0.

    Returns:
        int64 array of shape ``(n_tiles,)``, non-decreasing.
    """
    if tile_frames < 1 or n_tiles < 1:
        raise ValueError(f"tile_frames and n_tiles must be positive, got {tile_frames=} {n_tiles=}")
    if n_frames < tile_frames:
        raise ValueError(f"a {tile_frames}-frame tile does not fit in {n_frames} frames")
    return np.rint(np.linspace(0, n_frames - tile_frames, n_tiles)).astype(np.int64)


def fixed_tiles(spectrograms_uint8: np.ndarray, n_tiles: int = 32, tile_frames: int = 128) -> np.ndarray:
    """Cut the fixed tiles out of one spectrogram or a batch of them.

    Args:
        spectrograms_uint8: ``(n_mels, n_frames)`` or ``(N, n_mels, n_frames)``
            uint8 array (a memmap slice is fine: only the tiles are read).
        n_tiles: tiles per spectrogram, placed by :func:`fixed_tile_offsets`.
        tile_frames: width of each tile in frames.

    Returns:
        float32 array in [0, 1] of shape ``(n_tiles, n_mels, tile_frames)``
        or ``(N, n_tiles, n_mels, tile_frames)``.
    """
    spectrograms = np.asarray(spectrograms_uint8)
    if spectrograms.dtype != np.uint8 or spectrograms.ndim not in (2, 3):
        raise ValueError(
            "expected uint8 spectrograms of shape (n_mels, n_frames) or (N, n_mels, n_frames), "
            f"got {spectrograms.dtype} {spectrograms.shape}"
        )
    offsets = fixed_tile_offsets(spectrograms.shape[-1], n_tiles, tile_frames)
    frame_index = offsets[:, None] + np.arange(tile_frames)  # (n_tiles, tile_frames)
    # Fancy indexing on the last axis gives (..., n_mels, n_tiles, tile_frames);
    # move the tile axis in front of the mel axis.
    tiles = np.moveaxis(spectrograms[..., frame_index], -2, -3)
    return tiles.astype(np.float32) / np.float32(UINT8_SCALE)
