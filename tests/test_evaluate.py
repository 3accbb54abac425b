"""`sonufy evaluate`: precision@k, MAP and chance, baselines, storage, command line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from flows.cli import main as cli
from sonufy_model.evaluate import (
    MFCC_DIM,
    EvaluationInputError,
    _random_ap,
    bootstrap_interval,
    evaluate_spaces,
    evaluate_store,
    folder_labels,
    latent_score,
    logmel_statistics,
    mfcc_statistics,
    paired_difference,
    random_vectors,
    ranking_metrics,
    row_key,
    should_promote,
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
        {None: None, "artist": list(artists)}, k=3,
    )
    keys = {(r["space"], r["label"], r["artist_filter"]) for r in rows}
    assert ("latent", "genre", True) in keys and ("random", "artist", False) in keys
    assert ("latent", "artist", True) not in keys  # nothing left to find
    assert any(note.startswith("artist, same artist excluded") for note in notes)
    latent_genre = next(r for r in rows if r["space"] == "latent" and r["label"] == "genre")
    assert latent_genre["precision"] == 1.0 and latent_genre["map"] == pytest.approx(1.0)
    assert latent_genre["precision_low"] == latent_genre["precision_high"] == 1.0
    assert set(rows[0]) >= {"space", "label", "exclude_same", "artist_filter", "k", "precision", "precision_low",
                            "precision_high", "map", "map_low", "map_high", "chance", "tracks"}
    assert {r["exclude_same"] for r in rows} == {None, "artist"}


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
    for genre in GENRES:
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
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((len(GENRES), LATENT_DIM))
    vectors = np.stack([centres[GENRES.index(r[1])] for r in rows]) + 0.1 * rng.standard_normal((n, LATENT_DIM))
    _add_model(store, tmp_path, ids, [r[1] for r in rows], vectors)
    return store, ids


def _record_spectrograms(store: Store, tmp_path, ids: list[str], genres: list[str], seed: int = 5) -> None:
    n = len(ids)
    shard = tmp_path / "shard-0.npy"
    np.save(shard, _spectrograms(genres, seed=seed))
    store.record_spectrograms(
        pl.DataFrame({"track_id": ids, "excerpt": [0] * n, "set_id": ["set1"] * n,
                      "shard": [str(shard)] * n, "row": list(range(n))},
                     schema={"track_id": pl.String, "excerpt": pl.Int32, "set_id": pl.String,
                             "shard": pl.String, "row": pl.Int32}),
        pl.DataFrame(schema={"track_id": pl.String, "stage": pl.String, "reason": pl.String, "run_id": pl.String}),
    )


def _add_model(store: Store, tmp_path, ids: list[str], genres: list[str], vectors: np.ndarray,
               version: str = "m1") -> None:
    """Spectrograms (techno or ambient shapes per ``genres``), a current model and its vectors."""
    n = len(ids)
    store.register_spectrogram_set("set1", {"n_mels": 128})
    _record_spectrograms(store, tmp_path, ids, genres)
    store.register_model({
        "model_version": version, "set_id": "set1", "config": {}, "checkpoint": "c.ckpt", "epochs": 1,
        "train_mse": 0.1, "val_mse": 0.1, "n_train_tracks": n, "n_val_tracks": 0, "train_seconds": 1.0,
        "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM),
    })
    series = pl.Series(np.asarray(vectors, dtype=np.float32), dtype=pl.Array(pl.Float32, LATENT_DIM))
    store.record_embeddings(pl.DataFrame({"track_id": ids, "model_version": [version] * n}).with_columns(
        series.alias("raw"), series.alias("vector")))
    store.promote(version)


def test_evaluation_is_stored_next_to_the_model_and_rereadable(tmp_path):
    store, ids = _library(tmp_path)
    result = evaluate_store(store, ["genre", "artist", "album"], k=5)
    assert result["model_version"] == "m1" and result["tracks"] == len(ids)
    by_key = {(r["space"], r["label"], r["artist_filter"]): r for r in result["rows"]}
    assert by_key[("latent", "genre", False)]["precision"] == 1.0
    assert by_key[("latent", "genre", True)]["precision"] == 1.0
    assert by_key[("mfcc", "genre", True)]["precision"] == 1.0
    assert by_key[("naive", "genre", True)]["precision"] == 1.0
    assert by_key[("random", "genre", False)]["precision"] < 0.8
    assert ("latent", "artist", True) not in by_key  # every same-artist hit is filtered out
    assert by_key[("latent", "album", False)]["chance"] == pytest.approx(3 / 23)

    stored = Store(store.path).evaluations()
    assert stored.height == len(result["rows"])
    assert set(stored["model_version"]) == {"m1"} and set(stored["space"]) == {"latent", "naive", "mfcc", "random"}
    assert (stored["precision_low"] <= stored["precision"]).all()
    assert (stored["precision"] <= stored["precision_high"]).all()
    assert set(stored["exclude_same"].to_list()) == {None, "artist"}
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
        ("latent", "csv:mood", False), ("naive", "csv:mood", False), ("mfcc", "csv:mood", False),
        ("random", "csv:mood", False)}
    assert all(r["precision_low"] <= r["precision"] <= r["precision_high"] for r in result["rows"])
    assert cli(["evaluate", "--db", str(store.path), "-k", "5"]) == 0
    table = capsys.readouterr().out
    assert "latent" in table and "naive" in table and "mfcc" in table and "random" in table
    assert "1.000 [1.00, 1.00]" in table  # the latent genre row, with its interval
    assert Store(store.path).evaluations().height == 4 + 12  # two runs, both recorded


def test_evaluate_with_hub_reduction_scores_the_latent_space_both_ways(tmp_path, capsys):
    store, ids = _library(tmp_path)
    assert cli(["evaluate", "--db", str(store.path), "-k", "5", "--hub-reduction", "--no-artist-filter"]) == 0
    out = capsys.readouterr().out
    assert "latent+mp" in out
    for space in ("latent", "latent+mp"):
        assert f"hubness of {space}: k-occurrence skewness" in out
    rows = store.evaluations().filter(pl.col("label") == "genre")
    by_space = {row["space"]: row for row in rows.iter_rows(named=True)}
    assert set(by_space) == {"latent", "latent+mp", "naive", "mfcc", "random"}
    assert by_space["latent+mp"]["precision"] == 1.0
    assert by_space["latent+mp"]["chance"] == by_space["latent"]["chance"]


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


# -- ranking: exactness, intervals, sampled queries --------------------------------


def _reference_metrics(vectors, labels, k, groups=None):
    """The definition, one query at a time: a stable full sort of the cosines."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    labels, n = np.asarray(labels), len(vectors)
    precisions, aps = [], []
    for i in range(n):
        candidates = np.array([j for j in range(n) if j != i and (groups is None or groups[j] != groups[i])])
        relevant = labels[candidates] == labels[i]
        if len(candidates) < k or not relevant.any():
            continue
        order = np.argsort(-(unit[candidates] @ unit[i]), kind="stable")
        hits = relevant[order]
        precisions.append(hits[:k].mean())
        aps.append(np.mean(np.arange(1, hits.sum() + 1) / (np.flatnonzero(hits) + 1)))
    return float(np.mean(precisions)), float(np.mean(aps)), len(precisions)


@pytest.mark.parametrize("with_groups", [False, True])
def test_ranking_matches_the_definition_with_ties_broken_in_track_order(with_groups):
    rng = np.random.default_rng(11)
    # Four entries of ±1 per vector: unit entries ±0.5, every cosine a multiple
    # of 1/4 computed exactly in any precision and order; ties everywhere.
    prototypes = np.zeros((9, 16))
    for row in prototypes:
        row[rng.choice(16, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    vectors = prototypes[rng.integers(0, 9, size=90)]
    labels = rng.integers(0, 4, size=90)
    groups = rng.integers(0, 12, size=90) if with_groups else None
    precision, mean_ap, tracks = _reference_metrics(vectors, labels, 5, groups)
    result = ranking_metrics(vectors, labels, k=5, exclude_groups=groups, block=32)
    assert result["tracks"] == tracks
    assert result["precision"] == pytest.approx(precision, abs=1e-12)
    assert result["map"] == pytest.approx(mean_ap, abs=1e-12)


def test_intervals_contain_the_estimate_and_narrow_with_more_queries():
    rng = np.random.default_rng(12)
    labels = np.repeat(np.arange(6), 500)
    vectors = np.eye(6)[labels] * 0.6 + rng.standard_normal((3000, 6))  # a weak signal: P@10 well inside (0, 1)
    few = ranking_metrics(vectors, labels, k=10, queries=100)
    many = ranking_metrics(vectors, labels, k=10, queries=1600)
    for result in (few, many):
        assert result["precision_low"] < result["precision"] < result["precision_high"]
        assert result["map_low"] < result["map"] < result["map_high"]
    width = {name: r["precision_high"] - r["precision_low"] for name, r in (("few", few), ("many", many))}
    assert width["many"] < 0.5 * width["few"]  # 16x the queries: about a quarter of the width
    # the 1600 queries' estimate lies inside the 100 queries' interval
    assert few["precision_low"] < many["precision"] < few["precision_high"]


def test_bootstrap_interval_of_constant_values_is_the_value_and_is_seeded():
    assert bootstrap_interval(np.full(50, 0.3)) == pytest.approx((0.3, 0.3))
    values = np.random.default_rng(0).random(200)
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) != bootstrap_interval(values, seed=4)


def test_sampled_queries_keep_every_track_a_candidate():
    rng = np.random.default_rng(13)
    labels = np.repeat(np.arange(4), 100)
    vectors = rng.standard_normal((400, 8))
    sampled = ranking_metrics(vectors, labels, k=10, queries=50, per_query=True)
    assert sampled["tracks"] == 50
    assert len(set(sampled["per_query"]["query"])) == 50
    # every query's candidates are the 399 others, whatever was sampled
    assert np.allclose(sampled["per_query"]["chance"], 99 / 399)
    again = ranking_metrics(vectors, labels, k=10, queries=50, per_query=True)
    other = ranking_metrics(vectors, labels, k=10, queries=50, per_query=True, seed=1)
    assert np.array_equal(again["per_query"]["query"], sampled["per_query"]["query"])
    assert not np.array_equal(other["per_query"]["query"], sampled["per_query"]["query"])
    # the sample's values are the full run's values on those queries
    full = ranking_metrics(vectors, labels, k=10, per_query=True)
    assert full["tracks"] == 400
    index = np.searchsorted(full["per_query"]["query"], sampled["per_query"]["query"])
    assert np.allclose(full["per_query"]["precision"][index], sampled["per_query"]["precision"])
    assert ranking_metrics(vectors, labels, k=10, queries=5000)["tracks"] == 400


def test_naive_log_mel_statistics_are_band_means_and_spreads_in_db():
    spectrograms = np.zeros((3, 128, 512), dtype=np.uint8)
    spectrograms[0] = 255  # 0 dB everywhere
    spectrograms[1, :, 256:] = 255  # half the frames at -80 dB, half at 0 dB
    spectrograms[2, :64] = 255  # low bands at 0 dB, high bands at -80 dB
    features = logmel_statistics(spectrograms)
    assert features.shape == (3, 256)
    mean, std = features[:, :128], features[:, 128:]
    assert np.allclose(mean[0], 0.0) and np.allclose(std[0], 0.0)
    assert np.allclose(mean[1], -40.0) and np.allclose(std[1], 40.0)
    assert np.allclose(mean[2, :64], 0.0) and np.allclose(mean[2, 64:], -80.0) and np.allclose(std[2], 0.0)


def test_evaluate_store_samples_queries_and_caches_baselines(tmp_path, monkeypatch):
    import sonufy_model.evaluate as evaluate

    store, ids = _library(tmp_path)
    computed: list[int] = []
    compute = evaluate.baseline_features

    def counting(manifest, kinds, chunk=256):
        computed.append(manifest["track_id"].n_unique())
        return compute(manifest, kinds, chunk)

    monkeypatch.setattr(evaluate, "baseline_features", counting)
    first = evaluate_store(store, ["genre"], k=5, exclude_same=["none"], queries=10, record=False)
    assert {row["tracks"] for row in first["rows"]} == {10}
    assert computed == [len(ids)]
    second = evaluate_store(store, ["genre"], k=5, exclude_same=["none"], queries=10, record=False)
    assert computed == [len(ids)]  # every baseline from the cache
    assert [r["precision"] for r in second["rows"]] == [r["precision"] for r in first["rows"]]
    # Spectrograms made anew (a rescan) make the cached features stale.
    _record_spectrograms(store, tmp_path, ids, [("techno" if i.startswith("te") else "ambient") for i in ids],
                         seed=9)
    evaluate_store(store, ["genre"], k=5, exclude_same=["none"], record=False)
    assert computed == [len(ids), len(ids)]


# -- folder libraries: folder labels, path-keyed label files, exclude-same ---------

SOUNDTRACKS = {"Hollow Keep": "Ada", "Rust Belt": "Ada", "Glass Sea": "Ben", "Night Market": "Ben"}
CUES = 6


def _folder_library(tmp_path, structured: bool = True) -> tuple[Store, dict[str, str]]:
    """A folder source tracks/<soundtrack>/<cue>.wav, scanned as a build would,
    with vectors near their composer's centre and, tighter, their soundtrack's
    (or, unstructured, random). Returns the store and track_id → soundtrack."""
    import soundfile as sf

    from sonufy_model.folder import scan_folder

    root = tmp_path / "tracks"
    for soundtrack in SOUNDTRACKS:
        for cue in range(CUES):
            path = root / soundtrack / f"{cue:02d} cue {cue}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.zeros(2205, dtype=np.float32), 22050)
    scan = scan_folder(root)
    store = Store(tmp_path / "library.duckdb")
    store.record_scan(scan.tracks, scan.previews, scan.files, [])
    frame = scan.tracks.sort("path")
    ids = frame["track_id"].to_list()
    soundtrack = {t: Path(p).parent.name for t, p in zip(ids, frame["path"].to_list())}
    rng = np.random.default_rng(21)
    composers = sorted(set(SOUNDTRACKS.values()))
    composer_centre = {c: 2.0 * rng.standard_normal(LATENT_DIM) for c in composers}
    soundtrack_centre = {s: rng.standard_normal(LATENT_DIM) for s in SOUNDTRACKS}
    if structured:
        vectors = np.stack([composer_centre[SOUNDTRACKS[soundtrack[t]]] + soundtrack_centre[soundtrack[t]]
                            for t in ids]) + 0.05 * rng.standard_normal((len(ids), LATENT_DIM))
    else:
        vectors = rng.standard_normal((len(ids), LATENT_DIM))
    genres = ["techno" if SOUNDTRACKS[soundtrack[t]] == "Ada" else "ambient" for t in ids]
    _add_model(store, tmp_path, ids, genres, vectors)
    return store, soundtrack


def _labels_csv(tmp_path, soundtrack: dict[str, str], store: Store, absolute: bool) -> Path:
    frame = store.evaluation_space()["tracks"]
    root = tmp_path / "tracks"
    paths = [p if absolute else str(Path(p).relative_to(root)) for p in frame["path"].to_list()]
    names = [soundtrack[t] for t in frame["track_id"].to_list()]
    file = tmp_path / ("labels-absolute.csv" if absolute else "labels.csv")
    pl.DataFrame({"path": paths, "soundtrack": names, "composer": [SOUNDTRACKS[n] for n in names],
                  "seconds": [0.1] * len(paths)}).write_csv(file)
    return file


def test_folder_labels_are_folders_relative_to_the_root():
    frame = pl.DataFrame({
        "path": ["/music/Artist/Album/01 a.ogg", "/music/Loose/b.ogg", "/music/c.ogg", None, "/elsewhere/X/d.ogg"],
        "root": ["/music", "/music", "/music", None, None],
    })
    assert folder_labels(frame) == ["Artist/Album", "Loose", None, None, "/elsewhere/X"]
    assert folder_labels(frame, 2) == ["Artist", None, None, None, "/elsewhere"]


def test_folder_label_scores_the_soundtrack_of_a_folder_library(tmp_path, capsys):
    store, soundtrack = _folder_library(tmp_path)
    result = evaluate_store(store, ["folder", "folder:2"], k=5, exclude_same=["none"], record=False)
    rows = {(r["space"], r["label"]): r for r in result["rows"]}
    assert rows[("latent", "folder")]["precision"] == 1.0
    assert rows[("latent", "folder")]["chance"] == pytest.approx((CUES - 1) / (len(soundtrack) - 1))
    assert rows[("random", "folder")]["precision"] < 0.6
    assert rows[("latent", "folder")]["tracks"] == len(soundtrack)
    assert any(note.startswith("folder:2: fewer than 2 tracks") for note in result["notes"])  # the root itself
    assert cli(["evaluate", "--db", str(store.path), "--label", "folder", "-k", "5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # A folder's files have the folder as artist (no tags): the artist filter leaves nothing.
    assert {(r["label"], r["exclude_same"]) for r in printed["rows"]} == {("folder", None)}
    assert any(note.startswith("folder, same artist excluded") for note in printed["notes"])


@pytest.mark.parametrize("absolute", [False, True])
def test_label_files_keyed_by_path_match_the_folder_labels(tmp_path, absolute):
    store, soundtrack = _folder_library(tmp_path)
    labels = _labels_csv(tmp_path, soundtrack, store, absolute)
    result = evaluate_store(store, ["folder", f"csv:{labels}:soundtrack"], k=5, exclude_same=["none"],
                            record=False)
    by_label: dict[str, dict] = {}
    for row in result["rows"]:
        by_label.setdefault(row["label"], {})[row["space"]] = row
    assert set(by_label) == {"folder", "csv:soundtrack"}
    for space in ("latent", "naive", "mfcc", "random"):
        folder, csv = by_label["folder"][space], by_label["csv:soundtrack"][space]
        assert (csv["precision"], csv["map"], csv["tracks"]) == (folder["precision"], folder["map"],
                                                                 folder["tracks"])


def test_a_label_file_whose_paths_match_no_track_is_an_error_naming_it(tmp_path, capsys):
    store, soundtrack = _folder_library(tmp_path)
    wrong = tmp_path / "other-corpus.csv"
    pl.DataFrame({"path": ["Somewhere/else.ogg", "/not/here.ogg"], "composer": ["A", "B"]}).write_csv(wrong)
    with pytest.raises(EvaluationInputError, match="other-corpus.csv"):
        evaluate_store(store, [f"csv:{wrong}:composer"], k=5, record=False)
    assert cli(["evaluate", "--db", str(store.path), "--label", f"csv:{wrong}:composer"]) == 2
    error = capsys.readouterr().err
    assert "other-corpus.csv" in error and "none of the 2 paths" in error and str(tmp_path / "tracks") in error
    no_key = tmp_path / "no-key.csv"
    pl.DataFrame({"file": ["a.ogg"], "composer": ["A"]}).write_csv(no_key)
    with pytest.raises(EvaluationInputError, match="'track_id' or 'path'"):
        evaluate_store(store, [f"csv:{no_key}:composer"], k=5, record=False)


def test_exclude_same_folder_scores_composer_across_soundtracks(tmp_path):
    store, soundtrack = _folder_library(tmp_path)
    labels = _labels_csv(tmp_path, soundtrack, store, absolute=False)
    n = len(soundtrack)
    result = evaluate_store(store, [f"csv:{labels}:composer"], k=5,
                            exclude_same=["none", "folder", f"csv:{labels}:soundtrack"], record=False)
    rows = {(r["space"], r["exclude_same"]): r for r in result["rows"]}
    # Without exclusion the composer's other 11 tracks among 23; with it, the
    # other soundtrack's 6 among the 18 tracks of the other soundtracks.
    assert rows[("latent", None)]["chance"] == pytest.approx((2 * CUES - 1) / (n - 1))
    assert rows[("latent", "folder")]["chance"] == pytest.approx(CUES / (n - CUES))
    assert rows[("latent", "folder")]["precision"] == 1.0  # the same composer's other soundtrack is nearest
    assert rows[("latent", "folder")]["artist_filter"] is False
    for space in ("latent", "naive", "mfcc", "random"):  # the folder and the soundtrack column agree
        assert rows[(space, "folder")]["precision"] == rows[(space, "csv:soundtrack")]["precision"]
    # The same without structure: only the soundtrack cluster was helping, not the composer.
    store, soundtrack = _folder_library(tmp_path / "random", structured=False)
    labels = _labels_csv(tmp_path / "random", soundtrack, store, absolute=False)
    result = evaluate_store(store, [f"csv:{labels}:composer"], k=5, exclude_same=["folder"], record=False)
    latent = next(r for r in result["rows"] if r["space"] == "latent")
    assert latent["precision"] < 0.7


def test_cli_exclude_same_and_artist_filter_aliases(tmp_path, capsys):
    store, soundtrack = _folder_library(tmp_path)
    labels = _labels_csv(tmp_path, soundtrack, store, absolute=True)
    assert cli(["evaluate", "--db", str(store.path), "--label", f"csv:{labels}:composer", "--exclude-same",
                "folder", "--no-artist-filter", "-k", "5", "--queries", "12", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {(r["exclude_same"], r["tracks"]) for r in rows} == {("folder", 12), (None, 12)}
    assert all(r["precision_low"] <= r["precision"] <= r["precision_high"] for r in rows)
    assert cli(["evaluate", "--db", str(store.path), "--label", "folder", "--artist-filter", "-k", "5",
                "--json"]) == 2  # the folder's artist is the folder: nothing left to score
    assert "folder, same artist excluded: no track has 5 candidate neighbours" in capsys.readouterr().err
    assert cli(["evaluate", "--db", str(store.path), "--exclude-same", "folder:0"]) == 2
    assert "--exclude-same 'folder:0'" in capsys.readouterr().err


def test_unlabelled_tracks_are_candidates_that_never_match_and_min_label_tracks():
    rng = np.random.default_rng(14)
    labels = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + [None] * 10
    vectors = rng.standard_normal((20, 8))
    result = ranking_metrics(vectors, labels, k=3, per_query=True)
    assert result["tracks"] == 10  # the labelled ones
    expected = {4 / 19, 2 / 19, 1 / 19}  # every other track is a candidate, unlabelled ones included
    assert set(np.round(result["per_query"]["chance"], 12)) == set(np.round(list(expected), 12))
    assert ranking_metrics(vectors, labels, k=3, min_label_tracks=3)["tracks"] == 8  # "c" has only 2
    assert ranking_metrics(vectors, labels, k=3, min_label_tracks=4)["tracks"] == 5


def test_quality_bench_reuses_a_folder_library_and_ends_with_json(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_bench", Path(__file__).parents[1] / "bench" / "quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    store, soundtrack = _folder_library(tmp_path)
    labels = _labels_csv(tmp_path, soundtrack, store, absolute=False)
    assert bench.label_columns(str(labels)) == ["soundtrack", "composer"]
    assert bench.main(["--folder", str(tmp_path / "tracks"), "--labels", str(labels), "--db", str(store.path),
                       "-k", "5", "--exclude-same", "folder"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["bench"] == "quality" and figures["corpus"] == tmp_path.name and figures["tracks"] == 24
    assert figures["build_s"] is None  # reused
    assert set(figures["sonufy_p5"]) == {"soundtrack", "composer", "soundtrack (same folder excluded)",
                                         "composer (same folder excluded)"} - {"soundtrack (same folder excluded)"}
    sonufy, naive, mfcc = figures["sonufy_p5"], figures["naive_p5"], figures["mfcc_p5"]
    assert sonufy["soundtrack"] == {"p": 1.0, "low": 1.0, "high": 1.0}
    assert sonufy["composer (same folder excluded)"]["p"] == 1.0
    for system in (sonufy, naive, mfcc):
        for figure in system.values():
            assert figure["low"] <= figure["p"] <= figure["high"]
    best = max(naive["soundtrack"]["p"], mfcc["soundtrack"]["p"])
    assert figures["ratio_to_best_baseline"]["soundtrack"] == pytest.approx(1.0 / best, abs=1e-3)
    assert any(line.startswith("soundtrack") and "[" in line for line in lines)


def _latent_rows(per_label: dict, space: str = "latent") -> dict:
    """An evaluation with one row per (label, artist filter): its per-query precision on tracks q0, q1..."""
    rows = []
    for (label, artist_filter), precision in per_label.items():
        precision = np.asarray(precision, dtype=float)
        rows.append({"space": space, "label": label, "artist_filter": artist_filter, "precision": precision.mean(),
                     "per_query": {"track_id": [f"q{i}" for i in range(len(precision))], "precision": precision}})
    return {"rows": rows}


def test_paired_difference_pairs_rows_and_queries_and_brackets_the_mean_difference():
    rng = np.random.default_rng(0)
    current = rng.uniform(0.2, 0.6, 200)
    before = _latent_rows({("genre", False): current, ("genre", True): current[:150]})
    after = _latent_rows({("genre", False): current + 0.1, ("genre", True): current[:150] + 0.1,
                          ("album", False): current})  # a row the current version has not: not paired
    assert latent_score(after) == pytest.approx((current.mean() * 2 + 0.2 + current[:150].mean()) / 3)
    assert latent_score(before) == pytest.approx((current.mean() + current[:150].mean()) / 2)
    assert latent_score(None) is None and latent_score({"rows": [{"space": "random", "precision": 1.0}]}) is None
    assert row_key({"label": "genre", "artist_filter": True}) == ("genre", "artist")
    assert row_key({"label": "genre", "exclude_same": "album", "artist_filter": True}) == ("genre", "album")

    paired = paired_difference(after, before)
    assert paired["rows"] == 2 and paired["queries"] == 200
    assert paired["difference"] == pytest.approx(0.1)
    assert paired["low"] == pytest.approx(0.1) and paired["high"] == pytest.approx(0.1), "the same shift on every query"

    noisy = _latent_rows({("genre", False): current + rng.normal(0.0, 0.2, 200)})
    paired = paired_difference(noisy, before)
    assert paired["rows"] == 1 and paired["low"] < paired["difference"] < paired["high"]
    assert paired_difference(noisy, before, seed=1)["difference"] == paired["difference"]
    # Nothing in common: no row, or no query track, both scored.
    assert paired_difference(_latent_rows({("mood", False): current}), before) is None
    assert paired_difference(_latent_rows({("genre", False): current}, space="mfcc"), before) is None


def _evaluation(precision_by_label: dict[str, np.ndarray], version: str = "v") -> dict:
    """An evaluate_version result: latent rows with per-query precision on tracks q0, q1, ..."""
    rows = []
    for label, precision in precision_by_label.items():
        precision = np.asarray(precision, dtype=float)
        rows.append({"space": "latent", "label": label, "exclude_same": None, "artist_filter": False,
                     "precision": float(precision.mean()),
                     "per_query": {"track_id": [f"q{i}" for i in range(len(precision))],
                                   "precision": precision, "ap": precision}})
        rows.append({**rows[-1], "space": "random", "precision": 0.0})  # never decides
    return {"model_version": version, "rows": rows}


def test_should_promote_unless_worse_beyond_the_paired_interval():
    rng = np.random.default_rng(0)
    current = rng.integers(0, 11, size=400) / 10  # per-query precision@10 of the current version
    same = _evaluation({"genre": current})
    # Equal on every query: the interval is [0, 0], not below zero.
    promoted, reason = should_promote(same, same, 0.0, 10)
    assert promoted and "+0.0000 [+0.0000, +0.0000]" in reason and "not worse" in reason
    # Worse by 0.1 on every query: the whole interval is below zero.
    promoted, reason = should_promote(_evaluation({"genre": current - 0.1}), same, 0.0, 10)
    assert not promoted and "-0.1000 [-0.1000, -0.1000]" in reason and "worse" in reason
    # Worse on average, but by less than the queries' noise: paired noise of ±0.3 per query.
    noisy = current + rng.choice([-0.3, 0.3], size=400) - 0.01
    promoted, reason = should_promote(_evaluation({"genre": noisy}), same, 0.0, 10)
    assert noisy.mean() < current.mean() and promoted, reason
    # Clearly worse on one label of two: the mean over rows still shows it.
    mixed = _evaluation({"genre": current, "artist": current - 0.2})
    both = _evaluation({"genre": current, "artist": current})
    promoted, reason = should_promote(mixed, both, 0.0, 10)
    assert not promoted and "-0.1000" in reason and "2 rows" in reason
    # A tolerance: worse only when the whole interval is below minus it.
    assert should_promote(_evaluation({"genre": current - 0.1}), same, 0.2, 10)[0]
    assert not should_promote(_evaluation({"genre": current - 0.3}), same, 0.2, 10)[0]
    # Paired on the queries both scored.
    shifted = {"model_version": "c", "rows": [dict(same["rows"][0], per_query={
        "track_id": [f"q{i}" for i in range(200, 600)], "precision": np.zeros(400), "ap": np.zeros(400)})]}
    promoted, reason = should_promote(shifted, same, 0.0, 10)
    assert "over 200 queries" in reason
    assert should_promote(same, None, 0.0, 10) == (True, "no current version to compare with")
    assert not should_promote(None, same, 0.0, 10)[0]
    assert not should_promote({"model_version": "c", "rows": []}, same, 0.0, 10)[0]
