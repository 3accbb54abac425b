"""Search in the latent space: exact results, filters, the index, fallbacks, bad input."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import polars as pl
import pytest

import sql
from sonufy_model import search
from sonufy_model.schemas import TRACK_SCHEMA
from sonufy_model.search import SearchFilters, similar, track_vector
from sonufy_model.store import LATENT_DIM, Store, TrackNotFound

# id, artist, title, album, album_id, isrc, popularity, cosine to the seed "q"
KNOWN = [
    ("q", "Ann", "Song", "First", "alb1", "I0", 50, 1.0),
    ("s1", "Ann", "Other", "Second", "alb2", "I1", 50, 0.99),
    ("s2", "Ann", "Song - Live", "Live", "alb3", "I2", 50, 0.98),
    ("b1", "Bob", "B one", "First", "alb1", "I3", 50, 0.97),
    ("b2", "Bob", "B two", "Bobs", "alb4", "I4", None, 0.96),
    ("b3", "Bob", "B three", "Bobs", "alb4", "I5", 10, 0.95),
    ("c1", "Cy", "C One", "Cys", "alb5", "I6", 80, 0.94),
    ("c2", "Cy", "C one (Remastered)", "Cys best", "alb6", "I7", 80, 0.93),
    ("d1", "Di", "D one", "Dis", "alb7", "I8", 80, 0.5),
    ("e1", "Ed", "E one", "Eds", "alb8", "I9", 80, 0.2),
    ("f1", "Fe", "F one", "Fes", "alb9", "I10", 80, -0.1),
]


def _tracks(rows) -> pl.DataFrame:
    rows = list(rows)
    return pl.DataFrame(
        {
            "track_id": [r[0] for r in rows], "source": ["spotify"] * len(rows),
            "title": [r[2] for r in rows], "artist": [r[1] for r in rows], "artists": [[r[1]] for r in rows],
            "artist_id": [None] * len(rows), "album": [r[3] for r in rows], "album_id": [r[4] for r in rows],
            "release_date": ["2020-01-01"] * len(rows), "duration_ms": [200_000] * len(rows),
            "isrc": [r[5] for r in rows], "explicit": [False] * len(rows), "popularity": [r[6] for r in rows],
            "uri": [None] * len(rows), "preview_url": [None] * len(rows), "path": [None] * len(rows),
            "found_by": ["q"] * len(rows),
        },
        schema=TRACK_SCHEMA,
    )


def _vectors_at(cosines: list[float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A unit seed vector and one vector per cosine, at exactly that cosine to it."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(LATENT_DIM)
    u /= np.linalg.norm(u)
    others = rng.standard_normal((LATENT_DIM, len(cosines)))
    others -= u[:, None] * (u @ others)[None, :]  # orthogonal to u, unit length
    others /= np.linalg.norm(others, axis=0, keepdims=True)
    c = np.asarray(cosines)[None, :]
    vectors = c * u[:, None] + np.sqrt(np.clip(1 - c**2, 0, None)) * others
    return u.astype(np.float32), (3.0 * vectors.T).astype(np.float32)


@pytest.fixture
def known(tmp_path, register_model, embed_vectors) -> Store:
    store = Store(tmp_path / "known.duckdb")
    store.upsert_tracks(_tracks(KNOWN))
    register_model(store, "m1", "s", promote=False)
    _, vectors = _vectors_at([row[7] for row in KNOWN])
    embed_vectors(store, "m1", dict(zip([row[0] for row in KNOWN], vectors)))
    store.promote("m1")
    return store


def _ids(frame: pl.DataFrame) -> list[str]:
    return frame["track_id"].to_list()


def test_exact_results_on_a_known_set(known):
    result = similar(known, track_id="q", k=5, use_index=False)
    assert list(result.columns) == ["track_id", "artist", "title", "album", "preview_url", "cosine",
                                    "time_similarity", "frequency_similarity"]
    assert _ids(result) == ["s1", "s2", "b1", "b2", "b3"]
    assert result["cosine"].to_list() == pytest.approx([0.99, 0.98, 0.97, 0.96, 0.95], abs=1e-5)
    assert result["preview_url"][0] == "https://open.spotify.com/track/s1"
    # The split scores are the cosines of the two 128-d halves.
    q, s1 = track_vector(known, "q"), track_vector(known, "s1")
    half = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert result["time_similarity"][0] == pytest.approx(half(q[:128], s1[:128]), abs=1e-5)
    assert result["frequency_similarity"][0] == pytest.approx(half(q[128:], s1[128:]), abs=1e-5)
    # Every track but the seed, when k is larger than the space.
    assert _ids(similar(known, track_id="q", k=50, use_index=False))[-1] == "f1"
    assert similar(known, track_id="q", k=50, use_index=False).height == len(KNOWN) - 1


def test_a_vector_query_excludes_its_seeds_and_matches_the_track_query(known):
    by_track = similar(known, track_id="q", k=4, use_index=False)
    by_vector = similar(known, vector=track_vector(known, "q"), seed_track_ids=["q"], k=4, use_index=False)
    assert by_vector.equals(by_track)
    assert _ids(similar(known, vector=track_vector(known, "q"), k=2, use_index=False)) == ["q", "s1"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (SearchFilters(exclude_same_artist=True), ["b1", "b2", "b3", "c1", "c2"]),
        (SearchFilters(exclude_same_album=True), ["s1", "s2", "b2", "b3", "c1"]),
        # s2 is the seed's song live; c2 a remaster of the better-ranked c1.
        (SearchFilters(exclude_duplicates=True), ["s1", "b1", "b2", "b3", "c1"]),
        # b3 has popularity 10; b2 has none, and passes.
        (SearchFilters(min_popularity=40), ["s1", "s2", "b1", "b2", "c1"]),
        (SearchFilters(max_per_artist=1), ["s1", "b1", "c1", "d1", "e1"]),
        (SearchFilters(exclude_track_ids=("s1", "b1")), ["s2", "b2", "b3", "c1", "c2"]),
        (SearchFilters(exclude_same_artist=True, exclude_duplicates=True, max_per_artist=2),
         ["b1", "b2", "c1", "d1", "e1"]),
    ],
)
def test_each_filter(known, filters, expected):
    assert _ids(similar(known, track_id="q", k=5, filters=filters, use_index=False)) == expected


def test_the_macros_take_the_filters_as_named_parameters(known):
    con = duckdb.connect(str(known.path), read_only=True)
    try:
        rows = con.execute(
            "SELECT track_id FROM similar_to('q', 5, exclude_same_artist := true, max_per_artist := 2)"
        ).fetchall()
        assert [r[0] for r in rows] == ["b1", "b2", "c1", "c2", "d1"]
        rows = con.execute(
            "SELECT track_id, time_similarity FROM similar_to_vector("
            "(SELECT vector FROM latent WHERE track_id = 'q'), 3, seed_track_ids := ['q'], exclude_duplicates := true)"
        ).fetchall()
        assert [r[0] for r in rows] == ["s1", "b1", "b2"] and rows[0][1] is not None
        assert con.execute("SELECT * FROM similar_to('nobody', 5)").fetchall() == []
    finally:
        con.close()


def test_an_isrc_duplicate_of_the_seed_is_left_out(known, embed_vectors):
    # upsert_tracks keeps one track per ISRC; older rows may still share one.
    with known.connect() as con:
        con.execute("INSERT INTO tracks (track_id, source, title, artist, isrc) "
                    "VALUES ('dup', 'spotify', 'Another name', 'Zed', 'I0')")
    near = track_vector(known, "q") + 0.01 * np.random.default_rng(1).standard_normal(LATENT_DIM)
    embed_vectors(known, "m1", {"dup": near.astype(np.float32)})
    assert _ids(similar(known, track_id="q", k=1, use_index=False)) == ["dup"]
    assert _ids(similar(known, track_id="q", k=1, filters=SearchFilters(exclude_duplicates=True),
                        use_index=False)) == ["s1"]


def test_filters_widen_the_candidates_until_k_tracks_pass(tmp_path, register_model, embed_vectors):
    store = Store(tmp_path / "wide.duckdb")
    # 400 tracks by the seed's artist nearer than anything else.
    rows = [("seed", "Ann", "Seed", "A", "a0", None, None, 1.0)]
    rows += [(f"ann{i:03d}", "Ann", f"Song {i}", "A", "a0", None, None, 0.99 - i * 1e-4) for i in range(400)]
    rows += [(f"x{i}", f"Other {i}", f"X {i}", "X", f"x{i}", None, None, 0.5 - i * 0.01) for i in range(5)]
    store.upsert_tracks(_tracks(rows))
    register_model(store, "m1", "s", promote=False)
    embed_vectors(store, "m1", dict(zip([r[0] for r in rows], _vectors_at([r[7] for r in rows])[1])))
    store.promote("m1")
    result = similar(store, track_id="seed", k=5, filters=SearchFilters(exclude_same_artist=True), use_index=False)
    assert _ids(result) == [f"x{i}" for i in range(5)]


@pytest.mark.parametrize("bad_id", ["nobody", "q' OR '1'='1", "'); DROP TABLE tracks; --"])
def test_an_unknown_track_id_is_a_clear_error(known, bad_id):
    with pytest.raises(TrackNotFound, match="no track"):
        similar(known, track_id=bad_id)
    with pytest.raises(TrackNotFound):
        track_vector(known, bad_id)
    assert known.counts()["tracks"] == len(KNOWN)


def test_bad_vectors_and_arguments_are_clear_errors(known):
    with pytest.raises(ValueError, match="256 numbers.*shape \\(255,\\)"):
        similar(known, vector=np.ones(255, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        similar(known, vector=np.full(LATENT_DIM, np.nan, np.float32))
    with pytest.raises(ValueError, match="exactly one"):
        similar(known, track_id="q", vector=np.ones(LATENT_DIM, np.float32))
    with pytest.raises(ValueError, match="k must be"):
        similar(known, track_id="q", k=0)
    # A k past any integer the database holds means "every other track", best first.
    everything = similar(known, track_id="q", k=2**63 + 5)
    assert everything.height == len(KNOWN) - 1
    assert everything["track_id"].to_list() == similar(known, track_id="q", k=len(KNOWN) - 1)["track_id"].to_list()
    with pytest.raises(ValueError, match="max_per_artist"):
        SearchFilters(max_per_artist=0)


# -- the index -------------------------------------------------------------------


@pytest.fixture
def clustered_space(register_model, embed_vectors):
    """``clustered_space(store, version, n=2000, seed=0, promote=True)``: n tracks
    around 40 centres, their vectors in ``version``; returns the vectors."""
    def make(store: Store, version: str, n: int = 2000, seed: int = 0, promote: bool = True) -> np.ndarray:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((40, LATENT_DIM))
        vectors = (centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, LATENT_DIM))).astype(np.float32)
        ids = [f"t{i:05d}" for i in range(n)]
        if not store.path.exists() or store.counts()["tracks"] < n:
            rows = [(i, f"artist {j % 300}", f"title {j}", "al", f"al{j % 500}", None, None, 0.0)
                    for j, i in enumerate(ids)]
            store.upsert_tracks(_tracks(rows))
        register_model(store, version, "s", promote=False)
        embed_vectors(store, version, dict(zip(ids, vectors)))
        if promote:
            store.promote(version)
        return vectors

    return make


def _profile(store: Store, statement: str, params: dict) -> dict[str, int]:
    """Rows each table scan emitted when DuckDB ran the statement."""
    import json

    output = store.path.with_suffix(".profile.json")
    with store.connect() as con:
        con.execute("PRAGMA enable_profiling = 'json'")
        con.execute(f"PRAGMA profiling_output = '{output}'")
        con.execute(statement, params).fetchall()
        con.execute("PRAGMA disable_profiling")
    scanned: dict[str, int] = {}

    def walk(node):
        table = (node.get("extra_info") or {}).get("Table", "")
        if table:
            name = table.split(".")[-1]
            scanned[name] = scanned.get(name, 0) + int(node.get("operator_cardinality", 0))
        for child in node.get("children", []):
            walk(child)

    walk(json.loads(output.read_text()))
    return scanned


@pytest.fixture
def indexed(tmp_path, clustered_space) -> tuple[Store, np.ndarray]:
    store = Store(tmp_path / "indexed.duckdb")
    vectors = clustered_space(store, "m1")
    built = search.build_index(store, cells=40, nprobe=6)
    assert built["vectors"] == 2000 and built["cells"] == 40
    return store, vectors


def test_the_index_probes_a_few_cells_and_finds_what_the_exact_scan_finds(indexed):
    store, vectors = indexed
    queries = vectors[:20] + 0.1 * np.random.default_rng(5).standard_normal((20, LATENT_DIM)).astype(np.float32)
    recall = np.mean([
        len(set(_ids(similar(store, vector=q, k=10))) & set(_ids(similar(store, vector=q, k=10, use_index=False))))
        / 10 for q in queries
    ])
    assert recall >= 0.9
    # The rows DuckDB read: a few of the 40 cells of search_cells.
    params = {"vector": queries[0].tolist(), "k": 10, "candidates": 10, "nprobe": 6, "use_index": True,
              "exclude_track_ids": []}
    statement = sql.statement("search_nearest", search.QUERIES)
    scanned = _profile(store, statement, params)
    assert 0 < scanned["search_cells"] < 2000 * 12 / 40
    # Without the index: every embedding.
    assert _profile(store, statement, {**params, "use_index": False})["embeddings"] >= 2000
    # The ad-hoc macro uses the index too.
    con = duckdb.connect(str(store.path), read_only=True)
    try:
        by_macro = [r[0] for r in con.execute("SELECT track_id FROM similar_to('t00000', 10, nprobe := 6)").fetchall()]
    finally:
        con.close()
    assert by_macro == _ids(similar(store, track_id="t00000", k=10, nprobe=6))


def test_without_an_index_or_with_use_index_false_the_exact_scan_answers(tmp_path, clustered_space):
    store = Store(tmp_path / "plain.duckdb")
    vectors = clustered_space(store, "m1")
    q = vectors[3]
    exact = similar(store, vector=q, k=10, use_index=False)
    assert search.index_state(store) is None
    assert similar(store, vector=q, k=10).equals(exact)
    best = np.argsort(-(vectors @ q) / np.linalg.norm(vectors, axis=1))[:10]
    assert _ids(exact) == [f"t{i:05d}" for i in best]


def test_tracks_added_after_the_build_are_found_at_once_then_indexed(indexed, embed_vectors):
    store, vectors = indexed
    store.upsert_tracks(_tracks([("new", "Nu", "New", "N", "n1", None, None, 0.0)]))
    twin = vectors[7] + 0.01
    embed_vectors(store, "m1", {"new": twin.astype(np.float32)})
    # Stale index: the new track is scanned exactly, and found.
    assert _ids(similar(store, vector=vectors[7], k=2, nprobe=1))[:2] == ["t00007", "new"]
    report = search.update_index(store)
    assert report["index"] == "updated" and report["added"] == 1
    assert search.index_state(store).vectors == 2001
    assert _ids(similar(store, vector=vectors[7], k=2, nprobe=1)) == ["t00007", "new"]
    assert search.update_index(store)["added"] == 0
    # A re-encoded track is ranked by its new vector, not the indexed copy.
    embed_vectors(store, "m1", {"new": -vectors[7]})
    assert "new" not in _ids(similar(store, vector=vectors[7], k=5, nprobe=1))
    search.update_index(store)
    assert search.index_state(store).vectors == 2001
    assert "new" not in _ids(similar(store, vector=vectors[7], k=5, nprobe=40))


def test_a_new_current_version_never_uses_the_old_versions_index(indexed, clustered_space):
    store, _ = indexed
    new_vectors = clustered_space(store, "m2", seed=9)
    assert search.index_state(store) is None and search.index_state(store, "m1") is not None
    q = new_vectors[11]
    exact = similar(store, vector=q, k=10, use_index=False)
    assert _ids(similar(store, vector=q, k=10)) == _ids(exact)
    assert _ids(exact)[0] == "t00011"
    report = search.update_index(store)
    assert report["index"] == "built" and report["dropped"] == ["m1"]
    assert search.index_state(store).model_version == "m2" and search.index_state(store, "m1") is None
    assert _ids(similar(store, vector=q, k=1)) == ["t00011"]


def test_cli_recommend_takes_the_filters_and_exact(known, capsys):
    from flows.cli import main as cli

    assert cli(["recommend", "q", "--db", str(known.path), "-k", "3", "--exclude-same-artist",
                "--max-per-artist", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["recommendations"]
    assert [r["track_id"] for r in rows] == ["b1", "c1", "d1"]
    assert set(rows[0]) >= {"artist", "title", "cosine", "time_similarity", "frequency_similarity", "preview_url"}
    search.build_index(known, cells=2, nprobe=1)
    assert cli(["recommend", "q", "--db", str(known.path), "-k", "4", "--exact", "--exclude-duplicates",
                "--min-popularity", "40"]) == 0
    out = capsys.readouterr().out
    for column in ("rank", "artist", "title", "cosine", "time", "frequency", "preview"):
        assert column in out
    assert "open.spotify.com/track/s1" in out and "B three" not in out and "Song - Live" not in out


def test_the_builds_recommendations_name_the_seed_and_each_tracks_style(tmp_path, known):
    from conftest import build_space

    # The known set has no styles (no genre in its searches): None throughout.
    seed, rows = search.recommend(known, "q", k=3)
    assert seed["track_id"] == "q" and _ids(rows) == ["s1", "s2", "b1"]
    assert rows.columns[:8] == list(similar(known, track_id="q", k=3).columns)
    assert rows.select("style", "seed_track_id", "seed", "seed_style").unique().rows() == [
        (None, "q", "Ann - Song", None)]
    # By "artist - title", and None: the space's first track (by artist, title).
    assert search.recommend(known, "Bob - B two", k=1)[0]["track_id"] == "b2"
    assert search.recommend(known, None, k=1)[0]["track_id"] == "s1"  # Ann - Other
    with pytest.raises(TrackNotFound):
        search.recommend(known, "nobody - nothing")
    # A catalog found by genre searches: each track's style and the seed's.
    store = Store(tmp_path / "styled.duckdb")
    space = build_space(store)
    seed, rows = search.recommend(store, "t007", k=5)
    genre = dict(zip(space["ids"], space["genres"]))
    assert rows["style"].to_list() == [genre[track] for track in rows["track_id"]]
    assert rows["seed_style"].unique().to_list() == [genre["t007"]]
    assert rows["seed"].unique().to_list() == [f"{seed['artist']} - {seed['title']}"]
    assert search.track_styles(store, ["t007", "t100", "nope"]) == {"t007": genre["t007"], "t100": genre["t100"]}
