"""The schema, the named statements and the store, on a real DuckDB file."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

import sql
from sonufy_model.store import LATENT_DIM, Store, TrackNotFound


def _tracks(ids, titles=None):
    titles = titles or [f"title {i}" for i in ids]
    return pl.DataFrame(
        {
            "track_id": ids,
            "source": ["spotify"] * len(ids),
            "title": titles,
            "artist": [f"artist {i}" for i in ids],
            "artists": [[f"artist {i}"] for i in ids],
            "artist_id": ids,
            "album": ["album"] * len(ids),
            "album_id": ["al"] * len(ids),
            "release_date": ["2020-01-01"] * len(ids),
            "duration_ms": [200_000] * len(ids),
            "isrc": [f"QZ{i}" for i in ids],
            "explicit": [False] * len(ids),
            "popularity": [None] * len(ids),
            "uri": [f"spotify:track:{i}" for i in ids],
            "preview_url": [None] * len(ids),
            "path": [None] * len(ids),
            "found_by": ["q"] * len(ids),
        }
    )


def _with_space(store: Store, vectors: dict[str, np.ndarray]) -> None:
    store.upsert_tracks(_tracks(list(vectors)))
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


def test_upsert_deduplicates_and_reruns_change_nothing(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    batch = pl.concat([_tracks(["a", "b"]), _tracks(["a"], titles=["renamed"])])
    assert store.upsert_tracks(batch) == 2
    store.upsert_tracks(batch)
    with store.connect() as con:
        rows = con.execute("SELECT track_id, title FROM tracks ORDER BY track_id").fetchall()
    assert rows == [("a", "renamed"), ("b", "title b")]


def test_similar_to_ranks_by_cosine_and_excludes_the_query(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    rng = np.random.default_rng(0)
    base = rng.standard_normal(LATENT_DIM).astype(np.float32)
    vectors = {
        "q": base,
        "near": base + 0.1 * rng.standard_normal(LATENT_DIM).astype(np.float32),
        "mid": base + 1.0 * rng.standard_normal(LATENT_DIM).astype(np.float32),
        "far": rng.standard_normal(LATENT_DIM).astype(np.float32),
    }
    _with_space(store, vectors)
    result = store.similar_to("q", 10)
    assert result["track_id"].to_list() == ["near", "mid", "far"]
    expected = float(np.dot(base, vectors["near"]) / np.linalg.norm(base) / np.linalg.norm(vectors["near"]))
    assert result["cosine"][0] == pytest.approx(expected, rel=1e-5)
    # The macro is stored in the file: a plain DuckDB session can use it.
    con = duckdb.connect(str(store.path), read_only=True)
    rows = con.execute("SELECT track_id FROM similar_to('q', 2)").fetchall()
    con.close()
    assert rows == [("near",), ("mid",)]


def test_find_track_by_artist_and_title_or_a_clear_error(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    _with_space(store, {"a": np.ones(LATENT_DIM, np.float32), "b": np.arange(LATENT_DIM, dtype=np.float32)})
    assert store.find_track("ARTIST B - Title B")["track_id"] == "b"
    with pytest.raises(TrackNotFound, match="nobody - nothing"):
        store.find_track("nobody - nothing")


def test_quarantine_then_success_releases_the_track(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.quarantine(pl.DataFrame({"track_id": ["a"], "stage": ["fetch"], "reason": ["HTTP 503"], "run_id": [None]}))
    assert store.quarantined("fetch")["reason"].to_list() == ["HTTP 503"]
    store.record_previews(
        pl.DataFrame({"track_id": ["a"], "provider": ["deezer"], "path": ["/x.mp3"], "bytes": [10], "duration_s": [30.0]})
    )
    assert store.quarantined("fetch").is_empty()
