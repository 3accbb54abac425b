"""The interactive landscape page: one self-contained HTML file, its data
and script inline (works offline, from file://). The page is the Jinja2
template ``templates/landscape.html.j2``, shipped as package data."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from sonufy_model.landscape.clusters import nearest_neighbours
from sonufy_model.landscape.colors import (
    AUTO,
    OTHER_COLOR,
    UNKNOWN,
    _check_color_by,
    choose_color_by,
    coloring,
    present_labels,
)
from sonufy_model.landscape.persistence import _vectors
from sonufy_model.outputs import write_atomically

HTML_NAME = "landscape.html"
TEMPLATE = "landscape.html.j2"


@cache
def _templates() -> Environment:
    """The page's templates: escaped as HTML, the trailing newline kept, an
    unknown variable an error. ``tojson`` writes compact JSON in the order
    given (the layers' order is the page's menu), non-ASCII as is and no NaN;
    it escapes ``<``, ``>``, ``&`` and ``'``, so that the data cannot end its
    ``<script>`` early."""
    env = Environment(
        loader=PackageLoader("sonufy_model.landscape", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2")),
        keep_trailing_newline=True,
        undefined=StrictUndefined,
    )
    env.policies["json.dumps_kwargs"] = {"separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
    return env


def _layer(frame: pl.DataFrame, line1: list[str], line2: list[str], label_names: Sequence[str],
           color_by: str, unit: str, audio: list[str | None] | None = None) -> dict:
    neighbours = nearest_neighbours(_vectors(frame)) if frame.height > 1 else np.zeros((frame.height, 0))
    labels = {}
    for name in label_names:
        c = coloring(name, frame[name].cast(pl.String).to_list())
        labels[name] = {"values": c.values, "counts": c.counts, "colors": c.colors, "codes": c.codes.tolist()}
    layer = {
        "unit": unit,
        "x": [round(float(v), 4) for v in frame["x"].to_list()],
        "y": [round(float(v), 4) for v in frame["y"].to_list()],
        "line1": line1,
        "line2": line2,
        "neighbours": neighbours.astype(int).tolist(),
        "labels": labels,
        "colorBy": color_by if color_by in labels else label_names[0],
    }
    if audio is not None:
        layer["audio"] = audio
    return layer


def render_html(
    points: pl.DataFrame, path: Path, color_by: str = AUTO, groups: pl.DataFrame | None = None,
    group_vectors: dict[str, np.ndarray] | None = None, title: str = "Sonufy: the sonic landscape",
    max_points: int = 50_000, total: int | None = None, seed: int = 0,
) -> dict:
    """The interactive page: one file, its data and script inline (works
    offline, from file://). Hover names a point, a click plays the preview
    (when there is one), the search box highlights a track and its 10
    nearest neighbours (cosine in the latent space), colour by any label
    with a known value (``auto``: :func:`choose_color_by`, over every track).

    points: track_id, x, y, artist, title, the COLOR_LABELS, audio, vector.
    groups: level, name, artist, genre, tracks, x, y, cluster (optional),
    with group_vectors[level] the mean vectors in the same order.
    Above ``max_points`` tracks a seeded random sample of that size is shown.
    Returns the numbers shown."""
    _check_color_by(color_by)
    if color_by == AUTO:
        color_by, _ = choose_color_by(points)
    total = points.height if total is None else total
    label_names = present_labels(points, keep=color_by)
    if points.height > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(points.height, max_points, replace=False))
        points = points[keep]
    layers = {
        "tracks": _layer(
            points, points["artist"].to_list(), points["title"].to_list(), label_names, color_by, "tracks",
            audio=points["audio"].to_list(),
        )
    }
    for level, unit in (("artist", "artists"), ("genre", "genres")):
        if groups is None or group_vectors is None or level not in group_vectors:
            continue
        part = groups.filter(pl.col("level") == level).with_columns(
            pl.Series("vector", group_vectors[level], dtype=pl.Array(pl.Float32, group_vectors[level].shape[1])),
            pl.col("cluster").cast(pl.String).fill_null(UNKNOWN),
        )
        if part.is_empty():
            continue
        detail = [
            f"{n:,} track{'s' if n != 1 else ''}" + (f" · {g}" if g and level == "artist" else "")
            for n, g in zip(part["tracks"].to_list(), part["genre"].to_list())
        ]
        names = ["cluster", "genre"] if level == "artist" else ["cluster"]
        layers[unit] = _layer(part, part["name"].to_list(), detail, names, "cluster", unit)
    data = {
        "title": title,
        "modelVersion": str(points["model_version"][0]) if "model_version" in points.columns and points.height else "",
        "total": total,
        "shown": points.height,
        "layers": layers,
    }
    page = _templates().get_template(TEMPLATE).render(title=title, data=data, other_color=OTHER_COLOR)
    path = write_atomically(Path(path), lambda staged: staged.write_text(page, encoding="utf-8"))
    return {"html_points": points.height, "html_bytes": path.stat().st_size}
