"""What the flows share: their stage loops, training options, counts and run record.

A flow (build, nightly, retrain, train) reads as a table of contents: its
stages in order, each a call into this module or into ``tasks/``. No flow
imports another; what two of them need lives here.

The loops work on what is missing (tracks without a preview, previews
without a spectrogram, spectrograms without a vector), a batch at a time,
each batch recorded, so that a rerun resumes after the last recorded batch.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger
from prefect.runtime import flow_run

from flows.parameters import TrainingOptions
from sonufy_model.audio import MelParams
from sonufy_model.config import Paths, ServiceSettings
from sonufy_model.store import ModelRecord, Store, batches
from sonufy_model.train_config import TrainConfig
from tasks.encoding import encode_batch, spectrograms_without_embedding
from tasks.previews import fetch_previews, record_previews, tracks_without_preview
from tasks.progress import StageProgress
from tasks.spectrograms import (
    check_spectrograms,
    compute_spectrograms,
    drop_previews,
    previews_without_spectrogram,
    record_spectrograms,
    write_spectrogram_shard,
)

# The model, batch and epochs come from the preset (sonufy_model.presets,
# "invariance" unless the config names another); the build adds its time box.
DEFAULT_TRAINING = {
    "max_time_s": 300,
    "seed": 0,
}
#: Set by the train flow for each model version, not by the config.
FLOW_OWNED_KEYS = ("manifest", "output_dir")
#: Tracks a batch when the train and retrain flows encode every track.
ENCODE_BATCH = 512


def flow_run_id() -> str:
    """The id of the Prefect flow run this is part of; "local" outside one."""
    return str(flow_run.id) if flow_run.id else "local"


def add_counts(totals: dict, more: dict) -> None:
    """Add a stage's counts to the run's ``totals``, key by key."""
    for key, value in more.items():
        totals[key] = totals.get(key, 0) + value


@contextmanager
def recorded_run(store: Store, run_id: str, flow: str, parameters: dict) -> Iterator[dict]:
    """Record the block as a run in the store's ``runs`` table: "running" with
    its ``parameters`` on entry; on exit "completed", or "failed" when the
    block raised anything (an interrupt too; the exception goes on), with the
    counts the block gathered in the dict it is given. The flow's other runs
    still "running" are marked "crashed": the caller holds the store's writer
    lock, so their process died (kill -9, a lost machine) and this run
    finishes their work."""
    counts: dict = {}
    store.start_run(run_id, flow, parameters)
    store.crash_stale_runs(flow, run_id)
    try:
        yield counts
    except BaseException:
        store.finish_run(run_id, "failed", counts)
        raise
    store.finish_run(run_id, "completed", counts)


def training_options(config: TrainingOptions | dict | None) -> dict:
    """The build's training defaults overlaid with ``config``, checked against
    TrainConfig: a flow's typed training parameter (its keys given, as given)
    or a plain mapping of TrainConfig fields, whose values must then be of
    their fields' types (a pydantic ValidationError, a ValueError, if not)."""
    typed = isinstance(config, TrainingOptions)
    config = config.given() if typed else dict(config or {})
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"training config has unknown key(s) {unknown}; expected TrainConfig fields")
    owned = sorted(set(config) & set(FLOW_OWNED_KEYS))
    if owned:
        raise ValueError(f"training config must not set {owned}: the train flow sets them per model version")
    if not typed:
        TrainingOptions.model_validate(config)  # the types, as a flow run checks them
    return {**DEFAULT_TRAINING, **config}


def with_preview_sources(
    settings: ServiceSettings, sources: list[str] | None, folder: str | None
) -> ServiceSettings:
    """The settings with the run's preview sources: your own files first, if any."""
    if folder and not sources:
        sources = ["folder", *settings.preview_sources]
    if not sources and not folder:
        return settings
    return settings.with_endpoints(preview_sources=tuple(sources or settings.preview_sources), preview_folder=folder)


def fetch_pending(
    store: Store, settings: ServiceSettings, directory: Path, run_id: str | None, batch_size: int
) -> dict:
    """The fetch stage: previews of every catalog track without one (that has
    not used up its attempts) into ``directory``, concurrently within a batch;
    one batch at a time, so that the settings' concurrency, per-host and rate
    limits hold for the whole run, and each batch is recorded (a rerun, after
    a crash or kill -9, resumes after the last recorded batch and deletes the
    dead process's temporary files). Each batch is a download task (network,
    retried) and a record task (the downloads suite, then DuckDB); the
    progress is logged here. The summed counts: fetched and failed, none when
    nothing was pending."""
    counts: dict = {}
    pending = tracks_without_preview(store, settings.fetch_max_attempts)
    parts = batches(pending, batch_size)
    progress = StageProgress("fetch", pending.height)
    for number, batch in enumerate(parts, start=1):
        fetched = fetch_previews.with_options(
            task_run_name=f"fetch[batch {number}/{len(parts)}: {batch.height} tracks]"
        )(batch, settings, directory, number)
        add_counts(counts, record_previews(store, fetched, run_id, number, settings))
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
        add_counts(counts, record_spectrograms(store, shard, run_id))
        if not keep_previews:
            add_counts(counts, drop_previews(store, shard))
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
        add_counts(counts, encode_batch(store, model, batch, run_id, number))
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
            add_counts(counts, encode_model(store, model, run_id, tracks_per_batch, first=counts.get("batches", 0) + 1))
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
