"""kill -9 of every writing command, at many points: the store stays whole.

Each command runs as a real process (forked by the zygote of
tests/killing.py, which paid the imports and UMAP's compilation once) on a
real store built from the stand-in, and is killed with SIGKILL right before
or right after a chosen statement or file removal (``NAME#N``: the N-th
statement NAME of the run; ``+``: after it). After each kill the store
opens, keeps every invariant (no half-written batch, no group map without
its points, counts between those before and after a whole run), and its
published snapshot is the one readers had; the kills follow one another,
each run starting where the last was killed; then one more run finishes and
leaves exactly what an uninterrupted run of the command leaves.
"""

from __future__ import annotations

import shutil

import pytest

import killing
from conftest import SMALL_TRAINING, sql_rows

pytestmark = pytest.mark.slow

N_TRACKS = 24
SCHEMA = ("create_", "models_add_", "models_backfill_", "evaluations_", "record_schema_version")


@pytest.fixture(scope="module")
def zygote(prefect_api, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    zygote = killing.Zygote(tmp_path_factory.mktemp("runs"), {"PREFECT_API_URL": PREFECT_API_URL.value()})
    yield zygote
    zygote.close()


def _build(db) -> dict:
    return {"call": "flows.build:build", "kwargs": {
        "source": "standin", "db": str(db), "demo_tracks": N_TRACKS, "batch_size": 8, "workers": 1,
        "training": SMALL_TRAINING}}


def _nightly(db, new_tracks: int) -> dict:
    return {"call": "flows.nightly:nightly_refresh", "kwargs": {
        "source": "standin", "db": str(db), "demo_tracks": N_TRACKS, "demo_new_tracks": new_tracks,
        "batch_size": 3, "workers": 1, "data_docs": False}}


@pytest.fixture(scope="module")
def built(zygote, tmp_path_factory):
    """A store built by one uninterrupted `build`, and that run."""
    db = tmp_path_factory.mktemp("built") / "sonufy.duckdb"
    run = zygote.run(**_build(db))
    assert run.returncode == 0, str(run)
    assert killing.store_problems(db, at_rest=True) == []
    return db, run


def _writes(run: killing.Run) -> list[str]:
    """The run's writes but the schema's (a store already at this code's schema skips them)."""
    return [event for event in run.writes if not event.startswith(SCHEMA)]


def test_a_build_killed_again_and_again_is_finished_by_the_next(zygote, built, tmp_path):
    reference, whole = built
    db = tmp_path / "sonufy.duckdb"
    # A shard written and not yet indexed; the model registered, not
    # committed; every vector written, the version not yet current; the
    # search index half written. (The scrape, the previews and the landscape
    # are the nightly's and the landscape's, killed below.)
    specs = ["insert_spectrograms#2", "request_promotion#1+", "switch_to_pending#1", "insert_cells#1+"]
    assert all(spec.rstrip("+") in whole.writes for spec in specs)
    runs = killing.kill_chain(zygote, db, specs, _build(db), whole=reference)
    # The same tracks, spectrograms, vectors, index, maps and fits as an
    # uninterrupted build (the numbers aside: the model learnt on other batches).
    assert killing.fingerprint(db, values=False) == killing.fingerprint(reference, values=False)
    assert sum("insert_model#1" in run.writes for run in runs) == 2  # trained again after the kill before its commit


def test_a_nightly_killed_again_and_again_is_finished_by_the_next(zygote, built, tmp_path):
    """6 new tracks on 24 fitted: the landscape is refitted. Killed between
    its track points and its group maps, the next nightly found nothing left
    to place and left the artist map without the new artists (they were two
    transactions; now one)."""
    base, _ = built
    whole = killing.copy_store(base, tmp_path / "whole")
    reference = zygote.run(**_nightly(whole, 6))
    assert reference.returncode == 0, str(reference)
    assert "delete_group_landscape#1" in reference.writes
    db = killing.copy_store(base, tmp_path / "killed")
    # In the scrape's transaction; between two preview batches; in a
    # spectrogram batch's transaction, its shard written; in the vectors'
    # transaction; in the landscape's, the group maps' old rows deleted; all
    # written but the run's end.
    specs = ["upsert_tracks#1+", "upsert_previews#2", "insert_spectrograms#1+", "insert_embeddings#1+",
             "delete_group_landscape#1+", "finish_run#1"]
    killing.kill_chain(zygote, db, specs, _nightly(db, 6), before=base, whole=whole)
    # Every vector the same to 4 places; the refitted maps' points need not
    # be: the vectors were encoded again by other processes, so they may
    # differ in their last bits, and UMAP's layout follows those (under two
    # pytest workers about 1 chain in 5 got another map).
    assert killing.fingerprint(db, map_points=False) == killing.fingerprint(whole, map_points=False)


def test_a_landscape_refit_killed_at_each_of_its_writes(zygote, built, tmp_path):
    base, _ = built
    whole = killing.copy_store(base, tmp_path / "whole")
    command = ["landscape", "--db", str(whole), "--refit"]
    reference = zygote.run(argv=command)
    assert reference.returncode == 0, str(reference)
    writes = _writes(reference)
    # Every write of the refit, in turn: its statements, its commit, the
    # pictures' files, the publication.
    assert {"delete_landscape#1", "delete_group_landscape#1", "COMMIT#1", "CHECKPOINT#1"} <= set(writes)
    db = killing.copy_store(base, tmp_path / "killed")
    specs = killing.kill_points(writes, len(writes))
    killing.kill_chain(zygote, db, specs, {"argv": ["landscape", "--db", str(db), "--refit"]}, before=base,
                       whole=whole)
    assert killing.fingerprint(db) == killing.fingerprint(whole)


def test_gc_killed_between_its_removals(zygote, built, tmp_path):
    base, _ = built
    db = killing.copy_store(base, tmp_path)
    data = db.with_suffix(".data")
    shard = next((data / "spectrograms").rglob("*.npy"))
    orphans = [shard.with_name(f"orphan-{i}.npy") for i in range(3)] + [shard.with_name("half.npy.tmp")]
    for orphan in orphans:
        shutil.copy(shard, orphan)
    # A training killed before its version was registered leaves its folder.
    killed_training = next(folder for folder in (data / "models").iterdir() if folder.is_dir())
    orphans.append(killed_training.with_name("never-registered"))
    shutil.copytree(killed_training, orphans[-1])
    before = killing.fingerprint(db)
    command = {"argv": ["gc", "--db", str(db), "--keep-reports", "0"]}
    # After the first removal of each run, twice; then a whole run.
    killing.kill_chain(zygote, db, ["remove#1+", "remove#1+"], command)
    assert killing.fingerprint(db) == before  # gc writes no row
    assert not any(orphan.exists() for orphan in orphans)
    assert shard.exists()


def test_a_train_killed_while_encoding_leaves_the_current_version_answering(zygote, built, tmp_path):
    """Every train trains a new version, so the run after the kill is a new
    training, not the same one finished: what must hold is that the killed
    version never became current, and the next run's does, whole."""
    base, _ = built
    db = killing.copy_store(base, tmp_path)
    job = {"call": "flows.train:train", "kwargs": {"db": str(db), "config": SMALL_TRAINING}}
    current = "SELECT model_version FROM models WHERE is_current"
    [before] = sql_rows(db, current)
    runs = killing.kill_chain(zygote, db, ["insert_embeddings#1+"], job, before=base)
    assert "insert_model#1" in runs[0].writes  # killed with its version registered, its vectors not committed
    versions = [row[0] for row in sql_rows(db, "SELECT model_version FROM models ORDER BY created_at")]
    assert len(versions) == 3 and sql_rows(db, current) == [(versions[-1],)] != [before]
    assert sql_rows(db, f"SELECT count(*) FROM embeddings WHERE model_version = '{versions[1]}'") == [(0,)]


def test_a_retrain_killed_before_deciding_on_its_candidate_leaves_no_vectors_for_good(zygote, built, tmp_path):
    """Killed with every track encoded in its candidate, before recording the
    candidate's evaluation (the decision comes after it): the candidate is
    registered, neither current nor pending, never current, and has vectors,
    as one killed partway through encoding would (here the 24 tracks are one
    batch). A rerun trains a new version instead of finishing it, and
    deletes the old candidate's vectors at its start; `sonufy gc`, on a copy
    of the killed store and itself killed once between its two steps, deletes
    them too and frees the candidate's folder. The version current before
    keeps its vectors and folder either way."""
    base, _ = built
    db = killing.copy_store(base, tmp_path / "killed")
    job = {"call": "flows.retrain:retrain",
           "kwargs": {"db": str(db), "config": SMALL_TRAINING, "labels": ["genre"], "k": 3}}
    vectors = "SELECT model_version, count(*) FROM embeddings GROUP BY ALL"
    [(before,)] = sql_rows(db, "SELECT model_version FROM models WHERE is_current")
    [(n,)] = sql_rows(db, f"SELECT count(*) FROM embeddings WHERE model_version = '{before}'")
    killed = zygote.run(**job, kill="insert_evaluations#1")
    assert killed.killed and "insert_embeddings#1" in killed.writes, str(killed)
    assert killing.store_problems(db) == []
    [(candidate, ever_current, pending)] = sql_rows(
        db, f"SELECT model_version, ever_current, promotion_requested_at FROM models WHERE model_version <> '{before}'")
    assert (ever_current, pending) == (False, None)
    assert dict(sql_rows(db, vectors)) == {before: n, candidate: n}
    # Left for good until now: nothing finished or forgot them.
    assert any(problem.startswith("vectors of a version never current") and candidate in problem
               for problem in killing.store_problems(db, at_rest=True))

    collected = killing.copy_store(db, tmp_path / "collected")
    models = collected.with_suffix(".data") / "models"
    gc = {"argv": ["gc", "--db", str(collected)]}
    run = zygote.run(**gc, kill="remove#1")  # the vectors deleted, the folder not yet removed
    assert run.killed and "forget_abandoned_candidates#1" in run.writes, str(run)
    assert dict(sql_rows(collected, vectors)) == {before: n} and (models / candidate).is_dir()
    run = zygote.run(**gc)
    assert run.returncode == 0, str(run)
    assert not (models / candidate).exists() and (models / before).is_dir()
    assert dict(sql_rows(collected, vectors)) == {before: n}
    # At rest but for the killed retrain's run, which only a retrain's end records.
    assert [problem for problem in killing.store_problems(collected, at_rest=True)
            if not problem.startswith("a run still running")] == []

    rerun = zygote.run(**job)
    assert rerun.returncode == 0, str(rerun)
    assert "forget_abandoned_candidates#1" in rerun.writes
    assert killing.store_problems(db, at_rest=True) == []
    left = dict(sql_rows(db, vectors))
    assert candidate not in left and left[before] == n  # current or replaced, it keeps its vectors
    assert len(sql_rows(db, "SELECT model_version FROM models")) == 3  # the rerun's own candidate
