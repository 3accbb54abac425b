"""The build flow: the whole pipeline, from a catalog to recommendations.

scrape → fetch → spectrograms → check → train → encode → landscape → recommend.
Every stage skips work already done, so a failed run can simply be rerun.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from flows.parameters import Placement, PreviewSourceName, Source, TrainingOptions
from flows.sources import open_source
from flows.stages import (
    add_counts,
    encode_pending,
    fetch_pending,
    flow_run_id,
    recorded_run,
    spectrograms_pending,
    training_options,
    with_preview_sources,
)
from flows.writer import holds_writer_lock
from sonufy_model.audio import MelParams
from sonufy_model.config import Paths
from sonufy_model.scrape_config import ScrapeConfig
from sonufy_model.store import Store
from tasks.catalog import check_tracks, parse_tracks, scan_folder, scrape_catalog, upsert_tracks
from tasks.landscape import render_landscape, update_landscape
from tasks.recommend import recommend
from tasks.reporting import Stopwatch
from tasks.search import update_search_index
from tasks.training import train_model


@flow(name="build", log_prints=True)
@holds_writer_lock("build")  # one writer per store: waits for another
def build(
    source: Source = "standin",
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
    training: TrainingOptions | None = None,
    retrain: bool = False,
    excerpts: int = MelParams.excerpts,
    placement: Placement = MelParams.placement,
    batches_in_flight: int = 2,
    keep_previews: bool = True,
    preview_sources: list[PreviewSourceName] | None = None,
    preview_folder: str | None = None,
) -> dict:
    """Build Sonufy's latent space from a source and print recommendations.

    What to scrape is ``queries``, ``album_ids`` and ``playlist_ids`` (see
    ``sonufy build --scrape-config``); none of them means the source's own
    default queries. A current model trained on the same spectrogram set is
    reused unless ``retrain`` is set, so that rerunning a failed build
    resumes quickly.

    Args:
        source: "standin" (the embedded demo catalog), "spotify" (the real
            APIs, credentials from the environment) or "folder:PATH" (your own files).
        db: The DuckDB file the latent space is built in.
        data_dir: Where previews, spectrograms and models go (default: the
            db's name with .data).
        queries: Spotify search queries to scrape.
        max_items_per_query: At most this many tracks per query (default: as
            many as the API gives).
        album_ids: Spotify albums to scrape, every track of each.
        playlist_ids: Spotify playlists to scrape.
        demo_tracks: Size of the demo catalog, for source "standin".
        batch_size: Tracks a batch for the fetch and spectrogram stages (four
            times as many for encoding).
        workers: Processes computing spectrograms.
        max_failed_share: A batch where more than this share of the tracks
            fails the spectrogram suite stops the run.
        training: Training settings on top of the preset (TrainConfig
            fields); the build's time box is 300 s unless set here.
        retrain: Train a new model even if a current one exists.
        excerpts: 30 s clips analysed per file longer than that, their
            vectors averaged.
        placement: Where those clips lie: side by side around the middle, or
            spread over the file.
        batches_in_flight: Spectrogram batches computed at once.
        keep_previews: False deletes each downloaded mp3 once its spectrogram
            is stored (a new spectrogram set then needs the previews fetched
            again; your own files are never deleted).
        preview_sources: Preview sources in the order to try (default: the
            service settings', spotify then deezer).
        preview_folder: Your own audio files, matched to catalog tracks by
            ISRC tag or artist and title; with no explicit order of sources,
            this folder is tried first.
    """
    logger = get_run_logger()
    paths = Paths.for_db(db, data_dir)
    store = Store(paths.db)
    run_id = flow_run_id()
    params = MelParams(excerpts=excerpts, placement=placement)
    scrape = ScrapeConfig(
        queries=tuple(queries or ()),
        album_ids=tuple(album_ids or ()),
        playlist_ids=tuple(playlist_ids or ()),
        max_items_per_query=max_items_per_query,
        source="build parameters",
    )  # a bad id fails here, before any request
    clock = Stopwatch()  # seconds per stage, returned as "timings"
    with recorded_run(
        store, run_id, "build",
        {"source": source, "queries": queries, "album_ids": album_ids, "playlist_ids": playlist_ids},
    ) as counts:
        with open_source(source, demo_tracks, cache_dir=paths.data_dir / "standin-cache") as origin:
            # 1. scrape: the catalog's tracks into DuckDB
            with clock.stage("scrape"):
                if origin.folder is not None:
                    add_counts(counts, scan_folder(store, str(origin.folder), run_id))
                else:
                    if scrape.empty:
                        scrape = scrape.merged(origin.queries)
                    # parse → check (the metadata suite) → one track per ISRC, upserted; failures quarantined
                    scraped = scrape_catalog(origin.settings, scrape)
                    # quote: Prefect would otherwise walk every page's JSON looking for
                    # futures (a minute at 20,000 tracks); the scrape is plain data.
                    tracks = parse_tracks(quote(scraped))
                    add_counts(counts, upsert_tracks(store, tracks, check_tracks(tracks), run_id, quote(scraped)))
            # 2. fetch: previews, concurrently within a batch; one batch at a
            # time, so that the settings' concurrency, per-host and rate
            # limits hold for the whole run, and each batch is recorded
            # (a rerun resumes after the last recorded batch).
            if origin.folder is None:
                with clock.stage("fetch"):
                    settings = with_preview_sources(origin.settings, preview_sources, preview_folder)
                    add_counts(counts, fetch_pending(store, settings, paths.previews, run_id, batch_size))
            demo_query = origin.demo_query

        # 3-4. spectrograms, checked by the spectrogram suite, written as shards
        with clock.stage("spectrograms"):
            add_counts(counts, spectrograms_pending(
                store, params, paths, run_id, batch_size, workers, max_failed_share, batches_in_flight, keep_previews
            ))

        # 5. train a model version on every checked spectrogram; it becomes
        # current once encoded. A version already trained on this set (current,
        # or pending after a failed run) is reused, so a rerun resumes encoding.
        with clock.stage("train"):
            model = store.target_model()
            if retrain or model is None or model.set_id != params.set_id:
                train_model(store, paths, params.set_id, training_options(training))

        # 6. encode every track without a vector, then switch to a pending version
        with clock.stage("encode"):
            add_counts(counts, encode_pending(store, run_id, tracks_per_batch=4 * batch_size))
        counts["model_version"] = store.current_model().model_version
        # 6a. the search index of the current version: built once, then the
        # tracks encoded since are added to their cells
        with clock.stage("search index"):
            update_search_index(store)

        # 6b. the sonic landscape: a point per track (UMAP, fitted once per
        # model version, new tracks placed by it), drawn and published
        with clock.stage("landscape"):
            add_counts(counts, update_landscape(store, paths))
            render_landscape(store, paths.data_dir / "landscape")

        # 7. recommend: nearest neighbours of a demo track, by cosine in SQL
        with clock.stage("recommend"):
            recommendations = recommend(store, demo_query, 10)
        counts.update({f"total_{name}": value for name, value in store.counts().items()})
    logger.info("build finished in %.1f s: %s; stages: %s", clock.total, counts,
                ", ".join(f"{name} {seconds:.1f} s" for name, seconds in clock.seconds.items()))
    return {"db": str(paths.db), "counts": counts, "recommendations": recommendations.to_dicts(),
            "timings": clock.seconds}
