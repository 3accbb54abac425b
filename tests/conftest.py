"""Shared fixtures: one Prefect test server for the session, data in tmp dirs,
and the rows the store tests write by hand (tracks, a model version, vectors)."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


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
    from sonufy_model.store import LATENT_DIM

    store.register_model(
        {
            "model_version": version, "set_id": set_id, "config": {}, "checkpoint": "c.ckpt", "epochs": 1,
            "train_mse": 0.1, "val_mse": 0.1, "n_train_tracks": 1, "n_val_tracks": 1, "train_seconds": 1.0,
            "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM),
        },
        promote=promote,
    )


def _embed_vectors(store, version: str, vectors: dict[str, np.ndarray]) -> None:
    from sonufy_model.store import LATENT_DIM

    stacked = np.stack(list(vectors.values())).astype(np.float32)
    store.record_embeddings(
        pl.DataFrame({"track_id": list(vectors), "model_version": [version] * len(vectors)}).with_columns(
            pl.Series("raw", stacked, dtype=pl.Array(pl.Float32, LATENT_DIM)),
            pl.Series("vector", stacked, dtype=pl.Array(pl.Float32, LATENT_DIM)),
        )
    )


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
