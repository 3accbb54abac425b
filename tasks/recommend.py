"""The recommend task: nearest tracks by cosine in the latent space, in SQL."""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import sql
from sonufy_model import search
from sonufy_model.store import Store

SQL_FILE = "recommend_queries.sql"


@task(cache_policy=NO_CACHE, task_run_name="recommend[{query}]")
def recommend(store: Store, query: str | None, k: int = 10) -> pl.DataFrame:
    """Top-k tracks like ``query`` (id or "artist - title"; None: the first track),
    each with its style (``style``; the seed's in ``seed_style``)."""
    seed = store.find_track(query) if query else store.first_track()
    recommendations = search.similar(store, track_id=seed["track_id"], k=k)
    styles = track_styles(store, [seed["track_id"], *recommendations["track_id"]])
    recommendations = recommendations.with_columns(
        pl.col("track_id").replace_strict(styles, default=None, return_dtype=pl.String).alias("style"),
        pl.lit(seed["track_id"]).alias("seed_track_id"),
        pl.lit(f"{seed['artist']} - {seed['title']}").alias("seed"),
        pl.lit(styles.get(seed["track_id"]), dtype=pl.String).alias("seed_style"),
    )
    get_run_logger().info(
        "%d tracks like %s - %s (%s)", recommendations.height, seed["artist"], seed["title"], seed["track_id"]
    )
    return recommendations


def track_styles(store: Store, track_ids: list[str]) -> dict[str, str | None]:
    """The style of each of ``track_ids`` (the demo catalog's; None where a track has none)."""
    with store.connect() as con:
        rows = con.execute(sql.statement("track_styles", SQL_FILE), {"track_ids": list(track_ids)}).fetchall()
    return dict(rows)
