"""The static pictures of a landscape: the PNG shaded by density
(datashader) and the markdown summary of a render."""

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
# from it on datashader shades per-pixel density. Datashader's import and its
# numba kernels cost about 9 s in a fresh process (a nightly's), worth paying
# only where overplotting makes density the thing to show.
DENSITY_FROM = 20_000


def render_png(
    x: Any, y: Any, labels: Coloring, path: Path, title: str = "Sonufy: the sonic landscape",
    width: int = 1600, height: int = 1200,
) -> Path:
    """A map of the points with a title and a legend: below
    :data:`DENSITY_FROM` points each drawn as a dot of its category's colour;
    from it on density-shaded (datashader: per-pixel counts of each category,
    histogram-equalised, so that 300,000 points read as density rather than
    a blot)."""
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
    """Per-pixel counts of each category, shaded by datashader."""
    import datashader as ds
    import datashader.transfer_functions as tf
    import pandas as pd

    # One category per colour: the categories past the palette share one grey,
    # and shading mixes each pixel's colours weighted by counts, so merging
    # them draws the same pixels; a catalog of 200 genres shaded 200 layers
    # (14 s of a 300,000-track redraw) where 41 colours make the picture.
    palette = list(dict.fromkeys(labels.colors))
    by_color = np.array([palette.index(color) for color in labels.colors], dtype=np.int32)
    frame = pd.DataFrame({
        "x": x, "y": y,
        "label": pd.Categorical.from_codes(by_color[labels.codes], categories=[str(i) for i in range(len(palette))]),
    })
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
    aggregate = canvas.points(frame, "x", "y", agg=ds.count_cat("label"))
    key = {str(i): color for i, color in enumerate(palette)}
    # Sparse maps get bigger, opaque dots; dense ones one pixel per point, with
    # alpha from the histogram-equalised count, so that density shows.
    spread, min_alpha = next((px, alpha) for most, px, alpha in _SPREAD if len(x) < most)
    image = tf.shade(aggregate, color_key=key, how="eq_hist", min_alpha=min_alpha)
    image = tf.spread(image, px=spread, shape="circle") if spread else image
    image = tf.set_background(image, "#0b0d12")
    return image.to_pil().convert("RGB")


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

