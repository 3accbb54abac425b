"""Reporting tasks: what a run did, as Prefect artifacts in the UI, and
Great Expectations Data Docs built to a local folder.

Every run of the nightly refresh publishes, under stable keys (the UI keeps
each key's history, run by run): ``<flow>-added`` (the tracks it added),
``<flow>-quarantined`` (what it quarantined and why), ``<flow>-quality`` (the
Great Expectations suites' results), ``<flow>-timings`` (seconds per stage),
``<flow>-report`` (a markdown report with the counts) and ``<flow>-data-docs``
(a link to the Data Docs). The retrain flow publishes ``retrain-evaluation``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sonufy_model.evaluate import evaluate_store, row_key
from sonufy_model.quality import QualityReport
from sonufy_model.store import Store

#: Rows shown in a table artifact; the markdown report has the full counts.
MAX_TABLE_ROWS = 500


class Stopwatch:
    """Seconds spent in each stage of a run, in the order the stages ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    @property
    def total(self) -> float:
        return time.perf_counter() - self._started


@task(cache_policy=NO_CACHE, task_run_name="data-docs[{flow_name}]")
def build_data_docs(reports: Sequence[QualityReport], root: Path, run_id: str, flow_name: str) -> str | None:
    """The run's validation results added to a file-backed GE project under
    ``root``, and its Data Docs rebuilt; the URL of their index page."""
    results = [report for report in reports if report.result is not None]
    if not results:
        return None
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    run_time = datetime.datetime.now(datetime.timezone.utc)
    for number, report in enumerate(results, start=1):
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=report.suite),
            run_id=RunIdentifier(run_name=f"{flow_name}-{run_id}", run_time=run_time),
            batch_identifier=f"{report.suite}-{number}",
        )
        context.validation_results_store.set(key, report.result)
    sites = context.build_data_docs()
    url = sites.get("local_site") or next(iter(sites.values()), None)
    get_run_logger().info("Great Expectations Data Docs: %s", url)
    return url


def quality_rows(reports: Sequence[QualityReport], quarantined: pl.DataFrame) -> list[dict]:
    """One row per suite (its batches summed), then the quarantine by stage."""
    rows: dict[str, dict] = {}
    for report in reports:
        row = rows.setdefault(
            report.suite,
            {"check": f"suite {report.suite}", "batches": 0, "rows": 0, "failed_tracks": 0, "broken": set()},
        )
        row["batches"] += 1
        row["rows"] += report.n_rows
        row["failed_tracks"] += report.failures.height
        row["broken"].update(e["expectation"] for e in report.expectations if not e["success"])
    table = [{**row, "broken": "; ".join(sorted(row["broken"])) or "none"} for row in rows.values()]
    if not quarantined.is_empty():
        for stage, count in quarantined.group_by("stage").len().sort("stage").iter_rows():
            table.append({"check": f"quarantine {stage}", "batches": None, "rows": None,
                          "failed_tracks": count, "broken": "see the quarantined table"})
    return table


@task(cache_policy=NO_CACHE, task_run_name="report[{flow_name}]")
def publish_run_report(
    store: Store,
    run_id: str,
    flow_name: str,
    model_version: str | None,
    counts: dict,
    timings: dict[str, float],
    reports: Sequence[QualityReport] = (),
    docs_url: str | None = None,
) -> dict:
    """The run's artifacts; returns the counts of what changed since the
    last completed run (crashed runs' work included)."""
    changes = store.run_changes(run_id, model_version)
    added, quarantined = changes["added"], changes["quarantined"]
    changed = {key: int(value) for key, value in changes["counts"].items()}
    create_table_artifact(
        key=f"{flow_name}-added",
        table=_rows(added),
        description=f"{added.height} tracks added to the latent space of model {model_version}"
        + (f" (first {MAX_TABLE_ROWS} shown)" if added.height > MAX_TABLE_ROWS else ""),
    )
    create_table_artifact(
        key=f"{flow_name}-quarantined",
        table=_rows(quarantined),
        description=f"{quarantined.height} tracks quarantined, with the reason (stage: where it stopped)",
    )
    create_table_artifact(
        key=f"{flow_name}-quality",
        table=quality_rows(reports, quarantined),
        description="Great Expectations suites run by this run, and the quarantine by stage"
        + (f"; Data Docs: {docs_url}" if docs_url else ""),
    )
    stage_rows = [{"stage": name, "seconds": round(seconds, 3)} for name, seconds in timings.items()]
    create_table_artifact(key=f"{flow_name}-timings", table=stage_rows, description="Seconds per stage")
    lines = [
        f"# {flow_name}: {added.height} tracks added",
        "",
        f"Model `{model_version}`; changes since {changes['since']}.",
        "",
        "| count | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in {**changed, **_flat(counts)}.items()),
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {row['stage']} | {row['seconds']:.1f} |" for row in stage_rows),
    ]
    if docs_url:
        lines += ["", f"[Great Expectations Data Docs]({docs_url})"]
        create_link_artifact(key=f"{flow_name}-data-docs", link=docs_url,
                             link_text="Great Expectations Data Docs", description="validation results")
    create_markdown_artifact(key=f"{flow_name}-report", markdown="\n".join(lines), description="counts")
    return {**changed, "added": added.height}


@task(cache_policy=NO_CACHE, task_run_name="evaluate[{model_version}]")
def evaluate_version(store: Store, model_version: str, labels: Sequence[str], k: int) -> dict:
    """``sonufy evaluate`` on one model version's space; the rows are recorded,
    and the result keeps each row's per-query values for a paired comparison."""
    result = evaluate_store(store, list(labels), k=k, model_version=model_version, per_query=True)
    for note in result["notes"]:
        get_run_logger().info("not scored: %s", note)
    return result


@task(cache_policy=NO_CACHE, task_run_name="evaluation-report[{candidate[model_version]}]")
def publish_evaluation(candidate: dict, current: dict | None, promoted: bool, reason: str) -> list[dict]:
    """The evaluation table: each label and space, the current version beside the candidate."""
    def key(row: dict) -> tuple:
        return *row_key(row), row["space"]

    before = {key(row): row for row in (current or {}).get("rows", [])}
    table = []
    for row in candidate["rows"]:
        old = before.get(key(row), {})
        table.append({
            "label": row["label"], "artist_filter": row["artist_filter"], "exclude_same": row.get("exclude_same"),
            "space": row["space"], "k": row["k"], "chance": round(row["chance"], 4),
            "current_precision": _round(old.get("precision")), "candidate_precision": round(row["precision"], 4),
            "candidate_precision_low": _round(row.get("precision_low")),
            "candidate_precision_high": _round(row.get("precision_high")),
            "current_map": _round(old.get("map")), "candidate_map": round(row["map"], 4),
            "tracks": row["tracks"],
        })
    verdict = "promoted" if promoted else "not promoted"
    current_name = current["model_version"] if current else "none"
    create_table_artifact(
        key="retrain-evaluation",
        table=table,
        description=f"candidate {candidate['model_version']} vs current {current_name}: {verdict} ({reason})",
    )
    return table


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _rows(frame: pl.DataFrame) -> list[dict]:
    return [{k: (v if isinstance(v, (int, float, bool)) or v is None else str(v)) for k, v in row.items()}
            for row in frame.head(MAX_TABLE_ROWS).iter_rows(named=True)]


def _flat(counts: dict) -> dict:
    return {f"run {name}": value for name, value in counts.items() if isinstance(value, (int, float, str))}
