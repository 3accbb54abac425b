"""How fast is the sonic landscape? UMAP fit, transform, and the PNG.

On clustered synthetic 256-d latents (200 centres of unequal size, like a
catalog's styles), with the default track settings (n_neighbors about sqrt(N) within 10..500, min_dist 0.1,
cosine, random_state 42, which makes UMAP single-threaded):

- fit time and peak RSS at each of ``--sizes`` (default 10,000 and 50,000),
  and how fit time grows with N: the exponent b of t ~ N^b from the two
  largest sizes, and their ratio (the smaller size is the baseline);
- transform time for ``--new`` (default 1,000) new tracks with the largest fit;
- the PNG (datashader, 1600 x 1200) at ``--render-points`` (default 300,000).

numba compiles on first use, so a 1,000-track fit and transform, and a render
of half the points, run first, untimed (their time is printed as warm-up).
peak_rss_mb is the process's high-water mark after the fits and the
transform (ru_maxrss), before any rendering.

    .venv/bin/python bench/landscape.py [--sizes 10000 50000] [--new 1000] [--render-points 300000]

Last line: {"bench": "landscape", "fit_s_10k", "fit_s_50k", "transform_s_1k",
"png_s_300k", "peak_rss_mb"} (named for the default sizes).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from sonufy_model import landscape as ls


def clustered_latents(n: int, seed: int, dim: int = 256, centres: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """n vectors around ``centres`` centres of Zipf-like sizes; the centre of each."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim)).astype(np.float32) * 2.0
    weights = 1.0 / np.arange(1, centres + 1) ** 0.8
    which = rng.choice(centres, size=n, p=weights / weights.sum())
    return (means[which] + rng.normal(size=(n, dim)).astype(np.float32)), which


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--render-points", type=int, default=300_000)
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes)
    params = ls.TRACK_PARAMS
    print(f"UMAP {params}; clustered synthetic latents, 256-d, 200 centres")

    # warm-up: numba compiles UMAP's, pynndescent's and datashader's kernels
    warm, _ = clustered_latents(1_000, seed=99)
    (fitted, _), t_fit = timed(ls.fit_umap, warm, params)
    _, t_tr = timed(fitted.transform, warm[:50] + 0.1)
    print(f"warm-up (compilation): fit 1k {t_fit:.1f} s, transform {t_tr:.1f} s")

    fits: dict[int, float] = {}
    rss: dict[int, float] = {}
    largest = None
    for n in sizes:
        vectors, _ = clustered_latents(n, seed=n)
        (fitted, points), fits[n] = timed(ls.fit_umap, vectors, params)
        rss[n] = peak_rss_mb()
        size_mb = fitted.save(Path(tempfile.mkdtemp()) / "umap.joblib").stat().st_size / 1e6
        print(f"fit {n:>7,} tracks: {fits[n]:7.1f} s  (n_neighbors {fitted.used.n_neighbors}), "
              f"peak RSS so far {rss[n]:,.0f} MB, saved model {size_mb:,.0f} MB")
        largest = (n, fitted, vectors)
    if len(sizes) >= 2:
        small, big = sizes[-2], sizes[-1]
        ratio = fits[big] / fits[small]
        exponent = math.log(ratio) / math.log(big / small)
        print(f"fit time {big:,} / {small:,} tracks (baseline): {ratio:.2f}x for {big / small:.0f}x the tracks; "
              f"grows as N^{exponent:.2f}")

    n, fitted, vectors = largest
    new, _ = clustered_latents(args.new, seed=12345)
    placed, t_transform = timed(fitted.transform, new)
    print(f"transform {args.new:,} new tracks with the {n:,}-track fit: {t_transform:.2f} s "
          f"({args.new / t_transform:,.0f} tracks/s; a refit would take ~{fits[n]:.0f} s)")

    fit_peak = peak_rss_mb()
    m = args.render_points
    warm_xy = np.random.default_rng(0).normal(size=(m // 2, 2))
    _, t_png = timed(ls.render_png, warm_xy[:, 0], warm_xy[:, 1], ls.coloring("genre", ["a"] * len(warm_xy)),
                     Path(tempfile.mkdtemp()) / "warm.png")
    print(f"warm-up (compilation): png of {len(warm_xy):,} points {t_png:.1f} s")
    cloud, label = clustered_latents(m, seed=7, dim=2, centres=40)
    cloud = cloud * 6 + np.random.default_rng(1).normal(size=(m, 2)) * 0.3
    colors = ls.coloring("genre", [f"style {c % 25}" for c in label])
    out = Path(tempfile.mkdtemp()) / "landscape.png"
    _, t_render = timed(ls.render_png, cloud[:, 0], cloud[:, 1], colors, out)
    print(f"PNG of {m:,} points (datashader, 1600x1200): {t_render:.2f} s, {out.stat().st_size / 1e6:.1f} MB file")

    result = {
        "bench": "landscape",
        "fit_s_10k": round(fits.get(10_000, fits[sizes[0]]), 2),
        "fit_s_50k": round(fits.get(50_000, fits[sizes[-1]]), 2),
        "transform_s_1k": round(t_transform, 3),
        "png_s_300k": round(t_render, 3),
        "peak_rss_mb": round(fit_peak, 1),
    }
    print(f"peak RSS: {fit_peak:,.0f} MB through the fits and the transform, {peak_rss_mb():,.0f} MB with the PNG")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
