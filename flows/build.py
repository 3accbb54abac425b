"""The build flow: the whole pipeline, from a catalog to recommendations.

scrape → fetch → spectrograms → check → train → encode → landscape → recommend.
Every stage skips work already done, so a failed run can simply be rerun.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.progress import StageProgress
from flows.sources import open_source
from flows.writer import holds_writer_lock
from sonufy_model.audio import MelParams
from sonufy_model.config import Paths, ServiceSettings
from sonufy_model.store import ModelRecord, Store, batches
from sonufy_model.scrape_config import ScrapeConfig
from tasks.catalog import check_tracks, parse_tracks, scan_folder, scrape_catalog, upsert_tracks
from tasks.encoding import encode_batch, spectrograms_without_embedding
from tasks.landscape import render_landscape, update_landscape
from tasks.previews import fetch_previews, record_previews, tracks_without_preview
from tasks.recommend import recommend
from tasks.reporting import Stopwatch
from tasks.search import update_search_index
from tasks.spectrograms import (
    check_spectrograms,
    drop_previews,
    compute_spectrograms,
    previews_without_spectrogram,
    record_spectrograms,
    write_spectrogram_shard,
)
from tasks.training import train_model

# The model, batch and epochs come from the preset (sonufy_model.presets,
# "invariance" unless the config names another); the build adds its time box.
DEFAULT_TRAINING = {
    "max_time_s": 300,
    "seed": 0,
}


@flow(name="build", log_prints=True)
@holds_writer_lock("build")  # one writer per store: waits for another
def build(
    source: str = "standin",
    db: str = "sonufy.duckdb",
    data_dir: str | None = None,
    queries: list[str] | None = None,
    max_items_per_query: int | None = None,
    album_ids: list[str] | None = None,
    playlist_ids: list[str] | None = None,
    demo_tracks: int = 300,
    batch_size: int = 128,
    workers: int = 2,
    max_failed_share: float = 0.5,
    training: dict | None = None,
    retrain: bool = False,
    excerpts: int = 1,
    placement: str = "middle",
    batches_in_flight: int = 2,
    keep_previews: bool = True,
    preview_sources: list[str] | None = None,
    preview_folder: str | None = None,
) -> dict:
    """Build Sonufy's latent space from a source and print recommendations.

    source: "standin" (the embedded demo catalog), "spotify" (the real APIs,
    credentials from the environment) or "folder:PATH" (your own files).
    What to scrape: ``queries``, ``album_ids`` and ``playlist_ids`` (see
    ``sonufy build --scrape-config``); none of them means the source's own
    default queries.
    Previews come from ``preview_sources`` in order ("spotify", "deezer",
    "folder"); with a ``preview_folder`` of the user's own files and no
    explicit order, that folder is tried first.
    Files longer than a clip are analysed on ``excerpts`` 30 s clips
    (``placement``: "middle" or "spread"), their vectors averaged.
    ``keep_previews=False`` deletes each downloaded mp3 once its spectrogram
    is stored (a new spectrogram set then needs the previews fetched again).
    A current model trained on the same spectrogram set is reused unless
    ``retrain`` is set, so that rerunning a failed build resumes quickly.
    """
    logger = get_run_logger()
    paths = Paths.for_db(db, data_dir)
    store = Store(paths.db)
    run_id = str(flow_run.id) if flow_run.id else "local"
    params = MelParams(excerpts=excerpts, placement=placement)
    scrape = ScrapeConfig(
        queries=tuple(queries or ()),
        album_ids=tuple(album_ids or ()),
        playlist_ids=tuple(playlist_ids or ()),
        max_items_per_query=max_items_per_query,
        source="build parameters",
    )  # a bad id fails here, before any request
    store.start_run(
        run_id, "build",
        {"source": source, "queries": queries, "album_ids": album_ids, "playlist_ids": playlist_ids},
    )
    counts: dict = {}
    clock = Stopwatch()  # seconds per stage, returned as "timings"
    try:
        with open_source(source, demo_tracks, cache_dir=paths.data_dir / "standin-cache") as origin:
            # 1. scrape: the catalog's tracks into DuckDB
            with clock.stage("scrape"):
                if origin.folder is not None:
                    _add(counts, scan_folder(store, str(origin.folder), run_id))
                else:
                    if scrape.empty:
                        scrape = scrape.merged(origin.queries)
                    # parse → check (the metadata suite) → one track per ISRC, upserted; failures quarantined
                    tracks = parse_tracks(scrape_catalog(origin.settings, scrape))
                    _add(counts, upsert_tracks(store, tracks, check_tracks(tracks), run_id))
            # 2. fetch: previews, concurrently within a batch; one batch at a
            # time, so that the settings' concurrency, per-host and rate
            # limits hold for the whole run, and each batch is recorded
            # (a rerun resumes after the last recorded batch).
            if origin.folder is None:
                with clock.stage("fetch"):
                    settings = with_preview_sources(origin.settings, preview_sources, preview_folder)
                    _add(counts, fetch_pending(store, settings, paths, run_id, batch_size))
            demo_query = origin.demo_query

        # 3-4. spectrograms, checked by the spectrogram suite, written as shards
        with clock.stage("spectrograms"):
            _add(counts, spectrograms_pending(
                store, params, paths, run_id, batch_size, workers, max_failed_share, batches_in_flight, keep_previews
            ))

        # 5. train a model version on every checked spectrogram; it becomes
        # current once encoded. A version already trained on this set (current,
        # or pending after a failed run) is reused, so a rerun resumes encoding.
        with clock.stage("train"):
            model = store.target_model()
            if retrain or model is None or model.set_id != params.set_id:
                train_model(store, paths, params.set_id, {**DEFAULT_TRAINING, **(training or {})})

        # 6. encode every track without a vector, then switch to a pending version
        with clock.stage("encode"):
            _add(counts, encode_pending(store, run_id, tracks_per_batch=4 * batch_size))
        counts["model_version"] = store.current_model().model_version
        # 6a. the search index of the current version: built once, then the
        # tracks encoded since are added to their cells
        with clock.stage("search index"):
            update_search_index(store)

        # 6b. the sonic landscape: a point per track (UMAP, fitted once per
        # model version, new tracks placed by it), drawn and published
        with clock.stage("landscape"):
            _add(counts, update_landscape(store, paths))
            render_landscape(store, paths.data_dir / "landscape")

        # 7. recommend: nearest neighbours of a demo track, by cosine in SQL
        with clock.stage("recommend"):
            recommendations = recommend(store, demo_query, 10)
    except BaseException:
        store.finish_run(run_id, "failed", counts)
        raise
    counts.update({f"total_{name}": value for name, value in store.counts().items()})
    store.finish_run(run_id, "completed", counts)
    logger.info("build finished in %.1f s: %s; stages: %s", clock.total, counts,
                ", ".join(f"{name} {seconds:.1f} s" for name, seconds in clock.seconds.items()))
    return {"db": str(paths.db), "counts": counts, "recommendations": recommendations.to_dicts(),
            "timings": clock.seconds}


def with_preview_sources(
    settings: ServiceSettings, sources: list[str] | None, folder: str | None
) -> ServiceSettings:
    """The settings with the run's preview sources: your own files first, if any."""
    if folder and not sources:
        sources = ["folder", *settings.preview_sources]
    if not sources and not folder:
        return settings
    return replace(settings, preview_sources=tuple(sources or settings.preview_sources), preview_folder=folder)


def fetch_pending(store: Store, settings: ServiceSettings, paths: Paths, run_id: str, batch_size: int) -> dict:
    """Previews of every catalog track without one, concurrently within a
    batch; one batch at a time, so that the settings' concurrency, per-host
    and rate limits hold for the whole run, and each batch is recorded (a
    rerun resumes after the last recorded batch)."""
    counts: dict = {}
    pending = tracks_without_preview(store, settings.fetch_max_attempts)
    parts = batches(pending, batch_size)
    progress = StageProgress("fetch", pending.height)
    for number, batch in enumerate(parts, start=1):
        fetched = fetch_previews.with_options(
            task_run_name=f"fetch[batch {number}/{len(parts)}: {batch.height} tracks]"
        )(batch, settings, paths.previews, number)
        _add(counts, record_previews(store, fetched, run_id, number, settings))
        progress.advance(batch.height)
    return counts


def spectrograms_pending(
    store: Store,
    params: MelParams,
    paths: Paths,
    run_id: str,
    batch_size: int,
    workers: int,
    max_failed_share: float,
    batches_in_flight: int = 2,
    keep_previews: bool = True,
    reports: list | None = None,
) -> dict:
    """Spectrograms of every preview without one: checked by the spectrogram
    suite and written as shards on the task runner's workers (Dask, or this
    machine), then indexed in DuckDB here, a batch at a time, so that a rerun
    resumes after the last indexed batch. The suite's reports are appended
    to ``reports`` when given."""
    counts: dict = {}
    files = previews_without_spectrogram(store, params)
    checks = []

    def convert(number: int, batch):
        converted = compute_spectrograms.submit(batch, params, workers, number)
        report = check_spectrograms.submit(converted, params, max_failed_share, number)
        checks.append(report)
        return write_spectrogram_shard.submit(converted, report, params, paths.spectrograms, number)

    parts = batches(files, batch_size)
    progress = StageProgress("spectrograms", files.height, unit="files")
    for shard, part in zip(pipelined(parts, convert, window=batches_in_flight), parts):
        _add(counts, record_spectrograms(store, shard, run_id))
        if not keep_previews:
            _add(counts, drop_previews(store, shard))
        progress.advance(part.height)
    if reports is not None:
        reports.extend(check.result() for check in checks)
    return counts


def encode_model(store: Store, model: ModelRecord, run_id: str, tracks_per_batch: int, first: int = 1) -> dict:
    """Encode, a batch at a time, every track without a vector in ``model``."""
    counts: dict = {}
    pending = spectrograms_without_embedding(store, model)
    parts = batches(pending, tracks_per_batch, by="track_id")
    progress = StageProgress("encode", pending["track_id"].n_unique(), unit="tracks")
    for number, batch in enumerate(parts, start=first):
        _add(counts, encode_batch(store, model, batch, run_id, number))
        progress.advance(batch["track_id"].n_unique())
    counts["batches"] = counts.get("batches", 0) + len(parts)
    return counts


def encode_pending(store: Store, run_id: str, tracks_per_batch: int) -> dict:
    """Encode, a batch at a time, every track without a vector for the current
    model and for the version waiting to become current; switch to that
    version once it is complete. The summed counts.

    Queries answer from the current version all along: the switch is one
    UPDATE, made only when the new version covers every track.
    """
    counts: dict = {}
    for model in (store.current_model(), store.pending_model()):
        if model is not None:
            _add(counts, encode_model(store, model, run_id, tracks_per_batch, first=counts.get("batches", 0) + 1))
    counts.pop("batches", None)
    switched = store.switch_if_encoded()
    if switched:
        get_run_logger().info("model %s is now current: every track has a vector in it", switched)
        counts["switched"] = counts.get("switched", 0) + 1
    return counts


def pipelined(batches, submit, window: int):
    """Submit each batch's work, yielding results in order, ``window`` batches in flight.

    The window keeps a cluster busy while bounding memory: a result is
    consumed (and dropped) before more than ``window`` batches are pending.
    """
    in_flight: deque = deque()
    for number, batch in enumerate(batches, start=1):
        in_flight.append(submit(number, batch))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _add(totals: dict, more: dict) -> None:
    for key, value in more.items():
        totals[key] = totals.get(key, 0) + value
