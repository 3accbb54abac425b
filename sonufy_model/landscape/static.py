"""The static pictures of a landscape: the PNG (dots, or shaded by density
as datashader shades) and the markdown summary of a render."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sonufy_model.landscape.colors import OTHER_COLOR, UNKNOWN, Coloring
from sonufy_model.outputs import write_atomically

PNG_NAME = "landscape.png"


# -- the PNG -------------------------------------------------------------------------


def _ranges(x: np.ndarray, y: np.ndarray, width: int, height: int, pad: float = 0.04) -> tuple:
    """x and y ranges around the points with the canvas's aspect ratio (no distortion)."""
    x0, x1, y0, y1 = float(x.min()), float(x.max()), float(y.min()), float(y.max())
    dx, dy = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    dx, dy = dx * (1 + 2 * pad), dy * (1 + 2 * pad)
    if dx / dy > width / height:
        dy = dx * height / width
    else:
        dx = dy * width / height
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - dx / 2, cx + dx / 2), (cy - dy / 2, cy + dy / 2)


# (fewer points than, spread in pixels, least alpha) for the PNG's dots.
_SPREAD = ((2_000, 3, 230), (20_000, 2, 180), (100_000, 1, 140), (math.inf, 0, 140))
# Below this many points the dots are drawn one by one (PIL, milliseconds);
# from it on per-pixel density is shaded (:func:`_density`), where
# overplotting makes density the thing to show.
DENSITY_FROM = 20_000


def render_png(
    x: Any, y: Any, labels: Coloring, path: Path, title: str = "Sonufy: the sonic landscape",
    width: int = 1600, height: int = 1200,
) -> Path:
    """A map of the points with a title and a legend: below
    :data:`DENSITY_FROM` points each drawn as a dot of its category's colour;
    from it on density-shaded (per-pixel counts of each colour,
    histogram-equalised as datashader does, so that 300,000 points read as
    density rather than a blot)."""
    from PIL import Image, ImageDraw, ImageFont

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"render_png: x and y must be equal non-empty 1-D arrays, got {x.shape} and {y.shape}")
    x_range, y_range = _ranges(x, y, width, height)
    if len(x) < DENSITY_FROM:
        plot = _dots(x, y, labels, x_range, y_range, width, height)
    else:
        plot = _density(x, y, labels, x_range, y_range, width, height)
    legend_width, header = 320, 56
    picture = Image.new("RGB", (width + legend_width, height + header), "#0b0d12")
    picture.paste(plot, (0, header))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=22)
    small = ImageFont.load_default(size=16)
    draw.text((18, 14), title, fill="#f0f0f0", font=font)
    lx, ly = width + 16, header + 8
    draw.text((lx, ly), f"colour: {labels.label}", fill="#f0f0f0", font=small)
    ly += 30
    shown = _legend_entries(labels, 24)
    for name, count, color in shown:
        draw.rectangle((lx, ly + 3, lx + 14, ly + 17), fill=color)
        draw.text((lx + 22, ly), f"{_clip_text(name, 26)}  {count:,}", fill="#d8d8d8", font=small)
        ly += 22
    rest = len(labels.values) - len(shown)
    if rest > 0:
        more = "in between" if labels.label == "year" else "(grey)"
        draw.text((lx, ly + 4), f"... and {rest:,} more {more}", fill="#9a9a9a", font=small)
    draw.text((lx, height + header - 26), f"{len(x):,} points", fill="#9a9a9a", font=small)
    return write_atomically(Path(path), lambda staged: picture.save(staged, format="PNG"))


def _dots(x: np.ndarray, y: np.ndarray, labels: Coloring, x_range: tuple, y_range: tuple, width: int,
          height: int):
    """Each point a round dot of its category's colour, as wide as the
    datashader path spreads a sparse map's points; later points on top."""
    from PIL import Image, ImageDraw

    radius = next(px for most, px, _ in _SPREAD if len(x) < most)
    image = Image.new("RGB", (width, height), "#0b0d12")
    draw = ImageDraw.Draw(image)
    # Pixel centres as datashader places them: x to the right, y up.
    columns = (x - x_range[0]) / (x_range[1] - x_range[0]) * width
    rows = (y_range[1] - y) / (y_range[1] - y_range[0]) * height
    for column, row, code in zip(columns, rows, labels.codes):
        draw.ellipse((column - radius, row - radius, column + radius, row + radius), fill=labels.colors[code])
    return image


def _density(x: np.ndarray, y: np.ndarray, labels: Coloring, x_range: tuple, y_range: tuple, width: int,
             height: int):
    """Per-pixel counts of each colour, shaded as datashader shades them.

    What datashader's ``Canvas.points(count_cat)``, ``shade(how="eq_hist")``,
    ``spread(shape="circle")`` and ``set_background`` would draw, in numpy:
    datashader's import and the numba kernels it generates per call (which
    numba's cache cannot keep) took 7 to 10 s of every nightly redraw past
    :data:`DENSITY_FROM` points, in a fresh process; the same picture from four
    bincounts takes under a second (docs/performance.md).
    tests/test_landscape.py draws both and compares them pixel by pixel.
    """
    from PIL import Image

    # One layer per colour, not per category: a pixel's colour is the
    # count-weighted mean of its points' colours, so categories sharing the
    # grey draw the same pixels as one.
    palette = list(dict.fromkeys(labels.colors))
    by_color = np.array([palette.index(color) for color in labels.colors], dtype=np.int64)
    rgb = np.array([[int(color[i:i + 2], 16) for i in (1, 3, 5)] for color in palette], dtype=np.float32)
    point_rgb = rgb[by_color[np.asarray(labels.codes, dtype=np.int64)]]

    # Pixels as Canvas.points maps them: scale and translate, truncate, the
    # upper edge into the last pixel, points outside dropped; row 0 at the bottom.
    sx, sy = width / (x_range[1] - x_range[0]), height / (y_range[1] - y_range[0])
    inside = (x >= x_range[0]) & (x <= x_range[1]) & (y >= y_range[0]) & (y <= y_range[1])
    columns = np.minimum((x[inside] * sx - x_range[0] * sx).astype(np.int64), width - 1)
    rows = np.minimum((y[inside] * sy - y_range[0] * sy).astype(np.int64), height - 1)
    pixel = rows * width + columns
    size = width * height
    total = np.bincount(pixel, minlength=size)
    colour_sums = np.stack([np.bincount(pixel, weights=point_rgb[inside, k], minlength=size) for k in range(3)],
                           axis=1).astype(np.float32)
    painted = total > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_rgb = np.where(painted[:, None], colour_sums / total[:, None].astype(np.float32), 0).astype(np.uint8)

    # Alpha: the histogram-equalised count (65,536 bins over the painted
    # pixels' counts less the least), scaled from min_alpha to opaque.
    spread, min_alpha = next((px, alpha) for most, px, alpha in _SPREAD if len(x) < most)
    alpha = np.zeros(size, dtype=np.uint8)
    if painted.any():
        counts = (total[painted] - total[painted].min()).astype(np.float64)
        histogram, edges = np.histogram(counts, bins=256 * 256)
        centres = ((edges[:-1] + edges[1:]) / 2)[histogram > 0]
        cdf = np.cumsum(histogram[histogram > 0]) / float(len(counts))
        equalised = np.interp(counts, centres, cdf)
        span = [equalised.min(), equalised.max()]
        alpha[painted] = np.interp(equalised, span, [min_alpha, 255], left=0, right=255).astype(np.uint8)

    rgba = np.concatenate([mean_rgb, alpha[:, None]], axis=1).reshape(height, width, 4)  # unpainted: all zero
    if spread:
        rgba = _spread_over(rgba, spread)
    background = np.array([0x0B, 0x0D, 0x12, 255], dtype=np.uint8)
    shaded = np.empty_like(rgba)
    shaded[:] = background
    drawn = rgba[..., 3] > 0  # a transparent pixel over the background is the background
    shaded[drawn] = _over(rgba[drawn], background)
    return Image.fromarray(np.ascontiguousarray(shaded[::-1, :, :3]), "RGB")


def _over(source: np.ndarray, destination: np.ndarray) -> np.ndarray:
    """Datashader's "over" compositing of uint8 RGBA pixels, as its numba
    operator rounds (each channel scaled to [0, 1], the result truncated)."""
    src = source.astype(np.float64) / 255.0
    dst = destination.astype(np.float64) / 255.0
    src_alpha, dst_alpha = src[..., 3:], dst[..., 3:]
    factor = 1 - src_alpha
    alpha = src_alpha + dst_alpha * factor
    with np.errstate(divide="ignore", invalid="ignore"):
        colour = (src[..., :3] * src_alpha + dst[..., :3] * dst_alpha * factor) / alpha
    out = np.concatenate([colour, alpha], axis=-1)
    # Where both are transparent the colour is 0/0: NaN, made 0 like the operator's zero pixel.
    return np.minimum(np.nan_to_num(out * 255, nan=0.0), 255).astype(np.uint8)


def _spread_over(rgba: np.ndarray, px: int) -> np.ndarray:
    """Datashader's ``spread(shape="circle")`` of an RGBA image: every
    painted pixel drawn over a disc of radius ``px`` around it, later pixels
    (row by row from the bottom, left to right) over earlier ones."""
    height, width = rgba.shape[:2]
    offsets = [(i, j) for i in range(-px, px + 1) for j in range(-px, px + 1) if np.hypot(i, j) <= px + 0.5]
    out = np.zeros((height + 2 * px, width + 2 * px, 4), dtype=np.uint8)
    painted = rgba[..., 3] > 0
    # An output pixel's source at (y - i, x - j) comes later in datashader's
    # raster order the smaller i is, then j: composite in that order.
    for i, j in sorted(offsets, key=lambda o: (-o[0], -o[1])):
        target = out[px + i:px + i + height, px + j:px + j + width]  # source (y, x) onto (y + i, x + j)
        empty = ~target.any(axis=-1)
        onto_empty = painted & empty
        onto_painted = painted & ~empty
        target[onto_painted] = _over(rgba[onto_painted], target[onto_painted])
        target[onto_empty] = rgba[onto_empty]
    return out[px:px + height, px:px + width]


def _legend_entries(labels: Coloring, most: int) -> list[tuple[str, int, str]]:
    entries = list(zip(labels.values, labels.counts, labels.colors))
    if labels.label != "year":
        coloured = [e for e in entries if e[2] != OTHER_COLOR]
        entries = coloured + [e for e in entries if e[2] == OTHER_COLOR and e[0] == UNKNOWN]
    if len(entries) > most and labels.label == "year":
        step = math.ceil(len(entries) / most)
        entries = entries[::step]
    return entries[:most]


def _clip_text(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


# -- the markdown summary ---------------------------------------------------------


def summary_markdown(result: dict) -> str:
    """A markdown summary of a render: what was drawn, how it was fitted."""
    lines = [
        f"# The sonic landscape · model `{result['model_version']}`",
        "",
        f"- {result['tracks']:,} tracks, coloured by **{result['color_by']}** ({result['categories']:,} categories"
        + ("; chosen as the label that paints most tracks in distinct, evenly used colours)"
           if result.get("color_auto") else ")"),
        f"- PNG: `{result['png']}`",
        f"- HTML: `{result['html']}` ({result['html_points']:,} points, {result['html_bytes'] / 1e6:.1f} MB)",
        "",
        "| landscape | points | n_neighbors | min_dist | clusters (k by silhouette) | silhouette |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for fit in result.get("fits", []):
        k = "" if fit["clusters"] is None else str(fit["clusters"])
        s = "" if fit["silhouette"] is None else f"{fit['silhouette']:.3f}"
        lines.append(f"| {fit['level']} | {fit['points']:,} | {fit['n_neighbors']} | {fit['min_dist']} | {k} | {s} |")
    return "\n".join(lines) + "\n"

