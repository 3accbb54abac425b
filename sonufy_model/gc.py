"""``sonufy gc``: remove what the store no longer points at, and say how much it freed.

- orphan spectrogram shards: ``.npy`` files under the data folder's
  ``spectrograms/`` that no row of the ``spectrograms`` table names (a batch
  written by a run killed before it recorded it), and ``.npy.tmp`` leftovers;
- abandoned candidates' vectors: those of versions that are neither current
  nor pending and have never been current (a retrain killed while encoding
  its candidate, or before deciding on it, left them; a version that was
  current once keeps its vectors);
- rejected candidates' checkpoints: the folders under ``models/`` of versions
  that are neither current nor pending and have no vectors (a retrain's
  candidate that was not promoted, and the abandoned candidates above once
  their vectors are gone); their rows and evaluations stay; and the
  folders no version names (a training killed before its version was
  registered);
- old reports: Great Expectations validation results and their Data Docs
  pages beyond the ``keep_reports`` most recent runs.

It holds the store's writer lock while it looks and deletes, so that no run
is between writing a shard and recording it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import sql
from sonufy_model.config import Paths
from sonufy_model.store import DatabaseLocked, Store

#: Validation runs whose reports stay (the most recent ones).
KEEP_REPORTS = 20


@dataclass
class Collected:
    shards: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    #: Abandoned candidates (version: how many vectors) whose vectors go.
    candidates: dict[str, int] = field(default_factory=dict)
    freed_bytes: int = 0

    def summary(self, dry_run: bool) -> str:
        verb = "would free" if dry_run else "freed"
        return (f"{verb} {self.freed_bytes / 2**20:,.1f} MiB: {len(self.shards)} orphan shards, "
                f"{len(self.checkpoints)} rejected model folders, {len(self.reports)} old report folders, "
                f"{sum(self.candidates.values())} vectors of {len(self.candidates)} abandoned candidates")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def collect(store: Store, paths: Paths, keep_reports: int = KEEP_REPORTS, dry_run: bool = False) -> Collected:
    """Find (and unless ``dry_run``, delete) what the store no longer needs."""
    found = Collected()
    with store.writer("gc", store.lock_wait_s) as busy:
        if busy:
            raise DatabaseLocked(f"gc: {busy} for more than {store.lock_wait_s:g} s (SONUFY_DB_LOCK_WAIT_S)")
        # The vectors first, in their own transaction: killed after it, the
        # next gc finds the version without vectors and frees its folder.
        found.candidates = store.abandoned_candidates() if dry_run else store.forget_abandoned_candidates()
        with store.connect() as con:
            # Recorded relative to the database file's folder: made absolute before comparing.
            in_use = {Path(store.absolute_path(row[0])).resolve()
                      for row in con.execute(sql.statement("gc_shards_in_use")).fetchall()}
            rejected = [(version, store.absolute_path(checkpoint))
                        for version, checkpoint in con.execute(sql.statement("gc_rejected_models")).fetchall()]
        if paths.spectrograms.is_dir():
            for shard in sorted(paths.spectrograms.rglob("*.npy*")):
                if shard.is_file() and (shard.name.endswith(".npy.tmp")
                                        or (shard.suffix == ".npy" and shard.resolve() not in in_use)):
                    found.shards.append(shard)
        models = paths.models.resolve()
        for version, checkpoint in rejected:
            folder = models / version
            if folder.is_dir():
                found.checkpoints.append(folder)
            elif checkpoint and Path(checkpoint).is_file() and models in Path(checkpoint).resolve().parents:
                found.checkpoints.append(Path(checkpoint))
        found.checkpoints += _unregistered(store, models)
        found.reports = _old_reports(paths.data_dir / "great_expectations", keep_reports)
        for path in found.shards + found.checkpoints + found.reports:
            found.freed_bytes += _size(path)
            if not dry_run:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    if found.reports and not dry_run:
        _rebuild_data_docs(paths.data_dir / "great_expectations")
    return found


def _unregistered(store: Store, models: Path) -> list[Path]:
    """The folders under ``models`` that no model version names: a training
    killed (or failed) before its version was registered. No training is
    writing one: trainings run under the writer lock the caller holds."""
    if not models.is_dir():
        return []
    unknown = []
    for folder in sorted(models.iterdir()):
        if folder.is_dir():
            try:
                store.model(folder.name)
            except LookupError:
                unknown.append(folder)
    return unknown


def _old_reports(root: Path, keep: int) -> list[Path]:
    """Validation result and Data Docs folders of all but the ``keep`` latest
    runs (``<suite>/<run name>/`` under each of the two trees)."""
    trees = [root / "gx" / "uncommitted" / "validations",
             root / "gx" / "uncommitted" / "data_docs" / "local_site" / "validations"]
    runs: dict[str, list[Path]] = {}
    latest: dict[str, float] = {}
    for tree in trees:
        if not tree.is_dir():
            continue
        for suite in tree.iterdir():
            if not suite.is_dir():
                continue
            for run in suite.iterdir():
                if run.is_dir():
                    runs.setdefault(run.name, []).append(run)
                    latest[run.name] = max(latest.get(run.name, 0.0), run.stat().st_mtime)
    old = sorted(runs, key=lambda name: latest[name], reverse=True)[keep:]
    return [folder for name in sorted(old) for folder in runs[name]]


def _rebuild_data_docs(root: Path) -> None:
    """The Data Docs index, without the removed runs' links."""
    import great_expectations as gx

    gx.get_context(mode="file", project_root_dir=str(root)).build_data_docs()
