"""Great Expectations suites that guard the data between stages.

Each suite runs on a table of per-track facts (one row per track, computed by
the stage), so that a failure names the tracks that broke it and the
expectation they broke. Contexts are ephemeral: nothing is written to disk and
nothing reaches the network.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache

import polars as pl

from sonufy_model.audio import MelParams

# Great Expectations reports usage statistics unless told not to.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
logging.getLogger("great_expectations").setLevel(logging.WARNING)

MIN_CLIP_SECONDS = 25.0
MAX_SILENT_SHARE = 0.5
# Scraped track metadata (check_tracks).
SPOTIFY_TRACK_ID = r"^[0-9A-Za-z]{22}$"
ISRC = r"^[A-Z]{2}[A-Z0-9]{3}\d{7}$"
MIN_TRACK_MS = 10_000  # shorter is a jingle or a broken entry, not music to compare
MAX_TRACK_MS = 2 * 60 * 60 * 1000


class DataQualityError(RuntimeError):
    """Too many tracks of a batch failed a suite: something upstream is broken."""


@dataclass
class QualityReport:
    """What a suite found in one batch."""

    suite: str
    n_rows: int
    # track_id, reason: the first expectation each failing track broke.
    failures: pl.DataFrame
    expectations: list[dict] = field(default_factory=list)
    # Great Expectations' own validation result, for Data Docs.
    result: object | None = field(default=None, repr=False, compare=False)

    @property
    def success(self) -> bool:
        return self.failures.is_empty()

    @property
    def failed_share(self) -> float:
        return self.failures.height / self.n_rows if self.n_rows else 0.0

    def summary(self) -> dict:
        return {
            "suite": self.suite,
            "rows": self.n_rows,
            "failed_tracks": self.failures.height,
            "expectations": self.expectations,
        }

    def raise_if_failed_share_above(self, max_share: float) -> None:
        """Stop the run when a batch is mostly bad: that is no longer a bad track."""
        if self.n_rows and self.failed_share > max_share:
            listed = ", ".join(
                f"{row['track_id']} ({row['reason']})" for row in self.failures.head(20).iter_rows(named=True)
            )
            more = "" if self.failures.height <= 20 else f" and {self.failures.height - 20} more"
            raise DataQualityError(
                f"{self.suite}: {self.failures.height} of {self.n_rows} tracks failed "
                f"(more than {max_share:.0%}): {listed}{more}"
            )


_CONTEXT_LOCK = threading.Lock()


def _context():
    # Under a lock: a warm-up (prepare_in_background) may be making it in
    # another thread, and a second context would register the same assets.
    with _CONTEXT_LOCK:
        return _make_context()


@lru_cache(maxsize=1)
def _make_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def prepare_in_background() -> bool:
    """Import Great Expectations and make the context in a background thread,
    for a run that knows a suite is coming (see sonufy_model.warmup); True
    when this call started it."""
    from sonufy_model import warmup

    return warmup.start("great expectations", _context)


#: One suite at a time per process: the shared ephemeral context registers
#: each frame as the same "#ephemeral_pandas_asset", and two batches checked
#: at once in threads failed with "... already exists" / "... not found".
_SUITE_LOCK = threading.Lock()


def _nothing_to_check(name: str) -> QualityReport:
    """The report on an empty batch, made without Great Expectations: a night
    that found nothing new does not pay its import and context (2-4 s, most
    of an empty night's discover)."""
    failures = pl.DataFrame(schema={"track_id": pl.String, "reason": pl.String})
    return QualityReport(suite=name, n_rows=0, failures=failures)


def _run_suite(name: str, frame: pl.DataFrame, expectations: list) -> QualityReport:
    if frame.is_empty():
        return _nothing_to_check(name)
    import great_expectations as gx

    with _SUITE_LOCK:
        batch = _context().data_sources.pandas_default.read_dataframe(frame.to_pandas())
        suite = gx.ExpectationSuite(name=name, expectations=expectations)
        result = batch.validate(
            suite,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["track_id"]},
        )
    failed: dict[str, str] = {}
    described: list[dict] = []
    for outcome in result.results:
        config = outcome.expectation_config
        label = _describe(config.type, config.kwargs)
        bad_ids = [row["track_id"] for row in outcome.result.get("unexpected_index_list") or []]
        described.append({"expectation": label, "success": bool(outcome.success), "failed": len(bad_ids)})
        for track_id in bad_ids:
            failed.setdefault(track_id, f"{name}: {label}")
    failures = pl.DataFrame(
        {"track_id": list(failed), "reason": list(failed.values())},
        schema={"track_id": pl.String, "reason": pl.String},
    )
    return QualityReport(suite=name, n_rows=frame.height, failures=failures, expectations=described, result=result)


def _describe(expectation_type: str, kwargs: dict) -> str:
    hidden = ("batch_id", "result_format", "row_condition", "condition_parser")
    shown = {k: v for k, v in kwargs.items() if k not in hidden and v is not None}
    args = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{expectation_type}({args})" + _describe_condition(kwargs.get("row_condition"))


def _describe_condition(condition: object) -> str:
    """' where source == 'spotify'' for a row condition as GE keeps it (a dict), '' for none."""
    if not condition:
        return ""
    if isinstance(condition, dict):
        if "pass_through_filter" in condition:
            condition = condition["pass_through_filter"]
        elif {"column", "operator"} <= condition.keys():
            column = condition["column"]
            name = column.get("name") if isinstance(column, dict) else column
            condition = f"{name} {condition['operator']} {condition.get('parameter')!r}"
    return f" where {condition}"


def spectrogram_bounds(params: MelParams, min_seconds: float = MIN_CLIP_SECONDS) -> dict[str, tuple]:
    """The spectrogram suite's bounds, per column of audio.analyse's facts:
    (least, most), None for no bound. One definition for the catalog's Great
    Expectations suite (:func:`check_spectrograms`) and the query path's
    plain check (:func:`spectrogram_problems`)."""
    return {
        "n_mels": (params.n_mels, params.n_mels),
        "n_frames": (params.n_frames, params.n_frames),
        "non_finite": (0, 0),
        "min_value": (0.0, 1.0),
        "max_value": (0.0, 1.0),
        "silent_share": (0.0, MAX_SILENT_SHARE),
        "duration_s": (min_seconds, None),
    }


def spectrogram_problems(stats: dict, params: MelParams, min_seconds: float = MIN_CLIP_SECONDS) -> list[str]:
    """What is wrong with one clip's facts (audio.analyse), in words; empty when
    nothing is. The same bounds as the catalog's suite; NaN breaks any bound."""
    problems = []
    for column, (least, most) in spectrogram_bounds(params, min_seconds).items():
        value = stats[column]
        if value is None or value != value or (least is not None and value < least) or (
                most is not None and value > most):
            problems.append(_PROBLEMS.get(column, "{column} is {value} (expected {least} to {most})").format(
                column=column, value=value, least=least, most=most))
    return problems


_PROBLEMS = {
    "silent_share": "it is silent or nearly ({value:.0%} of it is quieter than -60 dBFS; at most {most:.0%} may be)",
    "non_finite": "its spectrogram has non-finite values (corrupt audio)",
    "duration_s": "only {value:.1f} s of audio (at least {least:g} s are needed)",
}


def check_spectrograms(stats: pl.DataFrame, params: MelParams) -> QualityReport:
    """The spectrogram suite: shape, finite, range, not silent, long enough.

    stats: one row per track with track_id, n_mels, n_frames, min_value,
    max_value, non_finite, silent_share, duration_s (see audio.analyse).
    """
    import great_expectations as gx

    expectations = [gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=least, max_value=most)
                    for column, (least, most) in spectrogram_bounds(params).items()]
    # NaN is not "between" anything, but GE skips nulls: make them fail.
    frame = stats.with_columns(pl.col(pl.Float64).fill_nan(-1.0).fill_null(-1.0))
    return _run_suite("spectrograms", frame, expectations)


def check_downloads(
    stats: pl.DataFrame,
    max_bytes: int = 4 * 1024 * 1024,
    min_seconds: float = 20.0,
    max_seconds: float = 40.0,
) -> QualityReport:
    """The downloads suite: a size within (0, cap], decodable, a preview's length.

    stats: one row per downloaded file with track_id, bytes, decodable (1 or
    0) and duration_s, read from the file on disk (see previews.download_stats).
    """
    import great_expectations as gx

    x = gx.expectations
    expectations = [
        x.ExpectColumnValuesToBeBetween(column="bytes", min_value=0, strict_min=True, max_value=max_bytes),
        x.ExpectColumnValuesToBeBetween(column="decodable", min_value=1, max_value=1),
        x.ExpectColumnValuesToBeBetween(column="duration_s", min_value=min_seconds, max_value=max_seconds),
    ]
    frame = stats.with_columns(
        pl.col("bytes").fill_null(-1),
        pl.col("decodable").cast(pl.Int64).fill_null(0),
        pl.col("duration_s").fill_nan(-1.0).fill_null(-1.0),
    )
    return _run_suite("downloads", frame, expectations)


def check_embeddings(stats: pl.DataFrame, latent_dim: int = 256) -> QualityReport:
    """The latent-vector suite: right length, finite, non-zero norm, and no
    vector identical to another track's unless their audio is identical.

    stats: one row per track with track_id, length, non_finite, norm, and
    optionally identical_vector_of (the other track, or null; see
    :func:`sonufy_model.encoding.identical_vector_clashes`).
    """
    import great_expectations as gx

    x = gx.expectations
    expectations = [
        x.ExpectColumnValuesToBeBetween(column="length", min_value=latent_dim, max_value=latent_dim),
        x.ExpectColumnValuesToBeBetween(column="non_finite", min_value=0, max_value=0),
        x.ExpectColumnValuesToBeBetween(column="norm", min_value=1e-6, strict_min=True),
        x.ExpectColumnValuesToBeUnique(column="track_id"),
        x.ExpectColumnValuesToBeNull(column="identical_vector_of"),
    ]
    if "identical_vector_of" not in stats.columns:
        stats = stats.with_columns(pl.lit(None, dtype=pl.String).alias("identical_vector_of"))
    frame = stats.with_columns(pl.col("norm").fill_nan(-1.0).fill_null(-1.0))
    report = _run_suite("embeddings", frame, expectations)
    # A clash's reason names the other track.
    duplicates = stats.filter(pl.col("identical_vector_of").is_not_null())
    other = dict(duplicates.select("track_id", "identical_vector_of").iter_rows())
    if other:
        report.failures = report.failures.with_columns(
            pl.when(pl.col("track_id").is_in(list(other)))
            .then(pl.col("reason") + pl.lit(" (same vector as ")
                  + pl.col("track_id").replace_strict(other, default="") + pl.lit(", different audio)"))
            .otherwise(pl.col("reason"))
            .alias("reason")
        )
    return report


def check_tracks(tracks: pl.DataFrame) -> QualityReport:
    """The scraped-metadata suite, run before tracks are written.

    tracks: rows of the tracks table (schemas.TRACK_SCHEMA). Spotify track ids
    are 22 base62 characters and unique; an ISRC, when there is one, is two
    letters, three letters or digits and seven digits; the duration lies
    between 10 s and 2 h; title and artist are not empty.
    """
    if tracks.is_empty():
        return _nothing_to_check("tracks")
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    x = gx.expectations
    expectations = [
        x.ExpectColumnValuesToBeUnique(column="track_id"),
        x.ExpectColumnValuesToMatchRegex(
            column="track_id", regex=SPOTIFY_TRACK_ID, row_condition=Column("source") == "spotify"
        ),
        x.ExpectColumnValuesToMatchRegex(column="isrc", regex=ISRC),  # nulls (no ISRC) are skipped
        x.ExpectColumnValuesToBeBetween(column="duration_ms", min_value=MIN_TRACK_MS, max_value=MAX_TRACK_MS),
        x.ExpectColumnValuesToMatchRegex(column="title", regex=r"\S"),
        x.ExpectColumnValuesToMatchRegex(column="artist", regex=r"\S"),
    ]
    # GE skips nulls: a missing duration, title or artist must fail, not pass.
    frame = tracks.select(
        "track_id",
        pl.col("source").fill_null(""),
        "isrc",
        pl.col("duration_ms").cast(pl.Int64).fill_null(-1),
        pl.col("title").fill_null(""),
        pl.col("artist").fill_null(""),
    )
    return _run_suite("tracks", frame, expectations)
