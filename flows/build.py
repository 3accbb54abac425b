"""The build flow: the whole pipeline, from a catalog to recommendations.

scrape → fetch → spectrograms → check → train → encode → recommend.
Every stage skips work already done, so a failed run can simply be rerun.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.sources import open_source
from sonufy_model.audio import MelParams
from sonufy_model.config import Paths
from sonufy_model.store import Store, batches
from tasks.catalog import parse_tracks, scan_folder, scrape_search_pages, upsert_tracks
from tasks.encoding import encode_batch, spectrograms_without_embedding
from tasks.previews import fetch_previews, record_previews, tracks_without_preview
from tasks.recommend import recommend
from tasks.spectrograms import (
    check_spectrograms,
    compute_spectrograms,
    previews_without_spectrogram,
    store_spectrograms,
)
from tasks.training import train_model

DEFAULT_TRAINING = {
    "max_epochs": 20,
    "max_time_s": 300,
    "batch_size": 32,
    "crops_per_track": 8,
    "seed": 0,
}


@flow(name="build", log_prints=True)
def build(
    source: str = "standin",
    db: str = "sonufy.duckdb",
    data_dir: str | None = None,
    queries: list[str] | None = None,
    max_items_per_query: int | None = None,
    demo_tracks: int = 300,
    batch_size: int = 128,
    workers: int = 2,
    max_failed_share: float = 0.5,
    training: dict | None = None,
    retrain: bool = False,
    excerpts: int = 1,
    placement: str = "middle",
) -> dict:
    """Build Sonufy's latent space from a source and print recommendations.

    source: "standin" (the embedded demo catalog), "spotify" (the real APIs,
    credentials from the environment) or "folder:PATH" (your own files).
    Files longer than a clip are analysed on ``excerpts`` 30 s clips
    (``placement``: "middle" or "spread"), their vectors averaged.
    A current model trained on the same spectrogram set is reused unless
    ``retrain`` is set, so that rerunning a failed build resumes quickly.
    """
    logger = get_run_logger()
    paths = Paths.for_db(db, data_dir)
    store = Store(paths.db)
    run_id = str(flow_run.id) if flow_run.id else "local"
    params = MelParams(excerpts=excerpts, placement=placement)
    store.start_run(run_id, "build", {"source": source, "queries": queries})
    counts: dict = {}
    try:
        with open_source(source, demo_tracks, cache_dir=paths.data_dir / "standin-cache") as origin:
            # 1. scrape: the catalog's tracks into DuckDB
            if origin.folder is not None:
                _add(counts, scan_folder(store, str(origin.folder), run_id))
            else:
                pages = scrape_search_pages(origin.settings, queries or origin.queries, max_items_per_query)
                counts["tracks"] = upsert_tracks(store, parse_tracks(pages))
                # 2. fetch: previews, concurrently within a batch; one batch at a
                # time, so that the settings' concurrency, per-host and rate
                # limits hold for the whole run, and each batch is recorded
                # (a rerun resumes after the last recorded batch).
                pending = tracks_without_preview(store, origin.settings.fetch_max_attempts)
                for number, batch in enumerate(batches(pending, batch_size), start=1):
                    fetched = fetch_previews(batch, origin.settings, paths.previews, number)
                    _add(counts, record_previews(store, fetched, run_id, number, origin.settings))
            demo_query = origin.demo_query

        # 3-4. spectrograms, checked by the spectrogram suite before they are kept
        files = previews_without_spectrogram(store, params)
        for number, batch in enumerate(batches(files, batch_size), start=1):
            converted = compute_spectrograms(batch, params, workers, number)
            report = check_spectrograms(converted, params, max_failed_share, number)
            _add(counts, store_spectrograms(store, converted, report, params, paths.spectrograms, run_id, number))

        # 5. train a model version on every checked spectrogram
        model = store.current_model()
        if retrain or model is None or model.set_id != params.set_id:
            train_model(store, paths, params.set_id, {**DEFAULT_TRAINING, **(training or {})})
            model = store.current_model()
        counts["model_version"] = model.model_version

        # 6. encode every track that has no vector for the current model
        pending_vectors = spectrograms_without_embedding(store, model)
        for number, batch in enumerate(batches(pending_vectors, 4 * batch_size, by="track_id"), start=1):
            _add(counts, encode_batch(store, model, batch, run_id, number))

        # 7. recommend: nearest neighbours of a demo track, by cosine in SQL
        recommendations = recommend(store, demo_query, 10)
    except BaseException:
        store.finish_run(run_id, "failed", counts)
        raise
    counts.update({f"total_{name}": value for name, value in store.counts().items()})
    store.finish_run(run_id, "completed", counts)
    logger.info("build finished: %s", counts)
    return {"db": str(paths.db), "counts": counts, "recommendations": recommendations.to_dicts()}


def _add(totals: dict, more: dict) -> None:
    for key, value in more.items():
        totals[key] = totals.get(key, 0) + value
