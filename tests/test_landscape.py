"""The sonic landscape on a real DuckDB file: fit, place, groups, clusters, pictures, CLI, tasks.

The latent space is synthetic and clustered (6 genres x 4 artists x 10
tracks), so that what the landscape must keep (clusters, neighbours) is known.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from conftest import (  # the clustered space, shared with test_landscape_browser.py
    ARTISTS_PER_GENRE,
    GENRES,
    TRACKS_PER_ARTIST,
    build_space,
    clustered_vectors,
    embed,
    register,
    tracks_frame,
)
from flows.cli import main as cli
from sonufy_model import landscape as ls
from sonufy_model import search
from sonufy_model.config import Paths
from sonufy_model.landscape import static
from sonufy_model.outputs import OutputError
from sonufy_model.store import LATENT_DIM, Store, TrackNotFound


def _sql(store: Store, query: str, params=None) -> pl.DataFrame:
    with store.connect(read_only=True) as con:
        return con.execute(query, params or {}).pl()


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fitted landscape for the module (UMAP's first fit compiles)."""
    root = tmp_path_factory.mktemp("landscape")
    paths = Paths.for_db(root / "s.duckdb")
    store = Store(paths.db)
    space = build_space(store)
    counts = ls.update_landscape(store, paths.models)
    return paths, space, counts


@pytest.fixture
def copy(fitted, tmp_path):
    """A private copy of the fitted file and models, for tests that change them."""
    paths, space, _ = fitted
    shutil.copy(paths.db, tmp_path / "s.duckdb")
    shutil.copytree(paths.data_dir, tmp_path / "s.data")
    mine = Paths.for_db(tmp_path / "s.duckdb")
    return mine, Store(mine.db), space


def _points(store: Store, version: str = "m1") -> pl.DataFrame:
    return _sql(store, "SELECT track_id, x, y, placed_by FROM landscape WHERE model_version = $v ORDER BY track_id",
                {"v": version})


# -- fitting and placing ----------------------------------------------------------


def test_fit_gives_every_track_a_point_and_saves_the_model(fitted):
    paths, space, counts = fitted
    store = Store(paths.db)
    assert counts == {"landscape_fitted": 240, "artist_points": 24, "genre_points": 6}
    points = _points(store)
    assert points["track_id"].to_list() == space["ids"]
    assert set(points["placed_by"]) == {"fit"}
    assert np.isfinite(points.select("x", "y").to_numpy()).all()
    saved = ls.FittedUmap.load(paths.models / "m1" / "umap.joblib", "m1")
    assert saved.n_fitted == 240 and saved.params == ls.TRACK_PARAMS and saved.rule == ls.PARAMS_RULE
    # n_neighbors scaled to the library: round(sqrt(240)) = 15; artists: 24 -> 10 (the floor)
    fits = {row["level"]: row for row in ls.landscape_fits(store).to_dicts()}
    assert (fits["tracks"]["n_neighbors"], fits["tracks"]["min_dist"]) == (15, 0.1)
    assert (fits["artist"]["n_neighbors"], fits["genre"]["n_neighbors"]) == (10, 5)


def test_the_map_keeps_sound_clusters_together(fitted):
    """Each artist's 10 tracks (a sound of their own, inside their genre's)
    stay together on the map. With 15 neighbours (sqrt(240)) UMAP keeps the
    local structure; where the 4 artist islands of a genre lie relative to
    each other is not kept (that took n_neighbors above a genre's 40 tracks,
    which blurs noisier libraries into a disc)."""
    paths, space, _ = fitted
    xy = _points(Store(paths.db)).select("x", "y").to_numpy()
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :9]
    artist = np.arange(240) // TRACKS_PER_ARTIST
    assert (artist[nearest] == artist[:, None]).mean() > 0.95
    assert (space["clusters"][nearest] == space["clusters"][:, None]).mean() > 0.95


def test_new_tracks_are_placed_by_the_saved_fit_without_refitting(copy):
    paths, store, space = copy
    before = _points(store)
    groups_before = ls.group_landscape_points(store).filter(pl.col("level") == "artist")
    model_file = paths.models / "m1" / "umap.joblib"
    saved_at = model_file.stat().st_mtime_ns
    rng = np.random.default_rng(7)
    new = (space["centres"][2] + rng.normal(size=(12, LATENT_DIM)) * 0.7).astype(np.float32)
    ids = [f"n{i:02d}" for i in range(12)]
    store.upsert_tracks(tracks_frame(ids, ["jazz newcomer"] * 12, ["jazz"] * 12, [2024] * 12))
    embed(store, ids, new, "m1")

    counts = ls.update_landscape(store, paths.models)

    assert counts == {"landscape_placed": 12, "artist_points": 25, "genre_points": 6}
    after = _points(store)
    old = after.filter(pl.col("track_id").is_in(before["track_id"].to_list()))
    assert old.equals(before), "placing new tracks must not move the others"
    placed = after.filter(pl.col("track_id").is_in(ids))
    assert set(placed["placed_by"]) == {"neighbours"}
    assert model_file.stat().st_mtime_ns == saved_at
    # each lands among the jazz tracks: its 5 nearest points on the map are jazz
    xy = before.select("x", "y").to_numpy()
    for point in placed.select("x", "y").to_numpy():
        nearest = np.argsort(((xy - point) ** 2).sum(axis=1))[:5]
        assert set(space["clusters"][nearest]) == {2}
    # The artist map keeps its 24 points; the new artist lands among the jazz artists.
    groups = ls.group_landscape_points(store).filter(pl.col("level") == "artist")
    assert groups.drop("tracks").filter(pl.col("name") != "jazz newcomer").equals(
        groups_before.drop("tracks"))
    artist_xy = groups_before.select("x", "y").to_numpy()
    newcomer = groups.filter(pl.col("name") == "jazz newcomer").row(0, named=True)
    nearest = np.argsort(((artist_xy - [newcomer["x"], newcomer["y"]]) ** 2).sum(axis=1))[:3]
    assert set(groups_before["genre"].gather(nearest)) == {"jazz"}
    assert newcomer["cluster"] in set(groups_before.filter(pl.col("genre") == "jazz")["cluster"])
    assert ls.update_landscape(store, paths.models) == {}, "a rerun has nothing to do"


def test_a_near_duplicate_lands_on_its_fitted_track(copy):
    """A vector next to a fitted track's takes that track's point (inverse
    squared distance weights), and a new track lands within its nearest
    fitted neighbours' points."""
    paths, store, space = copy
    before = _points(store)
    xy = before.select("x", "y").to_numpy()
    extent = float(np.ptp(xy, axis=0).max())
    rng = np.random.default_rng(3)
    twins = [37, 150, 222]
    vectors = space["vectors"][twins] + rng.normal(size=(3, LATENT_DIM)).astype(np.float32) * 1e-3
    # and one between two artists of one genre: the mean of a track of each
    between = (space["vectors"][[80, 95]].mean(axis=0, keepdims=True)).astype(np.float32)
    ids = ["twin37", "twin150", "twin222", "between"]
    store.upsert_tracks(tracks_frame(ids, [space["artists"][i] for i in twins] + ["jazz artist 0"],
                                     [space["genres"][i] for i in twins] + ["jazz"], [2024] * 4))
    embed(store, ids, np.vstack([vectors, between]), "m1")

    assert ls.update_landscape(store, paths.models)["landscape_placed"] == 4

    placed = {row["track_id"]: (row["x"], row["y"]) for row in _points(store).filter(
        pl.col("track_id").is_in(ids)).to_dicts()}
    for index, track in zip(twins, ids):
        assert np.hypot(*(np.array(placed[track]) - xy[index])) < 0.01 * extent, track
    # in the box of its 10 nearest fitted tracks' points
    nearest = ls.nearest_fitted(space["vectors"], between, k=ls.PLACEMENT_NEIGHBOURS)[0][0]
    low, high = xy[nearest].min(axis=0), xy[nearest].max(axis=0)
    assert (low <= placed["between"]).all() and (np.array(placed["between"]) <= high).all()


def test_placement_by_neighbours_is_a_weighted_mean_of_the_nearest():
    reference = np.eye(4, 8, dtype=np.float32) + 0.01
    points = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    # exactly a reference vector: its point; halfway between two: between their points
    out = ls.place_by_neighbours(reference, points, reference[[2]], k=2)
    assert np.allclose(out, [[0, 10]], atol=1e-3)
    halfway = ls.place_by_neighbours(reference, points, (reference[0] + reference[1])[None], k=2)
    assert np.allclose(halfway, [[5, 0]], atol=1e-3)
    # k beyond the references is clipped; chunks give the same answer as one product
    many = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    whole = ls.place_by_neighbours(reference, points, many, k=10)
    from sonufy_model.landscape import placement

    small = placement._CHUNK_ELEMENTS
    try:
        placement._CHUNK_ELEMENTS = 8
        assert np.allclose(ls.place_by_neighbours(reference, points, many, k=10), whole)
    finally:
        placement._CHUNK_ELEMENTS = small
    assert np.isfinite(whole).all() and (whole >= 0).all() and (whole <= 10).all()
    with pytest.raises(ValueError, match="cannot be placed"):
        ls.place_by_neighbours(reference, points, many[:, :4])
    assert not ls.needs_refit(100, 20, 0) and ls.needs_refit(100, 20, 1) and not ls.needs_refit(100, 19, 1)


def test_placing_imports_neither_umap_nor_numba(copy):
    """A nightly that only places tracks (or has none to place) pays no
    UMAP or numba import: the saved fit is read from umap.json."""
    paths, store, space = copy
    ids = ["p1", "p2", "p3"]
    store.upsert_tracks(tracks_frame(ids, ["folk artist 1"] * 3, ["folk"] * 3, [2024] * 3))
    embed(store, ids, space["vectors"][160:163] + 0.05, "m1")
    script = textwrap.dedent(f"""
        import json, sys
        from sonufy_model import landscape as ls
        from sonufy_model.store import Store
        store = Store({str(paths.db)!r})
        first = ls.update_landscape(store, {str(paths.models)!r})
        second = ls.update_landscape(store, {str(paths.models)!r})
        print(json.dumps({{"first": first, "second": second,
                           "loaded": sorted(m for m in ("umap", "numba", "pynndescent") if m in sys.modules)}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["first"]["landscape_placed"] == 3 and result["second"] == {}
    assert result["loaded"] == []


def test_umap_kernels_compiled_by_one_process_are_loaded_by_the_next():
    """A fresh process fitting a landscape (every ``sonufy train``) loads the
    kernels an earlier one compiled instead of compiling them again."""
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        import umap
        from numba.core.registry import CPUDispatcher
        from sonufy_model import landscape as ls

        def kernels():
            return {id(k): k for name, m in list(sys.modules.items()) if name.partition(".")[0] == "umap"
                    for k in vars(m).values() if isinstance(k, CPUDispatcher)}

        # A few small kernels are compiled when umap is imported, before any fit.
        at_import = {key for key, k in kernels().items() if k.signatures}
        ls.fit_umap(np.random.default_rng(0).random((24, 16), dtype=np.float32))
        used = [k for key, k in kernels().items() if k.signatures and key not in at_import]
        print(json.dumps({"used": len(used), "loaded": sum(sum(k.stats.cache_hits.values()) for k in used),
                          "compiled": sum(sum(k.stats.cache_misses.values()) for k in used)}))
    """)

    def fit_in_a_fresh_process() -> dict:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    fit_in_a_fresh_process()  # compiles whatever no earlier process left on disk
    again = fit_in_a_fresh_process()
    assert again["used"] >= 3, again
    assert again["compiled"] == 0 and again["loaded"] >= again["used"], again


def test_a_fit_saved_without_its_json_is_read_once_and_the_json_written(copy):
    paths, store, _ = copy
    info = paths.models / "m1" / ls.FIT_INFO_FILENAME
    assert json.loads(info.read_text())["n_fitted"] == 240
    info.unlink()
    assert ls.update_landscape(store, paths.models) == {}
    assert ls.read_fit_info(paths.models / "m1" / "umap.joblib", "m1").used == ls.UmapParams(15, 0.1)
    assert json.loads(info.read_text())["params"] == {"n_neighbors": None, "min_dist": 0.1, "metric": "cosine",
                                                      "random_state": 42}
    info.write_text("{not json")
    assert ls.read_fit_info(paths.models / "m1" / "umap.joblib", "m1").n_fitted == 240
    with pytest.raises(ValueError, match="not 'm2'"):
        ls.read_fit_info(paths.models / "m1" / "umap.joblib", "m2")


def test_placed_tracks_past_a_fifth_of_the_fitted_ones_refit_the_landscape(copy):
    """Placed tracks may make up REFIT_PLACED_SHARE (20%) of the fitted ones;
    a run that would pass it refits on every track, with the saved fit's
    settings."""
    paths, store, space = copy
    settings = ls.UmapParams(n_neighbors=12, min_dist=0.2)
    assert ls.update_landscape(store, paths.models, params=settings)["landscape_fitted"] == 240
    rng = np.random.default_rng(11)

    def arrive(ids):
        vectors = space["vectors"][rng.integers(0, 240, len(ids))] + rng.normal(size=(len(ids), LATENT_DIM)) * 0.3
        store.upsert_tracks(tracks_frame(ids, ["folk newcomer"] * len(ids), ["folk"] * len(ids), [2025] * len(ids)))
        embed(store, ids, vectors.astype(np.float32), "m1")
        return ls.update_landscape(store, paths.models)

    assert ls.REFIT_PLACED_SHARE * 240 == 48
    assert arrive([f"a{i:02d}" for i in range(40)])["landscape_placed"] == 40
    assert arrive([f"b{i:02d}" for i in range(8)])["landscape_placed"] == 8, "48 of 240: at the threshold"
    counts = arrive(["c00"])
    assert counts["landscape_fitted"] == 289 and "landscape_placed" not in counts
    assert set(_points(store)["placed_by"]) == {"fit"}
    fits = {row["level"]: row for row in ls.landscape_fits(store).to_dicts()}
    assert (fits["tracks"]["points"], fits["tracks"]["n_neighbors"], fits["tracks"]["min_dist"]) == (289, 12, 0.2)
    assert ls.read_fit_info(paths.models / "m1" / "umap.joblib", "m1").n_fitted == 289
    assert arrive(["d00"])["landscape_placed"] == 1, "placing again, now among 289 fitted tracks"


def test_refit_and_other_parameters_fit_anew(copy):
    paths, store, _ = copy
    assert ls.update_landscape(store, paths.models, refit=True)["landscape_fitted"] == 240
    params = ls.UmapParams(n_neighbors=15, min_dist=0.1)
    assert ls.update_landscape(store, paths.models, params=params)["landscape_fitted"] == 240
    fits = {row["level"]: row for row in ls.landscape_fits(store).to_dicts()}
    assert (fits["tracks"]["n_neighbors"], fits["tracks"]["min_dist"]) == (15, 0.1)
    # the saved fit's parameters are kept from now on
    assert ls.update_landscape(store, paths.models) == {}
    assert ls.update_landscape(store, paths.models, params=params) == {}


def test_a_refit_that_dies_midway_leaves_each_group_map_whole(copy, monkeypatch):
    from sonufy_model.landscape import persistence

    paths, store, _ = copy
    before = ls.group_landscape_points(store).sort("level", "name")
    real_fit = persistence.fit_umap

    def fit_then_die(vectors, params, version):  # the process going down during the artist map's fit
        if len(vectors) == ARTISTS_PER_GENRE * len(GENRES):
            raise RuntimeError("killed")
        return real_fit(vectors, params, version)

    monkeypatch.setattr(persistence, "fit_umap", fit_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        ls.update_landscape(store, paths.models, refit=True)
    assert ls.group_landscape_points(store).sort("level", "name").equals(before)
    assert {"artist", "genre"} <= set(ls.landscape_fits(store)["level"])

    # A store that an older version left with a fit but no artist points is repaired by a plain run.
    monkeypatch.undo()
    with store.transaction() as con:
        con.execute("DELETE FROM group_landscape WHERE level = 'artist'")
    assert ls.update_landscape(store, paths.models)["artist_points"] == ARTISTS_PER_GENRE * len(GENRES)
    assert ls.group_landscape_points(store).filter(pl.col("level") == "artist").height == 24


def test_a_new_model_version_gets_its_own_landscape(copy):
    paths, store, space = copy
    register(store, "m2")
    embed(store, space["ids"], space["vectors"][:, ::-1].copy(), "m2")
    store.promote("m2")
    assert ls.update_landscape(store, paths.models)["landscape_fitted"] == 240
    assert (paths.models / "m2" / "umap.joblib").is_file()
    assert _points(store, "m1").height == 240 and _points(store, "m2").height == 240
    assert ls.landscape_points(store)["model_version"].unique().to_list() == ["m2"]


def test_n_neighbors_scales_with_the_library():
    assert [ls.scaled_neighbours(n) for n in (4, 50, 159, 240, 475, 10_000, 278_000, 2_000_000)] == [
        10, 10, 13, 15, 22, 100, 500, 500]
    assert ls.TRACK_PARAMS.for_points(475).n_neighbors == 22
    assert ls.TRACK_PARAMS.for_points(6).n_neighbors == 5, "never more than the other points"
    assert ls.UmapParams(n_neighbors=40).for_points(475).n_neighbors == 40, "asked for: kept"
    with pytest.raises(ValueError, match="n_neighbors"):
        ls.UmapParams(n_neighbors=True)


def test_a_few_hundred_tracks_make_a_map_with_groups_not_a_disc():
    """475 tracks in 25 groups of 19, as noisy as real music's latent spaces
    (fewer than half of a track's 10 nearest share its group): the scaled
    settings keep the groups together on the map; the seed's 500 neighbours
    (every other track) and min_dist 0.5 blur them into one disc."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(25), 19)
    vectors = (rng.normal(size=(25, LATENT_DIM))[groups] + rng.normal(size=(475, LATENT_DIM)) * 3.0)
    vectors = vectors.astype(np.float32)

    def agreement(xy):
        d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return float((groups[np.argsort(d, axis=1)[:, :10]] == groups[:, None]).mean())

    latent = float((groups[ls.nearest_neighbours(vectors)] == groups[:, None]).mean())
    fitted, scaled = ls.fit_umap(vectors)
    _, legacy = ls.fit_umap(vectors, ls.LEGACY_PARAMS)
    assert fitted.used.n_neighbors == 22 and fitted.used.min_dist == 0.1
    assert 0.3 < latent < 0.6
    assert agreement(scaled) > 0.55
    assert agreement(scaled) > agreement(legacy) + 0.15


def test_a_fit_by_the_old_fixed_defaults_is_refitted_once(copy):
    paths, store, _ = copy
    path = paths.models / "m1" / "umap.joblib"
    # a file as saved before the scaled rule: the fixed 500 / 0.5, no rule
    old = ls.FittedUmap.load(path, "m1")
    ls.FittedUmap(old.reducer, ls.LEGACY_PARAMS, ls.UmapParams(239, 0.5), 240, "m1", rule=None).save(path)
    assert ls.update_landscape(store, paths.models)["landscape_fitted"] == 240
    assert ls.FittedUmap.load(path, "m1").params == ls.TRACK_PARAMS
    fits = {row["level"]: row for row in ls.landscape_fits(store).to_dicts()}
    assert fits["tracks"]["n_neighbors"] == 15
    assert ls.update_landscape(store, paths.models) == {}
    # settings someone asked for are kept, whenever they were saved
    ls.FittedUmap(old.reducer, ls.UmapParams(30, 0.5), ls.UmapParams(30, 0.5), 240, "m1", rule=None).save(path)
    assert ls.update_landscape(store, paths.models) == {}


# -- colours ---------------------------------------------------------------------


def _labels(n, **columns) -> pl.DataFrame:
    frame = pl.DataFrame({name: pl.Series(name, [None] * n, dtype=pl.String) for name in ls.COLOR_LABELS})
    return frame.with_columns(**{name: pl.Series(name, values, dtype=pl.String) for name, values in columns.items()})


def test_the_default_colour_is_the_most_informative_label_present():
    n = 190
    folders = [f"soundtrack {i % 19}" for i in range(n)]
    folder_library = _labels(
        n, source=["folder"] * n, folder=folders,
        # tags on a third of the files only
        album=[f if i % 3 == 0 else None for i, f in enumerate(folders)],
        # a composer per soundtrack, one of them wrote most
        artist=["Prolific" if i % 19 < 12 else f"composer {i % 19}" for i in range(n)],
    )
    label, scores = ls.choose_color_by(folder_library)
    assert label == "folder"
    assert scores["genre"]["values"] == 0 and not scores["genre"]["eligible"]
    assert not scores["source"]["eligible"], "one value"
    assert not scores["album"]["eligible"], "a third of the tracks"
    assert scores["artist"]["eligible"] and scores["artist"]["score"] < scores["folder"]["score"] == 1.0
    # more values than colours: the tracks left grey count against a label
    many = folder_library.with_columns(artist=pl.Series([f"composer {i % 30}" for i in range(n)]),
                                       folder=pl.Series([f"s{i % 19 if i % 5 else 0}" for i in range(n)]))
    label, scores = ls.choose_color_by(many)
    assert scores["artist"]["evenness"] > scores["folder"]["evenness"] and scores["artist"]["coloured"] < 0.7
    assert label == "folder"
    # one value per track (titles as artists) is not a colouring
    assert ls.choose_color_by(folder_library.with_columns(
        folder=pl.Series([f"f{i}" for i in range(n)]), artist=pl.lit("Someone")))[0] == "album"
    # the demo catalog: styles beat years (more than 40) and artists (as even: genre comes first)
    demo = _labels(n, genre=[f"style {i % 6}" for i in range(n)], artist=[f"a{i % 24}" for i in range(n)],
                   year=[str(1950 + i % 60) for i in range(n)], source=["spotify"] * n, album=["x"] * n)
    assert ls.choose_color_by(demo)[0] == "genre"
    # nothing eligible, nothing grouped: source
    assert ls.choose_color_by(_labels(6, artist=list("abcdef"), source=["folder"] * 6))[0] == "source"


def _folder_library(store: Store, version: str = "f1") -> dict:
    """12 soundtracks of 10 files each (no genre, no year), a sound apiece."""
    vectors = clustered_vectors(seed=5)[0][:120]  # blocks of 10 per artist sub-centre: one per folder
    folders = [f"Soundtrack {i // 10:02d}" for i in range(120)]
    ids = [f"f{i:03d}" for i in range(120)]
    frame = tracks_frame(ids, [f"composer {i // 40}" for i in range(120)], [None] * 120, [2000] * 120)
    frame = frame.with_columns(
        source=pl.lit("folder"), release_date=pl.lit(None, pl.String), found_by=pl.lit("folder:/music"),
        album=pl.Series([f if i % 4 == 0 else None for i, f in enumerate(folders)], dtype=pl.String),
        path=pl.Series([f"/music/{f}/{i:02d} track.ogg" for i, f in enumerate(folders)]),
    )
    store.upsert_tracks(frame)
    register(store, version)
    embed(store, ids, vectors, version)
    store.promote(version)
    return {"ids": ids, "folders": folders}


def _hues(png_path, width=1600, header=56) -> int:
    """Distinct hues (24 bins) among the PNG's saturated dot pixels."""
    rgb = np.asarray(Image.open(png_path).convert("HSV"))[header:, :width].reshape(-1, 3).astype(int)
    lit = rgb[(rgb[:, 1] > 80) & (rgb[:, 2] > 80)]
    counts = np.bincount(lit[:, 0] * 24 // 256, minlength=24)
    return int((counts > 50).sum())


def test_a_folder_library_is_coloured_by_its_folders(tmp_path):
    paths = Paths.for_db(tmp_path / "lib.duckdb")
    store = Store(paths.db)
    library = _folder_library(store)
    ls.update_landscape(store, paths.models)
    points = ls.landscape_points(store)
    assert points["folder"].to_list() == library["folders"]
    assert points["genre"].null_count() == 120 and points["album"].null_count() == 90

    result = ls.render(store, tmp_path / "out")
    assert (result["color_by"], result["color_auto"], result["categories"]) == ("folder", True, 12)
    assert result["color_scores"]["folder"]["score"] == 1.0
    assert "chosen as the label that paints most tracks" in ls.summary_markdown(result)
    tracks = _page_data(tmp_path / "out" / "landscape.html")["layers"]["tracks"]
    assert tracks["colorBy"] == "folder"
    # a folder library has no genre or year: the page offers what exists
    assert set(tracks["labels"]) == {"folder", "album", "artist", "source"}
    assert tracks["labels"]["folder"]["values"] == sorted(set(library["folders"]))
    folder_hues = _hues(result["png"])

    by_source = ls.render(store, tmp_path / "one", color_by="source")
    assert by_source["color_by"] == "source" and not by_source["color_auto"]
    assert _hues(by_source["png"]) <= 2 < 8 <= folder_hues
    # asked for a label that is all unknown: drawn, and offered, all the same
    ls.render(store, tmp_path / "genre", color_by="genre")
    assert _page_data(tmp_path / "genre" / "landscape.html")["layers"]["tracks"]["colorBy"] == "genre"


# -- artist and genre landscapes, clusters, neighbours ------------------------------


def test_artist_and_genre_landscapes_with_clusters_chosen_by_silhouette(fitted):
    paths, space, _ = fitted
    store = Store(paths.db)
    groups = ls.group_landscape_points(store)
    artists = groups.filter(pl.col("level") == "artist")
    genres = groups.filter(pl.col("level") == "genre")
    assert artists.height == 24 and set(artists["tracks"]) == {10}
    assert sorted(genres["name"]) == sorted(GENRES) and set(genres["tracks"]) == {40}
    # an artist's genre is its tracks' genre; the 6 sound clusters are found
    assert all(name.startswith(genre) for name, genre in zip(artists["name"], artists["genre"]))
    fits = {row["level"]: row for row in ls.landscape_fits(store).to_dicts()}
    assert fits["artist"]["clusters"] == 6
    by_genre = artists.group_by("genre").agg(pl.col("cluster").n_unique().alias("n"), pl.col("cluster").first())
    assert set(by_genre["n"]) == {1} and by_genre["cluster"].n_unique() == 6


def test_choose_clusters_takes_the_k_of_the_best_silhouette():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 16)) * 5
    blobs = np.vstack([c + rng.normal(size=(25, 16)) for c in centres])
    found = ls.choose_clusters(blobs, (2, 8))
    assert found.k == 4 and found.silhouette == max(found.scores.values())
    assert sorted(found.scores) == list(range(2, 9))
    assert ls.choose_clusters(blobs[:2]) is None
    with pytest.raises(ValueError, match="k range"):
        ls.choose_clusters(blobs, (1, 5))


def test_nearest_neighbours_are_the_recommendations(fitted):
    paths, space, _ = fitted
    store = Store(paths.db)
    neighbours = ls.nearest_neighbours(space["vectors"])
    assert neighbours.shape == (240, 10)
    for i in (0, 57, 239):
        expected = search.similar(store, track_id=space["ids"][i], k=10)["track_id"].to_list()
        assert [space["ids"][j] for j in neighbours[i]] == expected


def test_above_the_exact_limit_neighbours_come_from_cells_with_high_recall_and_no_numba(monkeypatch):
    """Many points: an inverted file of k-means cells instead of the exact
    matrix product (cost about n^1.5). Against the exact neighbours of the
    same clustered vectors (genres, artists within them, as a catalog's
    latents), most are found; none is the point itself, and no numba code is
    compiled for it (pynndescent, used before, compiled for about a minute in
    each process above 20,000 points)."""
    from sonufy_model.landscape import clusters

    rng = np.random.default_rng(7)
    genres = rng.normal(size=(12, 64)) * 3.0
    artists = np.repeat(genres, 10, axis=0) + rng.normal(size=(120, 64)) * 0.8
    vectors = (np.repeat(artists, 25, axis=0) + rng.normal(size=(3000, 64)) * 0.6).astype(np.float32)
    exact = clusters.nearest_neighbours(vectors)
    monkeypatch.setattr(clusters, "EXACT_NEIGHBOURS_LIMIT", 500)
    approximate = clusters.nearest_neighbours(vectors)
    assert approximate.shape == exact.shape == (3000, 10)
    assert not np.any(approximate == np.arange(3000)[:, None])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approximate.tolist(), exact.tolist())])
    assert recall >= 0.95, recall
    script = textwrap.dedent("""
        import sys, numpy as np
        from sonufy_model.landscape import clusters
        clusters.EXACT_NEIGHBOURS_LIMIT = 100
        clusters.nearest_neighbours(np.random.default_rng(0).normal(size=(400, 16)))
        print(sorted(m for m in ("numba", "pynndescent", "umap") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[]"


# -- pictures --------------------------------------------------------------------


def _page_data(path) -> dict:
    text = path.read_text(encoding="utf-8")
    match = re.search(r'<script id="landscape-data" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def test_the_page_plays_files_on_disk_by_their_resolved_uri(copy, tmp_path):
    # Previews on disk are linked as Path.resolve().as_uri() gives them (a
    # folder reached through a symlink resolved, odd names quoted); a file
    # gone from disk is not linked.
    paths, store, _ = copy
    real = tmp_path / "real previews"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    names = {"t001": "a b#1.mp3", "t002": "ü?%.mp3", "t003": "plain.mp3", "t004": "gone.mp3"}
    for track_id, name in names.items():
        if track_id != "t004":
            (real / name).write_bytes(b"x")
    stored = {"t001": str(tmp_path / "linked" / names["t001"]), "t002": str(real / names["t002"]),
              "t003": f"../{tmp_path.name}/linked/{names['t003']}", "t004": str(real / names["t004"])}
    with store.transaction() as con:
        for track_id, path in stored.items():
            con.execute("INSERT OR REPLACE INTO previews (track_id, provider, path, bytes, duration_s) "
                        "VALUES ($t, 'deezer', $p, 1, 30.0)", {"t": track_id, "p": path})
    audio = dict(ls.landscape_points(store).select("track_id", "audio").iter_rows())
    for track_id in ("t001", "t002", "t003"):
        assert audio[track_id] == (real / names[track_id]).resolve().as_uri()
    assert audio["t004"] is None and audio["t005"] is None


def test_render_writes_a_png_and_a_self_contained_page(copy, tmp_path):
    paths, store, space = copy
    with store.transaction() as con:
        con.execute("UPDATE tracks SET preview_url = 'https://p.scdn.co/mp3-preview/x' WHERE track_id = 't005'")
    result = ls.render(store, tmp_path / "out", color_by="year")
    png = Image.open(result["png"]).convert("RGB")
    assert png.size == (1600 + 320, 1200 + 56)
    plot = np.asarray(png)[56:, :1600].reshape(-1, 3).astype(int)
    lit = (np.abs(plot - [11, 13, 18]).sum(axis=1) > 60).sum()
    assert lit > 240 * 10, "every track shows as a dot"

    page = (tmp_path / "out" / "landscape.html").read_text(encoding="utf-8")
    assert "<script src" not in page and "http://" not in page.replace("http://www.w3.org", "")
    data = _page_data(tmp_path / "out" / "landscape.html")
    tracks = data["layers"]["tracks"]
    assert len(tracks["x"]) == 240 and tracks["colorBy"] == "year"
    # labels with a known value only: these tracks have no file, hence no folder
    assert set(tracks["labels"]) == {"genre", "album", "artist", "year", "source"}
    assert tracks["audio"][5] == "https://p.scdn.co/mp3-preview/x" and tracks["audio"][6] is None
    assert tracks["neighbours"][0] == ls.nearest_neighbours(space["vectors"])[0].tolist()
    assert len(data["layers"]["artists"]["x"]) == 24 and len(data["layers"]["genres"]["x"]) == 6
    assert result["fits"] and "| artist | 24 |" in ls.summary_markdown(result)


def test_a_small_map_is_drawn_dot_by_dot_without_datashader(tmp_path):
    # Three points in three colours, at the corners of the drawn area.
    labels = ls.coloring("genre", ["a", "b", "c"])
    path = ls.render_png(np.array([0.0, 10.0, 0.0]), np.array([0.0, 0.0, 10.0]), labels, tmp_path / "s.png",
                         width=400, height=400)
    image = np.asarray(Image.open(path).convert("RGB"))[56:, :400]  # the plot, below the header
    (x0, x1), (y0, y1) = static._ranges(np.array([0.0, 10.0, 0.0]), np.array([0.0, 0.0, 10.0]), 400, 400)
    for (x, y), code in zip([(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)], labels.codes):
        column = int((x - x0) / (x1 - x0) * 400)
        row = int((y1 - y) / (y1 - y0) * 400)
        colour = labels.colors[code].lstrip("#")
        assert tuple(image[row, column]) == tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))
    background = image[200, 200]
    assert tuple(background) == (0x0B, 0x0D, 0x12)
    # A nightly's fresh process pays nothing for datashader's import and JIT.
    code = ("import sys, numpy as np; from pathlib import Path; from sonufy_model import landscape as ls; "
            "ls.render_png(np.arange(50.0), np.arange(50.0), ls.coloring('genre', ['x'] * 50), "
            f"Path({str(tmp_path / 'n.png')!r})); print('datashader' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_png_shows_density_at_300000_points(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(297_000, 2)) * 0.5
    sparse = rng.normal(size=(3_000, 2)) * 0.5 + [8.0, 0.0]
    xy = np.vstack([dense, sparse])
    labels = ls.coloring("source", ["spotify"] * len(xy))
    path = ls.render_png(xy[:, 0], xy[:, 1], labels, tmp_path / "big.png", width=800, height=600)
    image = np.asarray(Image.open(path).convert("RGB"))[56:, :800].max(axis=2).astype(int)
    columns = image.max(axis=0)
    # both blobs are visible, and the dense one is brighter (shaded by count)
    left, right = image[:, :400], image[:, 520:]
    assert (left > 40).sum() > 1000 and (right > 40).sum() > 100
    assert np.percentile(left[left > 40], 90) > np.percentile(right[right > 40], 90)
    assert columns[400:520].max() < 40, "no overplotted smear between them"


def _datashader_picture(x, y, labels, x_range, y_range, width, height):
    """The density picture as datashader draws it, one layer per category."""
    import datashader as ds
    import datashader.transfer_functions as tf
    import pandas as pd

    frame = pd.DataFrame({"x": x, "y": y, "label": pd.Categorical.from_codes(
        labels.codes, categories=[str(i) for i in range(len(labels.values))])})
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
    per_genre = canvas.points(frame, "x", "y", agg=ds.count_cat("label"))
    spread, min_alpha = next((px, alpha) for most, px, alpha in static._SPREAD if len(x) < most)
    image = tf.shade(per_genre, color_key={str(i): c for i, c in enumerate(labels.colors)}, how="eq_hist",
                     min_alpha=min_alpha)
    image = tf.spread(image, px=spread, shape="circle") if spread else image
    return np.asarray(tf.set_background(image, "#0b0d12").to_pil().convert("RGB"))


@pytest.mark.parametrize("n, genres", [(30_000, 120), (120_000, 7)])
def test_the_density_picture_is_the_one_datashader_draws(n, genres):
    # 30,000 points: spread one pixel, 120 genres of which many share the grey;
    # 120,000: no spread. The picture is drawn in numpy, one layer per colour;
    # datashader, one layer per genre, must draw the same pixels.
    rng = np.random.default_rng(1)
    names = [f"g{int(g):03d}" for g in rng.zipf(1.3, size=n) % genres]
    labels = ls.coloring("genre", names)
    if genres > 100:
        assert len(labels.values) > len(set(labels.colors)) + 40, "many genres share the grey"
    xy = np.vstack([rng.normal(size=(n - 100, 2)), rng.normal(size=(100, 2)) * 0.2 + [3.0, 3.0]])
    x_range, y_range = (-4.0, 4.0), (-3.5, 4.0)  # some points fall outside and are dropped
    drawn = np.asarray(static._density(xy[:, 0], xy[:, 1], labels, x_range, y_range, 200, 150))
    reference = _datashader_picture(xy[:, 0], xy[:, 1], labels, x_range, y_range, 200, 150)
    assert drawn.shape == reference.shape == (150, 200, 3)
    assert (drawn != reference).sum() == 0
    assert (drawn.max(axis=2) > 0x12).sum() > 1000, "a picture, not the background"


def test_a_dense_map_is_shaded_without_importing_datashader(tmp_path):
    # A nightly's fresh process redraws a 20,000-point map: no datashader import, no JIT.
    code = ("import sys, numpy as np; from pathlib import Path; from sonufy_model import landscape as ls; "
            "from sonufy_model.landscape import static; n = static.DENSITY_FROM; "
            "xy = np.random.default_rng(0).normal(size=(n, 2)); "
            "ls.render_png(xy[:, 0], xy[:, 1], ls.coloring('genre', ['x', 'y'] * (n // 2)), "
            f"Path({str(tmp_path / 'd.png')!r})); print('datashader' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert Image.open(tmp_path / "d.png").size == (1600 + 320, 1200 + 56)


# -- bad input ----------------------------------------------------------------------


def test_bad_input_gets_a_clear_error(tmp_path, fitted):
    with pytest.raises(ValueError, match="n_neighbors"):
        ls.UmapParams(n_neighbors=1)
    with pytest.raises(ValueError, match="min_dist"):
        ls.UmapParams(min_dist=2.0)
    with pytest.raises(ValueError, match="at least 4 points"):
        ls.fit_umap(np.ones((3, 8)))
    with pytest.raises(ValueError, match="not finite"):
        ls.fit_umap(np.full((5, 8), np.nan))
    with pytest.raises(TrackNotFound, match="no current model"):
        ls.update_landscape(Store(tmp_path / "empty.duckdb"), tmp_path / "models")
    paths, _, _ = fitted
    with pytest.raises(ValueError, match="colour by 'mood'"):
        ls.render(Store(paths.db), tmp_path / "out", color_by="mood")
    # An output that cannot be a folder is refused before anything is drawn.
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(OutputError, match=r"taken: exists and is not a folder"):
        ls.render(Store(paths.db), taken)
    with pytest.raises(OutputError, match=r"taken/maps: .*taken is a file"):
        ls.render(Store(paths.db), taken / "maps")
    assert taken.read_text() == "a file" and not (tmp_path / "out").exists()
    broken = tmp_path / "m1" / "umap.joblib"
    broken.parent.mkdir()
    broken.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="umap.joblib: not a saved Sonufy landscape"):
        ls.FittedUmap.load(broken)


# -- the command and the tasks ---------------------------------------------------


def test_sonufy_landscape_writes_both_files(copy, tmp_path, capsys):
    paths, _, _ = copy
    out = tmp_path / "maps"
    assert cli(["landscape", "--db", str(paths.db), "--out", str(out), "--color-by", "artist",
                "--n-neighbors", "20", "--min-dist", "0.3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2:] == [str(out / "landscape.png"), str(out / "landscape.html")]
    assert "landscape_fitted 240" in printed[0] and printed[0].endswith("coloured by artist")
    assert _page_data(out / "landscape.html")["layers"]["tracks"]["colorBy"] == "artist"
    # by default, the most informative label: the genres (6 even groups; the
    # 24 artists split as evenly, and genre comes first)
    assert cli(["landscape", "--db", str(paths.db), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("coloured by genre (auto)")
    assert _page_data(out / "landscape.html")["layers"]["tracks"]["colorBy"] == "genre"
    assert (out / "landscape.png").stat().st_size > 0 and _page_data(out / "landscape.html")
    assert cli(["landscape", "--db", str(tmp_path / "nope.duckdb")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli(["landscape", "--db", str(paths.db), "--min-dist", "3"]) == 2
    assert "min_dist" in capsys.readouterr().err
    # An --out that is a file is refused before the refit it asks for: the fits are the same.
    fits = ls.landscape_fits(Store(paths.db))
    (tmp_path / "a-file").write_text("")
    assert cli(["landscape", "--db", str(paths.db), "--refit", "--out", str(tmp_path / "a-file")]) == 2
    assert "a-file: exists and is not a folder" in capsys.readouterr().err
    assert ls.landscape_fits(Store(paths.db)).equals(fits)
    # The pictures were replaced whole, with no staging file left beside them.
    assert sorted(path.name for path in out.iterdir()) == ["landscape.html", "landscape.png"]


def test_the_tasks_place_new_tracks_and_publish_artifacts(copy, prefect_api):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from tasks.landscape import render_landscape, update_landscape

    paths, store, space = copy
    ids = ["late1", "late2"]
    store.upsert_tracks(tracks_frame(ids, ["metal artist 0"] * 2, ["metal"] * 2, [2025] * 2))
    embed(store, ids, space["vectors"][120:122] + 0.01, "m1")

    @flow
    def nightly_landscape():
        from prefect.runtime import flow_run

        counts = update_landscape(store, paths)
        return counts, render_landscape(store, paths.data_dir / "landscape"), flow_run.id

    counts, result, run_id = nightly_landscape()
    assert counts["landscape_placed"] == 2 and result["tracks"] == 242
    # Other tests' flows publish under the same keys: read this run's own.
    with get_client(sync_client=True) as client:
        found = {
            a.key: a for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["sonufy-landscape", "sonufy-landscape-summary"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                )
            )
        }
    assert (paths.data_dir / "landscape" / "landscape.html").as_uri() in found["sonufy-landscape"].data
    assert "| tracks | 240 |" in found["sonufy-landscape-summary"].data
