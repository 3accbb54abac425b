"""sonufy path and radio, and hub reduction, on small latent spaces whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from flows.cli import main
from sonufy_model import hubness
from sonufy_model.evaluate import ranking_metrics
from sonufy_model.journeys import JourneyError, path, radio, slerp
from sonufy_model.store import LATENT_DIM, Store, TrackNotFound


def _space(store: Store, vectors: dict[str, np.ndarray], artists: dict[str, str] | None = None) -> None:
    """A current model whose standardised vectors are ``vectors``; artist per track (default: its own)."""
    ids = list(vectors)
    artists = artists or {}
    n = len(ids)
    store.upsert_tracks(pl.DataFrame({
        "track_id": ids, "source": ["folder"] * n, "title": [f"song {t}" for t in ids],
        "artist": [artists.get(t, f"artist {t}") for t in ids],
        "artists": [[artists.get(t, f"artist {t}")] for t in ids],
        "artist_id": [None] * n, "album": [f"album {t}" for t in ids], "album_id": [None] * n,
        "release_date": [None] * n, "duration_ms": [30_000] * n, "isrc": [None] * n, "explicit": [None] * n,
        "popularity": [None] * n, "uri": [None] * n, "preview_url": [None] * n,
        "path": [f"/music/{t}.mp3" for t in ids], "found_by": [None] * n,
    }))
    store.register_model({
        "model_version": "m1", "set_id": "s", "config": {}, "checkpoint": "c.ckpt", "epochs": 1,
        "train_mse": 0.1, "val_mse": 0.1, "n_train_tracks": n, "n_val_tracks": 0, "train_seconds": 1.0,
        "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM),
    })
    matrix = np.stack([np.asarray(v, dtype=np.float32) for v in vectors.values()])
    store.record_embeddings(pl.DataFrame({"track_id": ids, "model_version": ["m1"] * n}).with_columns(
        pl.Series("raw", matrix, dtype=pl.Array(pl.Float32, LATENT_DIM)),
        pl.Series("vector", matrix, dtype=pl.Array(pl.Float32, LATENT_DIM)),
    ))
    store.promote("m1")


def _axis(i: int) -> np.ndarray:
    vector = np.zeros(LATENT_DIM)
    vector[i] = 1.0
    return vector


def _arc(degrees: float) -> np.ndarray:
    """A point on the great circle from axis 0 (A, 0°) to axis 1 (B, 90°)."""
    angle = math.radians(degrees)
    return math.cos(angle) * _axis(0) + math.sin(angle) * _axis(1)


@pytest.fixture
def arc_store(tmp_path) -> Store:
    """A at 0°, B at 90°, tracks every 15° between them (added out of order), and
    off-arc tracks that are nobody's nearest waypoint."""
    store = Store(tmp_path / "arc.duckdb")
    vectors = {"A": _arc(0), "B": _arc(90)}
    for degrees in (45, 15, 75, 30, 60):
        vectors[f"d{degrees}"] = _arc(degrees) + 0.05 * _axis(10 + degrees // 15)
    for i in range(6):
        vectors[f"off{i}"] = _axis(20 + i) + 0.2 * _arc(45)
    _space(store, vectors)
    return store


def test_path_walks_from_a_to_b_in_order_without_repeats(arc_store):
    walk = path(arc_store, "A", "artist B - song B", steps=7)
    assert walk["track_id"].to_list() == ["A", "d15", "d30", "d45", "d60", "d75", "B"]
    assert walk["step"].to_list() == list(range(7))
    assert walk["position"].to_list() == pytest.approx([i / 6 for i in range(7)])
    # Scores are against each step's waypoint: the ends are their own waypoints.
    assert walk["cosine"][0] == pytest.approx(1.0) and walk["cosine"][-1] == pytest.approx(1.0)
    assert walk["cosine"][3] == pytest.approx(1 / math.sqrt(1 + 0.05**2), rel=1e-5)
    assert walk["preview_url"][0] == "/music/A.mp3"


def test_a_shorter_path_skips_tracks_and_a_longer_one_never_repeats(arc_store):
    assert path(arc_store, "A", "B", steps=3)["track_id"].to_list() == ["A", "d45", "B"]
    assert path(arc_store, "A", "B", steps=2)["track_id"].to_list() == ["A", "B"]
    long = path(arc_store, "A", "B", steps=12)["track_id"].to_list()
    assert len(long) == len(set(long)) == 12 and long[0] == "A" and long[-1] == "B"
    assert [t for t in long if t.startswith("d")] == ["d15", "d30", "d45", "d60", "d75"]


def test_path_bad_input_is_named(arc_store):
    with pytest.raises(JourneyError, match="A and B are the same track"):
        path(arc_store, "A", "artist A - song A", steps=5)
    with pytest.raises(TrackNotFound, match="'nowhere'"):
        path(arc_store, "A", "nowhere", steps=5)
    with pytest.raises(JourneyError, match="only 13 tracks"):
        path(arc_store, "A", "B", steps=14)
    # Refused before any waypoint is made: memory stays flat for any count.
    with pytest.raises(JourneyError, match=r"--steps 100000000: the latent space has only 13 tracks"):
        path(arc_store, "A", "B", steps=100_000_000)
    with pytest.raises(JourneyError, match="at least 2 steps"):
        path(arc_store, "A", "B", steps=1)


def test_slerp_stays_on_the_sphere_at_even_angles():
    a, b = _arc(0), _arc(90)
    for t in (0.0, 0.25, 0.5, 1.0):
        point = slerp(a, b, t)
        assert np.linalg.norm(point) == pytest.approx(1.0)
        assert math.degrees(math.acos(np.clip(point @ a, -1, 1))) == pytest.approx(90 * t, abs=1e-6)


@pytest.fixture
def two_neighbourhoods(tmp_path) -> Store:
    """Seed S on axis 0 with n1..n6 near it (artists X, x, X, Y, Y, Z by rank: "x" is
    X), seed T on axis 1 with m1..m4 (artist W); each neighbourhood is orthogonal to the other."""
    store = Store(tmp_path / "radio.duckdb")
    vectors, artists = {"S": _axis(0), "T": _axis(1)}, {}
    for rank, artist in enumerate(["X", " x", "X", "Y", "Y", "Z"], start=1):
        vectors[f"n{rank}"] = _axis(0) + (0.1 * rank) * _axis(30 + rank)
        artists[f"n{rank}"] = artist
    for rank in range(1, 5):
        vectors[f"m{rank}"] = _axis(1) + (0.1 * rank) * _axis(60 + rank)
        artists[f"m{rank}"] = "W"
    _space(store, vectors, artists)
    return store


def test_radio_interleaves_the_seeds_with_the_artist_cap(two_neighbourhoods):
    rows = radio(two_neighbourhoods, ["S", "T"], n=6, max_per_artist=2)
    # S's list: n1 n2 (X), n3 (X, capped), n4 (Y)...; T's: m1 m2 (W), m3 m4 (W, capped),
    # then the tracks orthogonal to T, by id: n1 n2 (used), n3 (capped), n4 (used), n5.
    assert rows["track_id"].to_list() == ["n1", "m1", "n2", "m2", "n4", "n5"]
    assert rows["seed_track_id"].to_list() == ["S", "T"] * 3
    assert rows["seed"][1] == "artist T - song T"
    assert rows["artist"].to_list() == ["X", "W", " x", "W", "Y", "Y"]


def test_radio_has_no_repeats_and_no_seeds_and_stops_when_the_space_runs_out(two_neighbourhoods):
    rows = radio(two_neighbourhoods, ["S", "T", "artist S - song S"], n=50, max_per_artist=None)
    ids = rows["track_id"].to_list()
    assert len(ids) == len(set(ids)) == 10  # 12 tracks, 2 seeds (S named twice)
    # A count past any integer the database holds is only "as many as there are".
    assert radio(two_neighbourhoods, ["S", "T"], n=10**20, max_per_artist=None)["track_id"].to_list() == ids
    assert not {"S", "T"} & set(ids)
    capped = radio(two_neighbourhoods, ["S"], n=50, max_per_artist=1)
    assert capped["artist"].to_list()[:3] == ["X", "Y", "Z"]
    assert sorted(capped["artist"].to_list()) == sorted(["X", "Y", "Z", "W", "artist T"])


def test_radio_bad_input_is_named(two_neighbourhoods):
    with pytest.raises(TrackNotFound, match="'nobody'"):
        radio(two_neighbourhoods, ["S", "nobody"], n=5)
    with pytest.raises(JourneyError, match="max_per_artist"):
        radio(two_neighbourhoods, ["S"], n=5, max_per_artist=0)


def test_path_and_radio_commands(arc_store, two_neighbourhoods, capsys):
    assert main(["path", "--db", str(arc_store.path), "A", "B", "--steps", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["track_id"] for row in out["path"]] == ["A", "d30", "d60", "B"]
    assert main(["radio", "--db", str(two_neighbourhoods.path), "S", "T", "-n", "3", "--max-per-artist", "1",
                 "--json"]) == 0
    assert [row["track_id"] for row in json.loads(capsys.readouterr().out)["radio"]] == ["n1", "m1", "n4"]
    assert main(["path", "--db", str(arc_store.path), "A", "B", "--steps", "4"]) == 0
    table = capsys.readouterr().out
    assert "step" in table and "song d30" in table and "/music/B.mp3" in table
    assert main(["path", "--db", str(arc_store.path), "A", "A"]) == 2
    assert "A and B are the same track" in capsys.readouterr().err
    assert main(["radio", "--db", str(arc_store.path), "ghost"]) == 2
    assert "'ghost'" in capsys.readouterr().err


# -- hub reduction ---------------------------------------------------------------


def _hubby(n_clusters: int = 6, per_cluster: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clusters on their own axes, and a hub (label -1) near the mean of every cluster centre."""
    rng = np.random.default_rng(seed)
    vectors, labels = [], []
    for c in range(n_clusters):
        centre = _axis(c)
        for _ in range(per_cluster):
            vectors.append(centre + 0.9 * rng.standard_normal(LATENT_DIM) / math.sqrt(LATENT_DIM) * 3)
            labels.append(c)
    hub = sum(_axis(c) for c in range(n_clusters)) / math.sqrt(n_clusters)
    vectors.append(hub)
    labels.append(-1)
    return np.stack(vectors), np.array(labels)


def test_mutual_proximity_demotes_the_hub_and_lowers_hubness():
    vectors, labels = _hubby()
    hub = len(vectors) - 1
    assert hubness.k_occurrence(vectors, 1)[hub] > hubness.k_occurrence(vectors, 1, hub_reduction=True)[hub]
    before, after = hubness.hubness(vectors, 3), hubness.hubness(vectors, 3, hub_reduction=True)
    assert after["skewness"] < before["skewness"] and after["max_occurrence"] < before["max_occurrence"]
    cosine = ranking_metrics(vectors, labels, k=1)
    reduced = ranking_metrics(vectors, labels, k=1, hub_reduction=True)
    assert reduced["precision"] > cosine["precision"]
    assert reduced["chance"] == cosine["chance"] and reduced["tracks"] == cosine["tracks"]


def test_mutual_proximity_is_a_probability_and_keeps_each_pairs_order():
    similarity = np.array([[0.1, 0.5, 0.9]])
    scores = hubness.mutual_proximity(similarity, [0.2], [0.1], np.array([0.0, 0.0, 0.0]), np.array([0.3, 0.3, 0.3]))
    assert np.all((scores >= 0) & (scores <= 1)) and np.all(np.diff(scores[0]) > 0)


def test_recommend_with_hub_reduction_reranks_the_hub_below_a_true_neighbour(tmp_path):
    from sonufy_model import query_audio

    vectors, labels = _hubby(per_cluster=6, seed=1)
    ids = [f"c{label}-{i}" if label >= 0 else "hub" for i, label in enumerate(labels)]
    store = Store(tmp_path / "hub.duckdb")
    _space(store, dict(zip(ids, vectors)))
    seed = query_audio.seed_from_track(store, ids[0])
    plain = query_audio.recommend(store, seed, k=3)
    reduced = query_audio.recommend(store, seed, k=3, hub_reduction=True)
    assert "hub" in plain["track_id"].to_list()
    assert "hub" not in reduced["track_id"].to_list()
    assert all(t.startswith("c0-") for t in reduced["track_id"])
    assert reduced["mutual_proximity"].is_sorted(descending=True)
