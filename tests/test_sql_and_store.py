"""The schema, the named statements and the store, on a real DuckDB file."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

import sql
from sonufy_model import search
from sonufy_model.schemas import QUARANTINE_SCHEMA, quarantine_rows
from sonufy_model.store import LATENT_DIM, Store, TrackNotFound


def _with_space(store: Store, vectors: dict[str, np.ndarray], track_frame) -> None:
    store.upsert_tracks(track_frame(list(vectors)))
    store.register_model(
        {
            "model_version": "m1", "set_id": "s", "config": {}, "checkpoint": "c.ckpt", "epochs": 1,
            "train_mse": 0.1, "val_mse": 0.1, "n_train_tracks": 1, "n_val_tracks": 1, "train_seconds": 1.0,
            "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM),
        }
    )
    store.record_embeddings(
        pl.DataFrame({"track_id": list(vectors), "model_version": ["m1"] * len(vectors)}).with_columns(
            pl.Series("raw", np.stack(list(vectors.values())), dtype=pl.Array(pl.Float32, LATENT_DIM)),
            pl.Series("vector", np.stack(list(vectors.values())), dtype=pl.Array(pl.Float32, LATENT_DIM)),
        )
    )
    store.promote("m1")


def test_schema_is_idempotent(tmp_path):
    path = tmp_path / "s.duckdb"
    con = duckdb.connect(str(path))
    for _ in range(2):
        for statement in sql.schema_statements():
            con.execute(statement)
    tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"tracks", "previews", "spectrograms", "spectrogram_sets", "models", "embeddings",
            "quarantine", "runs", "latent"} <= tables


def test_unknown_statement_is_named_in_the_error():
    with pytest.raises(KeyError, match="no_such_statement"):
        sql.statement("no_such_statement")


def test_upsert_deduplicates_and_reruns_change_nothing(tmp_path, track_frame):
    store = Store(tmp_path / "s.duckdb")
    batch = pl.concat([track_frame(["a", "b"]), track_frame(["a"], titles=["renamed"])])
    assert store.upsert_tracks(batch) == 2
    store.upsert_tracks(batch)
    with store.connect() as con:
        rows = con.execute("SELECT track_id, title FROM tracks ORDER BY track_id").fetchall()
    assert rows == [("a", "renamed"), ("b", "title b")]


def test_similar_to_ranks_by_cosine_and_excludes_the_query(tmp_path, track_frame):
    store = Store(tmp_path / "s.duckdb")
    rng = np.random.default_rng(0)
    base = rng.standard_normal(LATENT_DIM).astype(np.float32)
    vectors = {
        "q": base,
        "near": base + 0.1 * rng.standard_normal(LATENT_DIM).astype(np.float32),
        "mid": base + 1.0 * rng.standard_normal(LATENT_DIM).astype(np.float32),
        "far": rng.standard_normal(LATENT_DIM).astype(np.float32),
    }
    _with_space(store, vectors, track_frame)
    result = search.similar(store, track_id="q", k=10)
    assert result["track_id"].to_list() == ["near", "mid", "far"]
    expected = float(np.dot(base, vectors["near"]) / np.linalg.norm(base) / np.linalg.norm(vectors["near"]))
    assert result["cosine"][0] == pytest.approx(expected, rel=1e-5)
    # The macro is stored in the file: a plain DuckDB session can use it.
    con = duckdb.connect(str(store.path), read_only=True)
    rows = con.execute("SELECT track_id FROM similar_to('q', 2)").fetchall()
    con.close()
    assert rows == [("near",), ("mid",)]


def test_find_track_by_artist_and_title_or_a_clear_error(tmp_path, track_frame):
    store = Store(tmp_path / "s.duckdb")
    _with_space(store, {"a": np.ones(LATENT_DIM, np.float32), "b": np.arange(LATENT_DIM, dtype=np.float32)},
                track_frame)
    assert store.find_track("ARTIST B - Title B")["track_id"] == "b"
    with pytest.raises(TrackNotFound, match="nobody - nothing"):
        store.find_track("nobody - nothing")


def test_quarantine_then_success_releases_the_track(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.quarantine(pl.DataFrame({"track_id": ["a"], "stage": ["fetch"], "reason": ["HTTP 503"], "run_id": [None]}))
    assert store.quarantined("fetch")["reason"].to_list() == ["HTTP 503"]
    store.record_previews(
        pl.DataFrame({"track_id": ["a"], "provider": ["deezer"], "path": ["/x.mp3"], "bytes": [10],
                      "duration_s": [30.0]})
    )
    assert store.quarantined("fetch").is_empty()


def test_a_stages_failures_become_quarantine_rows(tmp_path):
    # Every stage builds its quarantine rows with quarantine_rows: the
    # failures' track and reason, the stage, the run (null outside one).
    failures = pl.DataFrame({"track_id": ["a", "b"], "reason": ["too short", "not finite"], "extra": [1, 2]})
    rows = quarantine_rows(failures, "encode", "run-1")
    assert rows.columns == list(QUARANTINE_SCHEMA)
    assert rows.rows() == [("a", "encode", "too short", "run-1"), ("b", "encode", "not finite", "run-1")]
    outside = quarantine_rows(failures.head(1), "spectrogram", None)
    assert outside.schema["run_id"] == pl.String and outside["run_id"].to_list() == [None]
    assert quarantine_rows(failures.clear(), "scrape", "r").is_empty()
    with pytest.raises(ValueError, match="'decode'"):
        quarantine_rows(failures, "decode", None)
    store = Store(tmp_path / "s.duckdb")
    store.quarantine(rows)
    store.quarantine(outside)
    assert sorted(store.quarantined().select("track_id", "stage", "reason", "run_id", "attempts").rows()) == [
        ("a", "encode", "too short", "run-1", 1), ("a", "spectrogram", "too short", None, 1),
        ("b", "encode", "not finite", "run-1", 1),
    ]


def test_a_promoted_version_becomes_current_only_once_every_track_is_encoded(tmp_path, track_frame, register_model,
                                                                           embed_vectors):
    store = Store(tmp_path / "s.duckdb")
    ids = ["a", "b", "c"]
    store.upsert_tracks(track_frame(ids))
    store.register_spectrogram_set("set1", {"n_mels": 128})
    store.record_spectrograms(
        pl.DataFrame({"track_id": ids, "excerpt": [0] * 3, "set_id": ["set1"] * 3,
                      "shard": ["x.npy"] * 3, "row": [0, 1, 2]},
                     schema={"track_id": pl.String, "excerpt": pl.Int32, "set_id": pl.String,
                             "shard": pl.String, "row": pl.Int32}),
        pl.DataFrame(schema={"track_id": pl.String, "stage": pl.String, "reason": pl.String, "run_id": pl.String}),
    )
    rng = np.random.default_rng(0)
    register_model(store, "old", "set1")
    embed_vectors(store, "old", {i: rng.standard_normal(LATENT_DIM) for i in ids})
    assert store.switch_if_encoded() == "old"

    register_model(store, "new", "set1")  # pending: asked to become current
    assert store.pending_model().model_version == "new"
    assert store.target_model().model_version == "new"
    embed_vectors(store, "new", {i: rng.standard_normal(LATENT_DIM) for i in ids[:2]})
    assert store.switch_if_encoded() is None  # "c" has no vector in "new" yet
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT model_version FROM latent").fetchall() == [("old",)]
        assert con.execute("SELECT count(*) FROM latent").fetchone()[0] == 3

    embed_vectors(store, "new", {"c": rng.standard_normal(LATENT_DIM)})
    assert store.switch_if_encoded() == "new"
    assert store.pending_model() is None and store.current_model().model_version == "new"
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT model_version FROM latent").fetchall() == [("new",)]
        assert con.execute("SELECT count(*) FROM latent").fetchone()[0] == 3


def test_a_new_request_deletes_the_vectors_of_the_pending_version_it_replaces(tmp_path, register_model,
                                                                            embed_vectors):
    """A train killed while encoding its version leaves part of its vectors;
    the next train's request replaces it, and nothing would read them again."""
    store = Store(tmp_path / "s.duckdb")
    rng = np.random.default_rng(2)
    register_model(store, "current", "set1")
    embed_vectors(store, "current", {i: rng.standard_normal(LATENT_DIM) for i in "ab"})
    store.promote("current")
    register_model(store, "killed", "set1")  # pending, half encoded when its run died
    embed_vectors(store, "killed", {"a": rng.standard_normal(LATENT_DIM)})
    register_model(store, "unpromoted", "set1", promote=False)  # a retrain's candidate, being judged
    embed_vectors(store, "unpromoted", {"a": rng.standard_normal(LATENT_DIM)})

    register_model(store, "rerun", "set1")
    assert store.pending_model().model_version == "rerun"
    with store.connect() as con:
        left = con.execute("SELECT model_version, count(*) FROM embeddings GROUP BY ALL ORDER BY 1").fetchall()
    assert left == [("current", 2), ("unpromoted", 1)]  # the current version's and the candidate's stay
    embed_vectors(store, "rerun", {"a": rng.standard_normal(LATENT_DIM)})
    store.request_promotion("unpromoted")  # a request through the store's method replaces the pending one alike
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT model_version FROM embeddings ORDER BY 1").fetchall() == [
            ("current",), ("unpromoted",)]



def _ever_current(store: Store) -> dict[str, bool | None]:
    with store.connect() as con:
        return dict(con.execute("SELECT model_version, ever_current FROM models").fetchall())


def test_a_killed_retrains_candidate_loses_its_vectors_a_version_once_current_keeps_them(
        tmp_path, register_model, embed_vectors):
    """A retrain killed while encoding its candidate leaves vectors of a
    version that is neither current nor pending, like a version that was
    current once and was replaced (a rollback target). models.ever_current
    tells them apart: both ways of becoming current set it, and only the
    candidate's vectors are forgotten."""
    store = Store(tmp_path / "s.duckdb")
    rng = np.random.default_rng(3)
    register_model(store, "first", "set1", promote=False)
    embed_vectors(store, "first", {i: rng.standard_normal(LATENT_DIM) for i in "ab"})
    store.promote("first")  # made current directly
    register_model(store, "second", "set1")  # pending, then current by the switch
    embed_vectors(store, "second", {i: rng.standard_normal(LATENT_DIM) for i in "ab"})
    assert store.switch_if_encoded() == "second"
    register_model(store, "killed", "set1", promote=False)  # a retrain's candidate, its run killed mid-encoding
    embed_vectors(store, "killed", {"a": rng.standard_normal(LATENT_DIM)})
    register_model(store, "rejected", "set1", promote=False)  # a finished retrain's, its vectors deleted
    assert _ever_current(store) == {"first": True, "second": True, "killed": False, "rejected": False}

    assert store.abandoned_candidates() == {"killed": 1}
    assert store.forget_abandoned_candidates() == {"killed": 1}
    with store.connect() as con:
        left = con.execute("SELECT model_version, count(*) FROM embeddings GROUP BY ALL ORDER BY 1").fetchall()
        rejected = [row[0] for row in con.execute(sql.statement("gc_rejected_models")).fetchall()]
    assert left == [("first", 2), ("second", 2)]  # the superseded version keeps its vectors
    assert rejected == ["killed", "rejected"]  # their folders are gc's to free
    assert store.forget_abandoned_candidates() == {}
    store.promote("first")  # going back to a version once current
    assert store.current_model().model_version == "first"


def test_the_migration_to_version_6_counts_every_version_with_vectors_as_once_current(
        tmp_path, register_model, embed_vectors):
    """A store of schema version 5 has no ever_current: whether a version not
    current that has vectors was current once or is a killed candidate is not
    known, so it counts as once current (its vectors stay); one without
    vectors does not. Versions registered later are never re-guessed when
    the schema is applied again."""
    path = tmp_path / "s.duckdb"
    store = Store(path)
    rng = np.random.default_rng(4)
    for version in ("old", "current", "unknown", "rejected"):
        register_model(store, version, "set1", promote=False)
    for version in ("old", "current", "unknown"):
        embed_vectors(store, version, {"a": rng.standard_normal(LATENT_DIM)})
    store.promote("current")
    with duckdb.connect(str(path)) as con:  # as version 5 left it
        con.execute("ALTER TABLE models DROP COLUMN ever_current")
        con.execute("UPDATE sonufy_schema SET version = 5, fingerprint = 'version 5'")
    assert store.schema_version() == 5
    assert _ever_current(store) == {"old": True, "current": True, "unknown": True, "rejected": False}
    assert store.schema_version() == sql.SCHEMA_VERSION >= 6
    assert store.abandoned_candidates() == {}

    register_model(store, "killed", "set1", promote=False)
    embed_vectors(store, "killed", {"a": rng.standard_normal(LATENT_DIM)})
    with duckdb.connect(str(path)) as con:  # a development change: the schema applied again
        con.execute("UPDATE sonufy_schema SET fingerprint = 'changed'")
    assert _ever_current(store)["killed"] is False
    assert store.abandoned_candidates() == {"killed": 1}

def test_an_unpromoted_version_is_neither_pending_nor_current(tmp_path, register_model):
    store = Store(tmp_path / "s.duckdb")
    register_model(store, "m", "set1", promote=False)
    assert store.pending_model() is None and store.current_model() is None
    assert store.switch_if_encoded() is None


def test_the_switch_statement_checks_completeness_itself(tmp_path, track_frame, register_model, embed_vectors):
    """No check on another connection before it: the one statement refuses a
    version that a track (say, one a nightly just added) has no vector in."""
    store = Store(tmp_path / "s.duckdb")
    ids = ["a", "b"]
    store.upsert_tracks(track_frame(ids + ["late"]))
    store.register_spectrogram_set("set1", {"n_mels": 128})
    spectrograms = lambda rows: pl.DataFrame(  # noqa: E731
        {"track_id": rows, "excerpt": [0] * len(rows), "set_id": ["set1"] * len(rows),
         "shard": ["x.npy"] * len(rows), "row": list(range(len(rows)))},
        schema={"track_id": pl.String, "excerpt": pl.Int32, "set_id": pl.String, "shard": pl.String, "row": pl.Int32})
    no_failures = pl.DataFrame(schema={"track_id": pl.String, "stage": pl.String, "reason": pl.String,
                                       "run_id": pl.String})
    store.record_spectrograms(spectrograms(ids), no_failures)
    rng = np.random.default_rng(1)
    register_model(store, "old", "set1")
    embed_vectors(store, "old", {i: rng.standard_normal(LATENT_DIM) for i in ids})
    assert store.switch_if_encoded() == "old"
    register_model(store, "new", "set1")
    embed_vectors(store, "new", {i: rng.standard_normal(LATENT_DIM) for i in ids})
    store.record_spectrograms(spectrograms(["late"]), no_failures)  # lands after "new" was fully encoded
    with store.transaction() as con:
        assert con.execute(sql.statement("switch_to_pending")).fetchall() == []
        assert con.execute("SELECT model_version FROM models WHERE is_current").fetchall() == [("old",)]
    embed_vectors(store, "new", {"late": rng.standard_normal(LATENT_DIM)})
    with store.transaction() as con:
        assert sorted(con.execute(sql.statement("switch_to_pending")).fetchall()) == [("new", True), ("old", False)]
    assert store.current_model().model_version == "new" and store.pending_model() is None
