"""Both pictures of the stored landscape, the PNG and the HTML page, in one
call (:func:`render`)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sonufy_model.landscape.colors import AUTO, _check_color_by, choose_color_by, coloring
from sonufy_model.landscape.page import HTML_NAME, render_html
from sonufy_model.landscape.persistence import (
    _query,
    _vectors,
    group_landscape_points,
    group_means,
    landscape_fits,
    landscape_points,
)
from sonufy_model.landscape.static import PNG_NAME, render_png
from sonufy_model.outputs import writable_dir
from sonufy_model.store import Store, TrackNotFound


def render(
    store: Store, out_dir: Path, color_by: str = AUTO, max_html_points: int = 50_000,
    png_size: tuple[int, int] = (1600, 1200),
) -> dict:
    """Write ``landscape.png`` and ``landscape.html`` of the current landscape
    into ``out_dir``, coloured by ``color_by`` (``auto``: the most informative
    label present, :func:`choose_color_by`). Returns their paths and what
    they show."""
    _check_color_by(color_by)
    out_dir = writable_dir(out_dir)
    points = landscape_points(store)
    if points.is_empty():
        raise TrackNotFound(f"{store.path}: the landscape is empty: run `sonufy landscape` or `sonufy build` first")
    chosen, color_scores = choose_color_by(points)
    auto = color_by == AUTO
    color_by = chosen if auto else color_by
    version = points["model_version"][0]
    out_dir = Path(out_dir).resolve()
    title = f"Sonufy: the sonic landscape · model {version} · {points.height:,} tracks"
    labels = coloring(color_by, points[color_by].to_list())
    png = render_png(points["x"].to_numpy(), points["y"].to_numpy(), labels, out_dir / PNG_NAME, title,
                     width=png_size[0], height=png_size[1])
    groups = group_landscape_points(store)
    group_vectors = None
    if not groups.is_empty():
        means = group_means(_query(store, "landscape_vectors"))
        group_vectors = {}
        for level, frame in means.items():
            if frame.is_empty():
                continue
            stored = groups.filter(pl.col("level") == level).select("name")
            aligned = stored.join(frame.select("name", "vector"), on="name", how="left", maintain_order="left")
            if aligned["vector"].null_count() == 0 and aligned.height:
                group_vectors[level] = _vectors(aligned)
        groups = groups.filter(pl.col("level").is_in(list(group_vectors)))
    shown = render_html(points, out_dir / HTML_NAME, color_by, groups, group_vectors, title,
                        max_points=max_html_points)
    fits = landscape_fits(store)
    return {
        "model_version": version,
        "tracks": points.height,
        "color_by": color_by,
        "color_auto": auto,
        "color_scores": color_scores,
        "png": str(png),
        "html": str(out_dir / HTML_NAME),
        "categories": len(labels.values),
        "fits": fits.to_dicts(),
        **shown,
    }

