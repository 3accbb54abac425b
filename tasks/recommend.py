"""The recommend task: nearest tracks by cosine in the latent space, in SQL."""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model import search
from sonufy_model.store import Store


@task(cache_policy=NO_CACHE, task_run_name="recommend[{query}]")
def recommend(store: Store, query: str | None, k: int = 10) -> pl.DataFrame:
    """Top-k tracks like ``query`` (id or "artist - title"; None: the first track),
    each with its style (see :func:`sonufy_model.search.recommend`)."""
    seed, recommendations = search.recommend(store, query, k)
    get_run_logger().info(
        "%d tracks like %s - %s (%s)", recommendations.height, seed["artist"], seed["title"], seed["track_id"]
    )
    return recommendations
