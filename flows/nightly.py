"""The nightly refresh: new tracks into the latent space, and nothing else.

discover (tag:new and the configured queries, or a folder's new and changed
files) → fetch → spectrograms → check → encode with the current model → search
index and landscape of the new tracks → saved lists made again → report. No
retraining. Every stage works on what is missing (tracks without a preview,
previews without a spectrogram, spectrograms without a vector), so work and
time grow with the new tracks only, and a run killed at any point is finished
by the next one.

One writer at a time per database: the store's writer lock
``<db>.writer.lock`` (held by the operating system, so kill -9 never leaves
it stale), which every writing flow and command takes; a nightly that finds
another writer (a nightly, a build, a retrain) waits ``wait_for_running_s``
and then exits cleanly, doing nothing.
Writes are short transactions; a user's DuckDB session that holds the file
makes the run wait, never fail (see docs/operations.md, "Ad-hoc SQL while the nightly runs").
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from flows.parameters import PreviewSourceName, Source
from flows.sources import open_source
from flows.stages import (
    add_counts,
    encode_pending,
    fetch_pending,
    flow_run_id,
    recorded_run,
    spectrograms_pending,
    with_preview_sources,
)
from sonufy_model.audio import MelParams
from sonufy_model.config import Paths
from sonufy_model.scrape_config import ScrapeConfig
from sonufy_model.store import Store
from tasks.catalog import check_tracks, parse_tracks, scan_folder, scrape_catalog, upsert_tracks
from tasks.landscape import render_landscape, update_landscape
from tasks.playlists import refresh_saved_lists
from tasks.reporting import Stopwatch, build_data_docs, publish_run_report
from tasks.search import update_search_index

#: What a nightly always asks Spotify for: albums of the last two weeks.
NIGHTLY_QUERIES = ("tag:new",)
FLOW = "nightly"


@flow(name="nightly-refresh", flow_run_name="nightly[{source}]", log_prints=True)
def nightly_refresh(
    source: Source = "standin",
    db: str = "sonufy.duckdb",
    data_dir: str | None = None,
    queries: list[str] | None = None,
    album_ids: list[str] | None = None,
    playlist_ids: list[str] | None = None,
    max_items_per_query: int | None = None,
    demo_tracks: int = 300,
    demo_new_tracks: int = 0,
    batch_size: int = 128,
    workers: int = 2,
    max_failed_share: float = 0.5,
    batches_in_flight: int = 2,
    keep_previews: bool = True,
    preview_sources: list[PreviewSourceName] | None = None,
    preview_folder: str | None = None,
    wait_for_running_s: float = 0.0,
    data_docs: bool = True,
) -> dict:
    """Add the source's new tracks to the current latent space.

    Returns the counts, the tracks added and the timings.

    Args:
        source: "spotify" (``tag:new`` plus ``queries``, ``album_ids`` and
            ``playlist_ids``), "folder:PATH" (new and changed files) or
            "standin" (the demo catalog of ``demo_tracks`` that gained
            ``demo_new_tracks`` new releases).
        db: The DuckDB file of the latent space.
        data_dir: Where previews, spectrograms and models go (default: the
            db's name with .data).
        queries: Spotify search queries to scrape besides tag:new.
        album_ids: Spotify albums to scrape, every track of each.
        playlist_ids: Spotify playlists to scrape.
        max_items_per_query: At most this many tracks per query (default: as
            many as the API gives).
        demo_tracks: The stand-in's catalog size, as built.
        demo_new_tracks: New releases the stand-in's catalog has gained since.
        batch_size: Tracks a batch for the fetch and spectrogram stages (four
            times as many for encoding).
        workers: Processes computing spectrograms.
        max_failed_share: A batch where more than this share of the tracks
            fails the spectrogram suite stops the run.
        batches_in_flight: Spectrogram batches computed at once.
        keep_previews: False deletes each downloaded mp3 once its spectrogram
            is stored (your own files are never deleted).
        preview_sources: Preview sources in the order to try (default: the
            service settings', spotify then deezer).
        preview_folder: Your own audio files, matched to catalog tracks by
            ISRC tag or artist and title; with no explicit order of sources,
            this folder is tried first.
        wait_for_running_s: Seconds to wait for another writer on the store
            (a nightly still running, a build); then this run does nothing.
        data_docs: Build the Great Expectations Data Docs of the run's checks.
    """
    logger = get_run_logger()
    paths = Paths.for_db(db, data_dir)
    store = Store(paths.db)
    scrape = ScrapeConfig(
        queries=(*NIGHTLY_QUERIES, *(queries or ())),
        album_ids=tuple(album_ids or ()),
        playlist_ids=tuple(playlist_ids or ()),
        max_items_per_query=max_items_per_query,
        source="nightly parameters",
    )  # a bad id fails here, before any request
    with store.writer(FLOW, wait_for_running_s, publish=True) as busy:  # readers see the run at its end
        if busy:
            logger.warning("another writer is running on this store (%s): this nightly does nothing", busy)
            return {"db": str(paths.db), "skipped": busy}
        run_id = flow_run_id()
        with recorded_run(store, run_id, FLOW, {"source": source, "queries": list(scrape.queries)}) as counts:
            store.crash_stale_runs(FLOW, run_id)  # we hold the lock: any other "running" one died
            clock, reports = Stopwatch(), []
            model = store.target_model()
            params = _spectrogram_params(store, model)
            with open_source(source, demo_tracks, paths.data_dir / "standin-cache", demo_new_tracks) as origin:
                # 1. discover: a folder's new and changed files, or the catalog's new tracks
                with clock.stage("discover"):
                    if origin.folder is not None:
                        add_counts(counts, scan_folder(store, str(origin.folder), run_id))
                    else:
                        scraped = scrape_catalog(origin.settings, scrape, store.known_album_ids())
                        add_counts(counts, {"albums_known": scraped.known_albums})  # tag:new's, not read again
                        # quote: Prefect would otherwise walk every page's JSON looking for
                        # futures (a minute at 20,000 tracks); the scrape is plain data.
                        tracks = parse_tracks(quote(scraped))
                        report = check_tracks(tracks)
                        reports.append(report)
                        add_counts(counts, upsert_tracks(store, tracks, report, run_id, quote(scraped)))
                # 2. fetch: previews of every track without one (new, or failed before)
                with clock.stage("fetch"):
                    if origin.folder is None:
                        settings = with_preview_sources(origin.settings, preview_sources, preview_folder)
                        add_counts(counts, fetch_pending(store, settings, paths.previews, run_id, batch_size))
            # 3-4. spectrograms of the current model's set, checked, as shards
            with clock.stage("spectrograms"):
                add_counts(counts, spectrograms_pending(
                    store, params, paths, run_id, batch_size, workers, max_failed_share,
                    batches_in_flight, keep_previews, reports=reports,
                ))
            # 5. encode with the current model (and a pending one): no retraining
            with clock.stage("encode"):
                if model is None:
                    logger.warning("no model yet: new tracks wait for `sonufy build` or `sonufy train`")
                else:
                    add_counts(counts, encode_pending(store, run_id, tracks_per_batch=4 * batch_size))
            # 6. the search index and the landscape: the new tracks added to
            # the current version's index, and placed among the saved fit's
            # nearest tracks (a refit once placed ones pass 20% of the fitted)
            with clock.stage("search index"):
                if model is not None:
                    counts["search_index"] = update_search_index(store).get("index")
            with clock.stage("landscape"):
                if model is not None:
                    placed = update_landscape(store, paths)
                    add_counts(counts, placed)
                    if placed.get("landscape_fitted") or placed.get("landscape_placed"):
                        # redrawn and republished only when it changed
                        render_landscape(store, paths.data_dir / "landscape")
            # 7. saved lists: each made again (new tracks can join), its file
            # and Spotify playlist replaced, what changed published
            with clock.stage("saved lists"):
                lists = refresh_saved_lists(store, FLOW) if model is not None else []
                if lists:
                    counts["saved_lists"] = len(lists)
            current = store.current_model()
            # 8. report: artifacts in the UI, Data Docs on disk
            with clock.stage("report"):
                docs = (build_data_docs(reports, paths.data_dir / "great_expectations", run_id, FLOW)
                        if data_docs else None)
                changed = publish_run_report(
                    store, run_id, FLOW, current and current.model_version, counts, clock.seconds, reports, docs
                )
            counts.update(changed)
        logger.info("nightly refresh: %d tracks added in %.1f s: %s", changed["added"], clock.total, counts)
        return {"db": str(paths.db), "counts": counts, "added": changed["added"],
                "model_version": current and current.model_version, "timings": clock.seconds, "data_docs": docs,
                "saved_lists": lists}


def _spectrogram_params(store: Store, model) -> MelParams:
    """The spectrogram parameters of the model's set: new tracks must be comparable."""
    if model is None:
        return MelParams()
    params = store.spectrogram_params(model.set_id)
    if params is None:
        raise ValueError(
            f"{store.path}: model {model.model_version}'s spectrogram set {model.set_id} is not registered"
        )
    return MelParams.from_stored(params)
