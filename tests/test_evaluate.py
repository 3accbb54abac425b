"""`sonufy evaluate`: precision@k, MAP and chance, baselines, storage, command line."""

from __future__ import annotations

import itertools
import json

import duckdb
import numpy as np
import polars as pl
import pytest

from flows.cli import main as cli
from sonufy_model.evaluate import (
    MFCC_DIM,
    _random_ap,
    evaluate_spaces,
    evaluate_store,
    mfcc_statistics,
    random_vectors,
    ranking_metrics,
    standardise_columns,
)
from sonufy_model.spectrograms import read_spectrograms
from sonufy_model.store import LATENT_DIM, Store

GENRES = ("techno", "ambient")
ARTISTS_PER_GENRE = 3
TRACKS_PER_ARTIST = 4


def test_clustered_vectors_score_one_and_chance_is_the_label_share():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    clustered = rng.standard_normal((4, 16))[labels] + 0.05 * rng.standard_normal((40, 16))
    result = ranking_metrics(clustered, labels, k=5)
    assert result["precision"] == 1.0 and result["map"] == pytest.approx(1.0)
    assert result["chance"] == pytest.approx(9 / 39)
    assert result["tracks"] == 40


def test_shuffled_labels_score_near_chance():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(5), 60))
    result = ranking_metrics(rng.standard_normal((300, 32)), labels, k=10)
    assert result["chance"] == pytest.approx(59 / 299)
    assert abs(result["precision"] - result["chance"]) < 0.04
    assert abs(result["map"] - result["map_chance"]) < 0.04


def test_expected_random_average_precision_is_exact():
    # Every placement of R relevant items among N, equally likely.
    for n, r in ((4, 1), (4, 2), (6, 3), (7, 7)):
        aps = []
        for positions in itertools.combinations(range(1, n + 1), r):
            aps.append(np.mean([(i + 1) / rank for i, rank in enumerate(positions)]))
        assert _random_ap(np.array([r]), np.array([n]))[0] == pytest.approx(np.mean(aps))


def test_artist_filter_drops_same_artist_hits():
    # Four artists of three identical tracks; a1 and a2 play techno, a3 and a4
    # ambient, but a1 sounds like a3 and a2 like a4.
    centres = {"a1": (1.0, 0.0), "a2": (0.0, 1.0), "a3": (1.0, 0.2), "a4": (-1.0, 0.3)}
    genre = {"a1": "techno", "a2": "techno", "a3": "ambient", "a4": "ambient"}
    artists = [a for a in centres for _ in range(3)]
    vectors = np.array([centres[a] for a in artists])
    labels = [genre[a] for a in artists]
    unfiltered = ranking_metrics(vectors, labels, k=2)
    filtered = ranking_metrics(vectors, labels, k=2, exclude_groups=artists)
    assert unfiltered["precision"] == 1.0
    assert filtered["precision"] == 0.0
    assert filtered["chance"] == pytest.approx(3 / 9)  # the other artist of the genre, of 9 candidates
    assert filtered["map"] < unfiltered["map"]


def test_tracks_alone_with_their_label_are_left_out():
    rng = np.random.default_rng(2)
    labels = ["x"] * 6 + ["y"] * 6 + ["lonely"]
    result = ranking_metrics(rng.standard_normal((13, 8)), labels, k=3)
    assert result["tracks"] == 12
    # Same label only within one artist: nothing to score with the artist filter.
    with pytest.raises(ValueError, match="candidate neighbours"):
        ranking_metrics(rng.standard_normal((13, 8)), labels, k=3, exclude_groups=labels)


def test_evaluate_spaces_rows_and_notes():
    rng = np.random.default_rng(3)
    genre = np.repeat(["a", "b"], 12)
    artists = np.repeat([f"r{i}" for i in range(6)], 4)
    good = np.where(genre[:, None] == "a", 1.0, -1.0) * np.ones((24, 8)) + 0.1 * rng.standard_normal((24, 8))
    rows, notes = evaluate_spaces(
        {"latent": good, "random": random_vectors(24, 256, seed=0)},
        {"genre": list(genre), "artist": list(artists)},
        artists, k=3,
    )
    keys = {(r["space"], r["label"], r["artist_filter"]) for r in rows}
    assert ("latent", "genre", True) in keys and ("random", "artist", False) in keys
    assert ("latent", "artist", True) not in keys  # nothing left to find
    assert any(note.startswith("artist, artist filter on") for note in notes)
    latent_genre = next(r for r in rows if r["space"] == "latent" and r["label"] == "genre")
    assert latent_genre["precision"] == 1.0 and latent_genre["map"] == pytest.approx(1.0)
    assert set(rows[0]) >= {"space", "label", "artist_filter", "k", "precision", "map", "chance", "tracks"}


def _spectrograms(genres: list[str], seed: int = 0) -> np.ndarray:
    """uint8 spectrograms as stored: techno loud in the low bands, ambient in the high ones."""
    rng = np.random.default_rng(seed)
    mels = np.arange(128)[:, None]
    out = []
    for genre in genres:
        centre = 20 if genre == "techno" else 100
        shape = -60.0 * np.abs(mels - centre) / 128  # dB below the peak
        gain = 10.0 * rng.standard_normal((1, 512))  # loudness over time
        db = np.clip(shape + gain + 3.0 * rng.standard_normal((128, 512)), -80.0, 0.0)
        out.append(np.round(255 * (db + 80) / 80).astype(np.uint8))
    return np.stack(out)


def test_mfcc_statistics_separate_two_spectral_shapes(tmp_path):
    genres = ["techno", "ambient"] * 8
    shard = tmp_path / "shard.npy"
    np.save(shard, _spectrograms(genres))
    manifest = pl.DataFrame({"track_id": [f"t{i}" for i in range(16)], "shard": [str(shard)] * 16,
                             "row": list(range(16))})
    features = mfcc_statistics(read_spectrograms(manifest))
    assert features.shape == (16, MFCC_DIM) and MFCC_DIM == 230
    assert np.isfinite(features).all()
    standardised = standardise_columns(features)
    assert np.allclose(standardised.mean(axis=0), 0, atol=1e-9)
    result = ranking_metrics(standardised, genres, k=5)
    assert result["precision"] == 1.0 and result["map"] == pytest.approx(1.0)


def _library(tmp_path) -> tuple[Store, list[str]]:
    """A real DuckDB file: tracks, a current model, vectors and one spectrogram shard."""
    store = Store(tmp_path / "sonufy.duckdb")
    rows = []
    for g, genre in enumerate(GENRES):
        for a in range(ARTISTS_PER_GENRE):
            for t in range(TRACKS_PER_ARTIST):
                rows.append((f"{genre[:2]}{a}{t}", genre, f"{genre} artist {a}"))
    ids = [r[0] for r in rows]
    n = len(ids)
    store.upsert_tracks(pl.DataFrame({
        "track_id": ids, "source": ["spotify"] * n, "title": [f"title {i}" for i in ids],
        "artist": [r[2] for r in rows], "artists": [[r[2]] for r in rows], "artist_id": [r[2] for r in rows],
        "album": [f"album of {r[2]}" for r in rows], "album_id": [f"al-{r[2]}" for r in rows],
        "release_date": ["2020-01-01"] * n, "duration_ms": [200_000] * n, "isrc": [f"QZ{i}" for i in ids],
        "explicit": [False] * n, "popularity": [None] * n, "uri": [f"spotify:track:{i}" for i in ids],
        "preview_url": [None] * n, "path": [None] * n, "found_by": [f'genre:"{r[1]}"' for r in rows],
    }))
    store.register_spectrogram_set("set1", {"n_mels": 128})
    shard = tmp_path / "shard-0.npy"
    np.save(shard, _spectrograms([r[1] for r in rows], seed=5))
    store.record_spectrograms(
        pl.DataFrame({"track_id": ids, "excerpt": [0] * n, "set_id": ["set1"] * n,
                      "shard": [str(shard)] * n, "row": list(range(n))},
                     schema={"track_id": pl.String, "excerpt": pl.Int32, "set_id": pl.String,
                             "shard": pl.String, "row": pl.Int32}),
        pl.DataFrame(schema={"track_id": pl.String, "stage": pl.String, "reason": pl.String, "run_id": pl.String}),
    )
    store.register_model({
        "model_version": "m1", "set_id": "set1", "config": {}, "checkpoint": "c.ckpt", "epochs": 1,
        "train_mse": 0.1, "val_mse": 0.1, "n_train_tracks": n, "n_val_tracks": 0, "train_seconds": 1.0,
        "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM),
    })
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((len(GENRES), LATENT_DIM))
    vectors = np.stack([centres[GENRES.index(r[1])] for r in rows]) + 0.1 * rng.standard_normal((n, LATENT_DIM))
    series = pl.Series(vectors.astype(np.float32), dtype=pl.Array(pl.Float32, LATENT_DIM))
    store.record_embeddings(pl.DataFrame({"track_id": ids, "model_version": ["m1"] * n}).with_columns(
        series.alias("raw"), series.alias("vector")))
    store.promote("m1")
    return store, ids


def test_evaluation_is_stored_next_to_the_model_and_rereadable(tmp_path):
    store, ids = _library(tmp_path)
    result = evaluate_store(store, ["genre", "artist", "album"], k=5)
    assert result["model_version"] == "m1" and result["tracks"] == len(ids)
    by_key = {(r["space"], r["label"], r["artist_filter"]): r for r in result["rows"]}
    assert by_key[("latent", "genre", False)]["precision"] == 1.0
    assert by_key[("latent", "genre", True)]["precision"] == 1.0
    assert by_key[("mfcc", "genre", True)]["precision"] == 1.0
    assert by_key[("random", "genre", False)]["precision"] < 0.8
    assert ("latent", "artist", True) not in by_key  # every same-artist hit is filtered out
    assert by_key[("latent", "album", False)]["chance"] == pytest.approx(3 / 23)

    stored = Store(store.path).evaluations()
    assert stored.height == len(result["rows"])
    assert set(stored["model_version"]) == {"m1"} and set(stored["space"]) == {"latent", "mfcc", "random"}
    con = duckdb.connect(str(store.path), read_only=True)
    try:
        [(precision, tracks, runs)] = con.execute(
            "SELECT precision, tracks, count(DISTINCT evaluated_at) OVER () FROM evaluations "
            "WHERE space = 'latent' AND label = 'genre' AND NOT artist_filter"
        ).fetchall()
    finally:
        con.close()
    assert (precision, tracks, runs) == (1.0, len(ids), 1)


def test_cli_prints_json_and_takes_csv_labels(tmp_path, capsys):
    store, ids = _library(tmp_path)
    labels = tmp_path / "moods.csv"
    moods = ["dark" if i.startswith("te") else "calm" for i in ids]
    pl.DataFrame({"track_id": ids + ["unknown"], "mood": moods + ["x"]}).write_csv(labels)
    code = cli(["evaluate", "--db", str(store.path), "--label", f"csv:{labels}:mood", "-k", "5",
                "--no-artist-filter", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert {(r["space"], r["label"], r["artist_filter"]) for r in result["rows"]} == {
        ("latent", "csv:mood", False), ("mfcc", "csv:mood", False), ("random", "csv:mood", False)}
    assert cli(["evaluate", "--db", str(store.path), "-k", "5"]) == 0
    table = capsys.readouterr().out
    assert "latent" in table and "mfcc" in table and "random" in table
    assert Store(store.path).evaluations().height == 3 + 9  # two runs, both recorded


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--db", "{tmp}/missing.duckdb"], "missing.duckdb"),
        (["--label", "mood"], "'mood'"),
        (["--label", "csv:{tmp}/nope.csv:mood"], "nope.csv"),
        (["--label", "csv:{tmp}/moods.csv:style"], "'style'"),
    ],
)
def test_cli_bad_inputs_exit_2_naming_them(tmp_path, capsys, arguments, named):
    store, ids = _library(tmp_path)
    pl.DataFrame({"track_id": ids, "mood": ["m"] * len(ids)}).write_csv(tmp_path / "moods.csv")
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    if "--db" not in arguments:
        arguments += ["--db", str(store.path)]
    assert cli(["evaluate", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sonufy evaluate: error:") and named in error
