"""The columns of the batches that go into Sonufy's tables, as polars schemas.

The modules that make rows (the catalog, the preview fetcher, a folder scan)
build their frames with these without importing the store and DuckDB;
the store casts each batch to them before it writes (see sql/schema.sql).
A stage's failures become quarantine rows by :func:`quarantine_rows`.
"""

from __future__ import annotations

from typing import Literal, get_args

import polars as pl

# Column order and types of a tracks batch (see sql/schema.sql, tracks).
TRACK_SCHEMA: dict[str, pl.DataType] = {
    "track_id": pl.String,
    "source": pl.String,
    "title": pl.String,
    "artist": pl.String,
    "artists": pl.List(pl.String),
    "artist_id": pl.String,
    "album": pl.String,
    "album_id": pl.String,
    "release_date": pl.String,
    "duration_ms": pl.Int32,
    "isrc": pl.String,
    "explicit": pl.Boolean,
    "popularity": pl.Int32,
    "uri": pl.String,
    "preview_url": pl.String,
    "path": pl.String,
    "found_by": pl.String,
}

# Columns of a previews batch (see sql/schema.sql, previews).
PREVIEW_SCHEMA: dict[str, pl.DataType] = {
    "track_id": pl.String,
    "provider": pl.String,
    "path": pl.String,
    "bytes": pl.Int64,
    "duration_s": pl.Float64,
}

# Columns of a files batch: a folder scan's files (see sql/schema.sql, files).
FILE_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String,
    "track_id": pl.String,
    "root": pl.String,
    "size": pl.Int64,
    "mtime_ns": pl.Int64,
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "track_id": pl.String,
    "stage": pl.String,
    "reason": pl.String,
    "run_id": pl.String,
}

#: Where in the pipeline a track can be quarantined (the quarantine table's
#: ``stage``): its metadata, its preview, its spectrogram or its vector.
QuarantineStage = Literal["scrape", "fetch", "spectrogram", "encode"]
QUARANTINE_STAGES: tuple[str, ...] = get_args(QuarantineStage)


def quarantine_rows(failures: pl.DataFrame, stage: QuarantineStage, run_id: str | None) -> pl.DataFrame:
    """The quarantine rows of a stage's failures: ``failures`` (track_id,
    reason; other columns are dropped) as track_id, stage, reason, run_id
    (null outside a run), ready for the store's quarantine."""
    if stage not in QUARANTINE_STAGES:
        raise ValueError(f"quarantine stage {stage!r}: expected one of {QUARANTINE_STAGES}")
    return failures.select(
        "track_id", pl.lit(stage).alias("stage"), "reason", pl.lit(run_id, dtype=pl.String).alias("run_id")
    )
