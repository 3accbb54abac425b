"""Landscape tasks: points for the current model's tracks, then the pictures, published."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from sonufy_model import landscape
from sonufy_model.config import Paths
from sonufy_model.store import Store, TrackNotFound


@task(cache_policy=NO_CACHE, task_run_name="update-landscape[refit={refit}]")
def update_landscape(store: Store, paths: Paths, refit: bool = False) -> dict:
    """Fit the current model version's UMAP if it has none (or ``refit``),
    else place the tracks without a point among their nearest fitted tracks
    (no UMAP import), refitting when the placed ones grow past 20% of the fitted.
    Counts: landscape_fitted, landscape_placed, artist_points, genre_points."""
    counts = landscape.update_landscape(store, paths.models, refit=refit)
    get_run_logger().info("landscape: %s", counts or "every track already has a point")
    return counts


@task(cache_policy=NO_CACHE, task_run_name="render-landscape[{color_by}]")
def render_landscape(store: Store, out_dir: Path, color_by: str = landscape.AUTO) -> dict:
    """Write landscape.png and landscape.html, coloured by ``color_by`` (auto:
    the most informative label present); publish a link to the page and a
    markdown summary as Prefect artifacts."""
    try:
        result = landscape.render(store, Path(out_dir), color_by=color_by)
    except TrackNotFound as nothing:  # too few tracks for a landscape yet
        get_run_logger().warning("no landscape drawn: %s", nothing)
        return {}
    html = Path(result["html"])
    create_link_artifact(
        key="sonufy-landscape",
        link=html.resolve().as_uri(),
        link_text=f"the sonic landscape of model {result['model_version']}",
        description=f"interactive map of {result['tracks']:,} tracks; picture: {result['png']}",
    )
    create_markdown_artifact(
        key="sonufy-landscape-summary",
        markdown=landscape.summary_markdown(result),
        description="how the landscape was fitted and drawn",
    )
    get_run_logger().info("landscape drawn, coloured by %s: %s and %s", result["color_by"], result["png"],
                          result["html"])
    return result
