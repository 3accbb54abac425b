"""Shared fixtures and helpers: one Prefect test server for the session, data in
tmp dirs, the rows the store tests write by hand (tracks, a model version,
vectors) and the clustered latent space of the landscape tests."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from sonufy_model.store import LATENT_DIM  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api():
    """A real, temporary Prefect API (SQLite) for every flow run of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def _track_frame(ids: list[str], titles: list[str] | None = None) -> pl.DataFrame:
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


def _register_model(store, version: str, set_id: str, promote: bool = True) -> None:
    store.register_model(
        {
            "model_version": version, "set_id": set_id, "config": {}, "checkpoint": "c.ckpt", "epochs": 1,
            "train_mse": 0.1, "val_mse": 0.1, "n_train_tracks": 1, "n_val_tracks": 1, "train_seconds": 1.0,
            "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM),
        },
        promote=promote,
    )


def _embed_vectors(store, version: str, vectors: dict[str, np.ndarray]) -> None:
    stacked = np.stack(list(vectors.values())).astype(np.float32)
    store.record_embeddings(
        pl.DataFrame({"track_id": list(vectors), "model_version": [version] * len(vectors)}).with_columns(
            pl.Series("raw", stacked, dtype=pl.Array(pl.Float32, LATENT_DIM)),
            pl.Series("vector", stacked, dtype=pl.Array(pl.Float32, LATENT_DIM)),
        )
    )


# -- a clustered latent space: 6 genres x 4 artists x 10 tracks (test_landscape.py and
# test_landscape_browser.py import these) --------------------------------------------

GENRES = ("ambient", "techno", "jazz", "metal", "folk", "hip hop")
ARTISTS_PER_GENRE = 4
TRACKS_PER_ARTIST = 10


def tracks_frame(ids, artists, genres, years, preview_urls=None) -> pl.DataFrame:
    n = len(ids)
    return pl.DataFrame(
        {
            "track_id": ids,
            "source": ["folder" if i % 7 == 0 else "spotify" for i in range(n)],
            "title": [f"song {i}" for i in ids],
            "artist": artists,
            "artists": [[a] for a in artists],
            "artist_id": artists,
            "album": ["album"] * n,
            "album_id": [f"al-{a}" for a in artists],
            "release_date": [f"{y}-01-01" for y in years],
            "duration_ms": [200_000] * n,
            "isrc": [f"QZ{i}" for i in ids],
            "explicit": [False] * n,
            "popularity": [None] * n,
            "uri": [f"spotify:track:{i}" for i in ids],
            "preview_url": preview_urls or [None] * n,
            "path": [None] * n,
            "found_by": [f'genre:"{g}"' for g in genres],
        }
    )


def clustered_vectors(seed: int = 0):
    """Vectors around well-separated genre centres, a sub-centre per artist;
    the genre index of each, and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(GENRES), LATENT_DIM)) * 3.0
    vectors, clusters = [], []
    for c in range(len(GENRES)):
        for _ in range(ARTISTS_PER_GENRE):
            artist_centre = centres[c] + rng.normal(size=LATENT_DIM) * 0.8
            vectors.append(artist_centre + rng.normal(size=(TRACKS_PER_ARTIST, LATENT_DIM)) * 0.6)
            clusters += [c] * TRACKS_PER_ARTIST
    return np.vstack(vectors).astype(np.float32), np.array(clusters), centres


def register(store, version: str) -> None:
    """A model version, not yet current."""
    _register_model(store, version, "s", promote=False)


def embed(store, ids, vectors, version: str) -> None:
    _embed_vectors(store, version, dict(zip(ids, vectors)))


def build_space(store, version: str = "m1", preview_urls: dict | None = None) -> dict:
    """Tracks t000..t239, their vectors in ``version``, which is made current."""
    vectors, clusters, centres = clustered_vectors()
    n = len(vectors)
    ids = [f"t{i:03d}" for i in range(n)]
    artists = [f"{GENRES[c]} artist {i // TRACKS_PER_ARTIST % ARTISTS_PER_GENRE}" for i, c in enumerate(clusters)]
    genres = [GENRES[c] for c in clusters]
    urls = [None] * n
    for i, url in (preview_urls or {}).items():
        urls[i] = url
    store.upsert_tracks(tracks_frame(ids, artists, genres, [1970 + (i * 7) % 50 for i in range(n)], urls))
    register(store, version)
    embed(store, ids, vectors, version)
    store.promote(version)
    return {"ids": ids, "vectors": vectors, "clusters": clusters, "centres": centres,
            "artists": artists, "genres": genres}


@pytest.fixture
def track_frame():
    """``track_frame(ids, titles=None)``: catalog rows for ``Store.upsert_tracks``."""
    return _track_frame


@pytest.fixture
def register_model():
    """``register_model(store, version, set_id, promote=True)``: a model version with neutral statistics."""
    return _register_model


@pytest.fixture
def embed_vectors():
    """``embed_vectors(store, version, {track_id: vector})``: the vectors, raw and scaled the same."""
    return _embed_vectors


# -- flow tests on small stand-in builds -------------------------------------------

#: A narrow model and one short epoch: flow tests check the plumbing, not the model.
SMALL_TRAINING = {"max_epochs": 1, "batch_size": 16, "crops_per_track": 2, "filters": [4, 8, 16, 32],
                  "accelerator": "cpu"}


def sql_rows(db, query: str) -> list[tuple]:
    """The rows of ``query`` on the DuckDB file ``db``, opened read-only for it alone."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()
