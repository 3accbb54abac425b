"""The search index task: keep the current model version's index complete."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model import search
from sonufy_model.store import Store


@task(cache_policy=NO_CACHE, task_run_name="search-index[{store.path.name}]")
def update_search_index(store: Store) -> dict:
    """Build the current version's index when it has none, else add the tracks encoded since."""
    report = search.update_index(store)
    get_run_logger().info("search index: %s", report)
    return report
