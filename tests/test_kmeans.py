"""The one k-means (sonufy_model/kmeans.py): spherical, for the search index and the landscape."""

import numpy as np
import pytest

from sonufy_model.kmeans import nearest_centroids, spherical_kmeans


def _blobs(k: int, per: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, 32)) * 4
    truth = np.repeat(np.arange(k), per)
    points = centres[truth] + rng.standard_normal((k * per, 32))
    return points / np.linalg.norm(points, axis=1, keepdims=True), truth


@pytest.mark.parametrize("init, restarts", [("random", 1), ("k-means++", 1), ("k-means++", 2)])
def test_unit_centroids_that_find_the_blobs(init, restarts):
    units, truth = _blobs(5, 40)
    centroids = spherical_kmeans(units, 5, iterations=30, init=init, restarts=restarts, seed=1)
    assert centroids.shape == (5, 32) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, rtol=1e-5)
    labels = nearest_centroids(units, centroids)
    if init == "k-means++":  # random starts may put two in one blob; k-means++ does not here
        # one label per blob, a different one for each
        assert all(len(set(labels[truth == b])) == 1 for b in range(5)) and len(set(labels)) == 5


def test_same_seed_same_centroids_and_a_sample():
    units, _ = _blobs(8, 50)
    first = spherical_kmeans(units, 8, sample=100, seed=3)
    np.testing.assert_array_equal(first, spherical_kmeans(units, 8, sample=100, seed=3))
    with pytest.raises(ValueError, match="init"):
        spherical_kmeans(units, 8, init="kmeans++")
