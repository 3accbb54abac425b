"""Spectrograms in bulk: a pool of worker processes, results in shards.

A shard is one .npy file holding a batch of uint8 spectrograms
(tracks × n_mels × n_frames); DuckDB's spectrograms table says which shard and
row holds each track. Readers open shards memory-mapped, so nothing needs to
fit in memory at once.
"""

from __future__ import annotations

import atexit
import os
import threading
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import current_process, get_context
from pathlib import Path

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from sonufy_model.audio import AudioDecodeError, MelParams, analyse, to_uint8

STATS_SCHEMA: dict[str, pl.DataType] = {
    "track_id": pl.String,
    "excerpt": pl.Int32,
    "n_mels": pl.Int64,
    "n_frames": pl.Int64,
    "min_value": pl.Float64,
    "max_value": pl.Float64,
    "non_finite": pl.Int64,
    "silent_share": pl.Float64,
    "duration_s": pl.Float64,
}


INDEX_SCHEMA: dict[str, pl.DataType] = {
    "track_id": pl.String,
    "excerpt": pl.Int32,
    "set_id": pl.String,
    "shard": pl.String,
    "row": pl.Int32,
}


@dataclass
class SpectrogramBatch:
    """The outcome of converting one batch of audio files.

    One row per clip: a file longer than a clip may give several excerpts,
    numbered from 0, in consecutive rows.
    """

    track_ids: list[str]
    excerpts: list[int]
    spectrograms: np.ndarray  # uint8, (len(track_ids), n_mels, n_frames)
    stats: pl.DataFrame  # one row per clip (STATS_SCHEMA)
    failures: pl.DataFrame  # track_id, reason: files that did not convert

    def only(self, keep_ids: set[str]) -> "SpectrogramBatch":
        """The rows of the tracks in ``keep_ids`` (all their excerpts)."""
        rows = [i for i, track_id in enumerate(self.track_ids) if track_id in keep_ids]
        return SpectrogramBatch(
            track_ids=[self.track_ids[i] for i in rows],
            excerpts=[self.excerpts[i] for i in rows],
            spectrograms=self.spectrograms[rows],
            stats=self.stats.filter(pl.col("track_id").is_in(list(keep_ids))),
            failures=self.failures,
        )

    def checked(self, suite_failures: pl.DataFrame) -> tuple["SpectrogramBatch", pl.DataFrame]:
        """The batch split by the spectrogram suite's ``suite_failures``
        (track_id, reason): the tracks that passed (all their excerpts), and
        every failure of the batch, one row a track: a file that did not
        convert first, then the suite's."""
        failed_ids = set(suite_failures["track_id"].to_list())
        passing = self.only(set(self.track_ids) - failed_ids)
        failures = pl.concat([self.failures, suite_failures]).unique("track_id", keep="first", maintain_order=True)
        return passing, failures


def _limit_worker_threads() -> None:
    # Parallelism comes from the processes; BLAS threads on top would fight
    # over the same cores.
    threadpool_limits(1)


_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()

#: A batch of fewer files is converted in the calling process unless its
#: workers are already running: starting them (a process each, its imports)
#: takes about 1.3 s here, as long as converting 30 clips on one core, and a
#: nightly's handful of new tracks would wait for it and then pay it again at exit.
MIN_FILES_TO_START_WORKERS = 32


def _pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes, started once and reused by every batch.

    Starting a worker costs seconds (imports, numba's cache), as much as
    converting a hundred clips, so pools outlive batches. spawn, not fork:
    the caller may be a multi-threaded orchestrator, and forking a process
    with threads running can deadlock the child.
    """
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=get_context("spawn"), initializer=_limit_worker_threads
            )
            _pools[workers] = pool
        return pool


def start_workers(workers: int) -> None:
    """Start the pool of ``workers`` processes now (one task each, so that
    each is spawned) and wait for their answers: what a caller does before
    timing a run, or before a large batch it knows is coming."""
    if workers > 1:
        pool = _pool(workers)
        list(pool.map(_ready, range(workers)))


def workers_running(workers: int) -> bool:
    """Whether the pool of ``workers`` processes has been started (and not shut down)."""
    with _pools_lock:
        return workers in _pools


def _ready(_: int) -> bool:
    return True


@atexit.register
def shutdown_pools() -> None:
    """Stop the worker processes (also run at interpreter exit)."""
    with _pools_lock:
        for pool in _pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        _pools.clear()


def _convert_one(task: tuple[str, str, MelParams]) -> tuple[str, list[tuple[np.ndarray, dict]], str | None]:
    track_id, path, params = task
    try:
        clips = analyse(path, params)
    except AudioDecodeError as error:
        return track_id, [], str(error)
    except (OSError, ValueError) as error:
        return track_id, [], f"{path}: {type(error).__name__}: {error}"
    return track_id, [(to_uint8(spectrogram), stats) for spectrogram, stats in clips], None


def convert(files: pl.DataFrame, params: MelParams, workers: int = 1) -> SpectrogramBatch:
    """Spectrograms of ``files`` (track_id, path), ``workers`` processes at once.

    Files that fail to decode are returned as failures, not raised: one bad
    file must not cost the batch.
    """
    tasks = [(row["track_id"], row["path"], params) for row in files.iter_rows(named=True)]
    if current_process().daemon:
        # A Dask worker (or any daemon process) may not start children: the
        # cluster's own workers are the parallelism there.
        workers = 1
    if workers <= 1 or len(tasks) <= 1 or (len(tasks) < MIN_FILES_TO_START_WORKERS and not workers_running(workers)):
        with threadpool_limits(1):
            results = [_convert_one(task) for task in tasks]
    else:
        pool = _pool(workers)
        try:
            results = list(pool.map(_convert_one, tasks, chunksize=4))
        except BrokenProcessPool:
            # A worker died (killed, out of memory): the next call starts afresh.
            with _pools_lock:
                if _pools.get(workers) is pool:
                    del _pools[workers]
            raise
    converted = [
        (track_id, excerpt, spectrogram, stats)
        for track_id, clips, error in results
        if error is None
        for excerpt, (spectrogram, stats) in enumerate(clips)
    ]
    failures = [(track_id, error) for track_id, _, error in results if error is not None]
    shape = (len(converted), params.n_mels, params.n_frames)
    arrays = np.stack([spec for _, _, spec, _ in converted]) if converted else np.zeros(shape, np.uint8)
    return SpectrogramBatch(
        track_ids=[track_id for track_id, _, _, _ in converted],
        excerpts=[excerpt for _, excerpt, _, _ in converted],
        spectrograms=arrays,
        stats=pl.DataFrame(
            [{"track_id": track_id, "excerpt": excerpt, **stats} for track_id, excerpt, _, stats in converted],
            schema=STATS_SCHEMA,
        ),
        failures=pl.DataFrame(
            {"track_id": [t for t, _ in failures], "reason": [r for _, r in failures]},
            schema={"track_id": pl.String, "reason": pl.String},
        ),
    )


def write_shard(batch: SpectrogramBatch, directory: Path, set_id: str) -> pl.DataFrame:
    """Write the batch's spectrograms as one shard; return its index rows.

    The shard is written under a temporary name and renamed, so a reader or
    a killed run never sees half a file.
    """
    if not batch.track_ids:
        return pl.DataFrame(schema=INDEX_SCHEMA)
    directory.mkdir(parents=True, exist_ok=True)
    shard = directory / f"shard-{uuid.uuid4().hex[:16]}.npy"
    temporary = shard.with_suffix(".npy.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, np.ascontiguousarray(batch.spectrograms))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, shard)
    return pl.DataFrame(
        {
            "track_id": batch.track_ids,
            "excerpt": batch.excerpts,
            "set_id": [set_id] * len(batch.track_ids),
            "shard": [str(shard)] * len(batch.track_ids),
            "row": list(range(len(batch.track_ids))),
        },
        schema=INDEX_SCHEMA,
    )


def read_spectrograms(manifest: pl.DataFrame) -> np.ndarray:
    """The uint8 spectrograms of manifest rows (shard, row), in manifest order.

    Each shard is opened memory-mapped once; only the rows asked for are read.
    """
    if manifest.is_empty():
        raise ValueError("no spectrograms asked for")
    out: np.ndarray | None = None
    positions = manifest.with_row_index("position")
    for (shard,), group in positions.group_by(["shard"], maintain_order=True):
        data = np.load(shard, mmap_mode="r")
        if out is None:
            out = np.empty((manifest.height, *data.shape[1:]), dtype=data.dtype)
        out[group["position"].to_numpy()] = data[group["row"].to_numpy()]
    assert out is not None
    return out
