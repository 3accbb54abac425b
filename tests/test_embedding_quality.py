"""The embedding suite's identical-vector rule: two tracks may share a vector
only if their audio is identical; what encoding gives the suite and the
store (sonufy_model.encoding), and the standardiser's fit on a sample."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from sonufy_model import quality
from sonufy_model.encoding import audio_digests, identical_vector_clashes
from sonufy_model.store import LATENT_DIM, Store


def _spectrograms(seeds: list[int]) -> np.ndarray:
    return np.stack([np.random.default_rng(s).integers(0, 256, (8, 16), dtype=np.uint8) for s in seeds])


def test_same_vector_with_different_audio_clashes_and_identical_audio_does_not():
    ids = ["a", "b", "c", "d"]
    # a and b: different audio; c and d: the same audio (a re-release).
    digests = audio_digests(pl.Series(ids), _spectrograms([1, 2, 3, 3]))
    assert digests["c"] == digests["d"] != digests["a"] != digests["b"]
    one, two = np.ones(LATENT_DIM, np.float32), np.full(LATENT_DIM, 2, np.float32)
    raw = np.stack([one, one, two, two])
    assert identical_vector_clashes(ids, raw, digests) == {"b": "a"}

    # Against stored vectors: a stored track with other audio clashes, one with the same does not.
    stored = {"s1": digests["a"], "s2": "something else"}
    clashes = identical_vector_clashes(["a"], raw[:1], {"a": digests["a"]}, [("a", "s1"), ("a", "s2")], stored)
    assert clashes == {"a": "s2"}


def test_a_track_with_several_excerpts_is_digested_over_all_of_them():
    one = audio_digests(pl.Series(["t", "t"]), _spectrograms([1, 2]))
    other = audio_digests(pl.Series(["t", "t"]), _spectrograms([1, 3]))
    assert one["t"] != other["t"]


def test_the_suite_quarantines_a_clash_and_names_the_other_track():
    stats = pl.DataFrame({
        "track_id": ["a", "b"], "length": [LATENT_DIM] * 2, "non_finite": [0, 0], "norm": [1.0, 1.0],
        "identical_vector_of": [None, "a"],
    }, schema_overrides={"identical_vector_of": pl.String})
    report = quality.check_embeddings(stats, LATENT_DIM)
    assert report.failures["track_id"].to_list() == ["b"]
    reason = report.failures["reason"][0]
    assert "identical_vector_of" in reason and "same vector as a, different audio" in reason


def test_the_store_finds_stored_tracks_with_an_identical_vector(tmp_path, track_frame, register_model,
                                                                 embed_vectors):
    store = Store(tmp_path / "s.duckdb")
    store.upsert_tracks(track_frame(["x", "y"]))
    register_model(store, "m1", "set1")
    rng = np.random.default_rng(0)
    stored = {"x": rng.standard_normal(LATENT_DIM), "y": rng.standard_normal(LATENT_DIM)}
    embed_vectors(store, "m1", stored)
    batch = np.stack([stored["x"], rng.standard_normal(LATENT_DIM)]).astype(np.float32)
    assert store.stored_identical_vectors("m1", pl.Series(["new", "other"]), batch) == [("new", "x")]
    # A track is never its own clash, and another version's vectors are not compared.
    assert store.stored_identical_vectors("m1", pl.Series(["x"]), batch[:1]) == []
    assert store.stored_identical_vectors("m2", pl.Series(["new"]), batch[:1]) == []


def test_suites_checked_at_once_in_threads_each_judge_their_own_batch():
    """Batches in flight are checked in threads: each report must be its own
    batch's, never a failure of the shared Great Expectations context."""
    from concurrent.futures import ThreadPoolExecutor

    from sonufy_model.audio import MelParams

    params = MelParams()

    def check(number: int):
        ids = [f"b{number}-{i}" for i in range(20)]
        stats = pl.DataFrame({
            "track_id": ids, "n_mels": [params.n_mels] * 20, "n_frames": [params.n_frames] * 20,
            "min_value": [0.0] * 20, "max_value": [1.0] * 20, "non_finite": [0] * 20,
            "silent_share": [0.0] * 20, "duration_s": [30.0] * 19 + [1.0],  # the last one too short
        })
        return quality.check_spectrograms(stats, params).failures["track_id"].to_list()

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(check, range(24))) == [[f"b{n}-19"] for n in range(24)]


def test_embedding_stats_feed_the_suite_and_only_passing_tracks_become_rows():
    from sonufy_model.encoding import embedding_rows, embedding_stats

    track_ids = pl.Series(["a", "b", "c"])
    raw = np.ones((3, LATENT_DIM), np.float32)
    vectors = np.stack([np.full(LATENT_DIM, 0.5, np.float32), np.full(LATENT_DIM, 2.0, np.float32),
                        np.full(LATENT_DIM, 3.0, np.float32)])
    vectors[1, :3] = np.nan
    stats = embedding_stats(track_ids, vectors, {"c": "a"})
    assert stats["length"].to_list() == [LATENT_DIM] * 3
    assert stats["non_finite"].to_list() == [0, 3, 0]
    assert stats["norm"].to_list() == pytest.approx([0.5 * 16, np.sqrt((LATENT_DIM - 3) * 4.0), 3.0 * 16])
    assert stats["identical_vector_of"].to_list() == [None, None, "a"]
    report = quality.check_embeddings(stats, LATENT_DIM)
    failed = set(report.failures["track_id"].to_list())
    assert failed == {"b", "c"}

    rows = embedding_rows(track_ids, "m1", raw, vectors, failed)
    assert rows["track_id"].to_list() == ["a"] and rows["model_version"].to_list() == ["m1"]
    assert rows.schema["vector"] == pl.Array(pl.Float32, LATENT_DIM)
    assert np.array_equal(rows["raw"].to_numpy(), raw[:1]) and np.array_equal(rows["vector"].to_numpy(), vectors[:1])
    assert embedding_rows(track_ids, "m1", raw, vectors)["track_id"].to_list() == ["a", "b", "c"]


def test_the_standardiser_is_fitted_on_a_sample_of_tracks_each_the_mean_of_its_excerpts(tmp_path):
    import torch

    from sonufy_model.encoding import encode_spectrograms, fit_vector_space, standardiser_sample
    from sonufy_model.model import TimeFreqAutoencoder

    # Two excerpts a track: a sample keeps both, every k-th track.
    manifest = pl.DataFrame({"track_id": [f"t{i // 2}" for i in range(20)], "row": list(range(20))})
    assert standardiser_sample(manifest, 10).equals(manifest)
    assert standardiser_sample(manifest, 19).equals(manifest)
    assert standardiser_sample(manifest, 5)["track_id"].to_list() == ["t0", "t0", "t2", "t2", "t4", "t4",
                                                                     "t6", "t6", "t8", "t8"]
    assert standardiser_sample(manifest, 3)["track_id"].unique(maintain_order=True).to_list() == ["t0", "t3", "t6",
                                                                                                   "t9"]

    spectrograms = np.random.default_rng(0).integers(0, 256, (8, 16, 64), dtype=np.uint8)
    shard = tmp_path / "shard.npy"
    np.save(shard, spectrograms)
    manifest = pl.DataFrame({"track_id": [f"t{i // 2}" for i in range(8)], "shard": [str(shard)] * 8,
                             "row": list(range(8))})
    torch.manual_seed(0)
    model = TimeFreqAutoencoder(n_mels=16, tile_frames=32, filters=(4, 8), encode_tiles=2).eval()
    fitted, fusion = fit_vector_space(model, manifest, "none", n_tracks=2)
    assert fusion is None
    per_clip = encode_spectrograms(model, spectrograms)
    sampled = np.stack([per_clip[0:2].mean(axis=0), per_clip[4:6].mean(axis=0)])  # tracks t0 and t2
    assert fitted.mean == pytest.approx(sampled.mean(axis=0), abs=1e-6)
    spread = sampled.astype(np.float64).std(axis=0)
    assert fitted.scale == pytest.approx(np.where(spread < 1e-6, 1.0, spread), rel=1e-3)
