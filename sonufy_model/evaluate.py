"""How good are the recommendations? Precision@k of same-label neighbours.

For each track, its k nearest tracks by cosine (itself excluded) are checked
for the same label (style, artist, album...). Chance level is what a random
ranking scores on the same tracks, so a score means something only next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def precision_at_k(
    vectors: np.ndarray,
    labels: Sequence,
    k: int = 10,
    exclude_groups: Sequence | None = None,
) -> dict[str, float]:
    """Mean precision@k of same-label neighbours, and its chance level.

    exclude_groups: a group per track (e.g. the artist); neighbours of the
    same group are not counted as candidates, as MIR evaluations demand.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(vectors)
    if n != len(labels) or n < 2:
        raise ValueError(f"need at least 2 vectors with one label each, got {n} and {len(labels)}")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    excluded = np.eye(n, dtype=bool)
    if exclude_groups is not None:
        groups = np.asarray(exclude_groups)
        excluded |= groups[:, None] == groups[None, :]
    similarity[excluded] = -np.inf
    same = labels[:, None] == labels[None, :]
    candidates = (~excluded).sum(axis=1)
    usable = candidates >= k
    if not usable.any():
        raise ValueError(f"no track has {k} candidate neighbours")
    top = np.argsort(-similarity[usable], axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(same[usable], top, axis=1)
    chance = (same & ~excluded).sum(axis=1)[usable] / candidates[usable]
    return {
        "precision": float(hits.mean()),
        "chance": float(chance.mean()),
        "k": k,
        "tracks": int(usable.sum()),
    }


# -- ranking metrics over the full ranking ------------------------------------


class EvaluationInputError(ValueError):
    """A bad evaluation input (label name, CSV, database); the message names it."""


def ranking_metrics(
    vectors: np.ndarray,
    labels: Sequence,
    k: int = 10,
    exclude_groups: Sequence | None = None,
    block: int = 256,
    hub_reduction: bool = False,
) -> dict[str, float]:
    """Precision@k and mean average precision of same-label neighbours, with chance.

    Every labelled track is a candidate neighbour of every other; the seed
    itself is never one, nor, with ``exclude_groups`` (the artist), any track
    of the seed's group. A track is evaluated (counted in ``tracks``) when it
    has at least ``k`` candidates and at least one same-label candidate: a
    track alone with its label cannot score and is left out of the averages.

    map is the mean over evaluated tracks of the average precision over the
    *full* ranking of its candidates (not MAP@k). chance is the expected
    precision@k of a random ranking (same-label share of the candidates),
    map_chance the expected AP of a random ranking:
    (R-1)/(N-1) + H_N (N-R) / (N (N-1)) for R same-label among N candidates.
    Similarities are computed ``block`` seeds at a time, so memory grows with
    block × tracks, not tracks². With ``hub_reduction`` neighbours are ranked
    by mutual proximity instead of cosine (see :mod:`sonufy_model.hubness`).
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(vectors)
    if n != len(labels) or n < 2:
        raise ValueError(f"need at least 2 vectors with one label each, got {n} and {len(labels)}")
    groups = None if exclude_groups is None else np.asarray(exclude_groups)
    if groups is not None and len(groups) != n:
        raise ValueError(f"need one group per vector, got {len(groups)} for {n}")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if hub_reduction:
        from sonufy_model import hubness

        mp_mean, mp_std = hubness.similarity_statistics(unit, block)
    precisions: list[np.ndarray] = []
    aps: list[np.ndarray] = []
    chances: list[np.ndarray] = []
    ap_chances: list[np.ndarray] = []
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        similarity = unit[rows] @ unit.T
        if hub_reduction:
            similarity = hubness.mutual_proximity(similarity, mp_mean[rows], mp_std[rows], mp_mean, mp_std)
        excluded = np.zeros((len(rows), n), dtype=bool)
        excluded[np.arange(len(rows)), rows] = True
        if groups is not None:
            excluded |= groups[rows, None] == groups[None, :]
        relevant = (labels[rows, None] == labels[None, :]) & ~excluded
        candidates = (~excluded).sum(axis=1)
        n_relevant = relevant.sum(axis=1)
        usable = (candidates >= k) & (n_relevant > 0)
        if not usable.any():
            continue
        similarity, excluded, relevant = similarity[usable], excluded[usable], relevant[usable]
        candidates, n_relevant = candidates[usable], n_relevant[usable]
        similarity[excluded] = -np.inf
        order = np.argsort(-similarity, axis=1, kind="stable")  # excluded ones sort last
        hits = np.take_along_axis(relevant, order, axis=1)  # never true past the candidates
        precisions.append(hits[:, :k].mean(axis=1))
        ranks = np.arange(1, n + 1)
        aps.append((np.cumsum(hits, axis=1) / ranks * hits).sum(axis=1) / n_relevant)
        chances.append(n_relevant / candidates)
        ap_chances.append(_random_ap(n_relevant, candidates))
    if not precisions:
        raise ValueError(f"no track has {k} candidate neighbours and one of its label among them")
    return {
        "precision": float(np.concatenate(precisions).mean()),
        "map": float(np.concatenate(aps).mean()),
        "chance": float(np.concatenate(chances).mean()),
        "map_chance": float(np.concatenate(ap_chances).mean()),
        "k": k,
        "tracks": int(sum(len(p) for p in precisions)),
    }


def _random_ap(relevant: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Expected average precision of a uniformly random ranking (Bestgen 2015)."""
    r = relevant.astype(np.float64)
    n = candidates.astype(np.float64)
    harmonic = np.array([np.sum(1.0 / np.arange(1, int(m) + 1)) for m in candidates])
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = (r - 1) / (n - 1) + harmonic * (n - r) / (n * (n - 1))
    return np.where(n <= 1, 1.0, expected)


# -- baselines ----------------------------------------------------------------

N_MFCC = 20
MFCC_DIM = N_MFCC + N_MFCC * (N_MFCC + 1) // 2  # mean + upper triangle of the covariance


def mfcc_statistics(spectrograms: np.ndarray, top_db: float = 80.0, chunk: int = 64) -> np.ndarray:
    """Mean and covariance (upper triangle) of 20 MFCCs per stored spectrogram.

    spectrograms: uint8 (tracks × n_mels × frames) as stored, round(255 s)
    with s = (dB + top_db) / top_db; dB is recovered as s·top_db − top_db and
    given to librosa as a log-power mel spectrogram. Returns (tracks, 230),
    not standardised.
    """
    import librosa

    spectrograms = np.asarray(spectrograms)
    if spectrograms.ndim != 3:
        raise ValueError(f"expected tracks × mels × frames, got shape {spectrograms.shape}")
    upper = np.triu_indices(N_MFCC)
    out = np.empty((len(spectrograms), MFCC_DIM), dtype=np.float64)
    for start in range(0, len(spectrograms), chunk):
        s = spectrograms[start : start + chunk].astype(np.float32) / 255.0
        db = s * top_db - top_db
        mfcc = librosa.feature.mfcc(S=db, n_mfcc=N_MFCC)  # (b, 20, frames)
        mean = mfcc.mean(axis=2)
        centred = mfcc - mean[:, :, None]
        cov = centred @ centred.transpose(0, 2, 1) / max(mfcc.shape[2] - 1, 1)
        out[start : start + len(s), :N_MFCC] = mean
        out[start : start + len(s), N_MFCC:] = cov[:, upper[0], upper[1]]
    return out


def standardise_columns(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per dimension (constant dimensions become 0)."""
    features = np.asarray(features, dtype=np.float64)
    scale = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def random_vectors(n: int, dim: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim))


# -- labels -------------------------------------------------------------------

BUILTIN_LABELS = ("artist", "album", "genre")


def parse_label(spec: str) -> tuple[str, str | None, str | None]:
    """'artist' | 'album' | 'genre' | 'csv:PATH:COLUMN' → (name, csv path, column)."""
    if spec in BUILTIN_LABELS:
        return spec, None, None
    if spec.startswith("csv:"):
        path, sep, column = spec[4:].rpartition(":")
        if not sep or not path or not column:
            raise EvaluationInputError(f"--label {spec!r}: expected csv:PATH:COLUMN")
        return f"csv:{column}", path, column
    raise EvaluationInputError(
        f"--label {spec!r}: unknown label; expected artist, album, genre or csv:PATH:COLUMN"
    )


def csv_labels(path: str, column: str) -> dict[str, str]:
    """track_id → label from a CSV with a track_id column and ``column``."""
    import polars as pl

    file = Path(path).expanduser()
    if not file.is_file():
        raise EvaluationInputError(f"--label csv:{path}:{column}: no such file {path}")
    try:
        frame = pl.read_csv(file, infer_schema_length=0)  # every column as text
    except Exception as error:  # polars raises several types for unreadable CSV
        raise EvaluationInputError(f"--label csv:{path}:{column}: unreadable CSV ({error})") from error
    for needed in ("track_id", column):
        if needed not in frame.columns:
            raise EvaluationInputError(
                f"--label csv:{path}:{column}: {path} has no column {needed!r} "
                f"(columns: {', '.join(frame.columns)})"
            )
    frame = frame.filter(pl.col("track_id").is_not_null() & pl.col(column).is_not_null())
    frame = frame.filter(pl.col(column).str.strip_chars() != "")
    return dict(zip(frame["track_id"].to_list(), frame[column].to_list()))


# -- whole evaluations --------------------------------------------------------

SPACES = ("latent", "mfcc", "random")


def evaluate_spaces(
    spaces: dict[str, np.ndarray],
    labels: dict[str, Sequence],
    artists: Sequence,
    k: int = 10,
    artist_filters: Sequence[bool] = (False, True),
    hub_reduced: Sequence[str] = (),
) -> tuple[list[dict], list[str]]:
    """Rows (space, label, artist_filter, k, precision, map, chance, map_chance, tracks).

    spaces: name → (tracks × dim) on the same tracks, in one order.
    labels: name → one label per track (None: unlabelled, left out).
    hub_reduced: names of spaces ranked by mutual proximity instead of cosine.
    Returns the rows and notes on combinations that could not be scored
    (e.g. the artist label with the artist filter: no hit is left).
    """
    artists = np.asarray(artists, dtype=object)
    rows: list[dict] = []
    notes: list[str] = []
    for label_name, values in labels.items():
        values = np.asarray(values, dtype=object)
        keep = np.array([v is not None for v in values], dtype=bool)
        for artist_filter in artist_filters:
            if keep.sum() < 2:
                notes.append(f"{label_name}: fewer than 2 tracks have this label")
                break
            for space_name, vectors in spaces.items():
                try:
                    metrics = ranking_metrics(
                        np.asarray(vectors)[keep],
                        values[keep].astype(str),
                        k,
                        exclude_groups=artists[keep].astype(str) if artist_filter else None,
                        hub_reduction=space_name in hub_reduced,
                    )
                except ValueError as error:
                    notes.append(
                        f"{label_name}, artist filter {'on' if artist_filter else 'off'}: {error}"
                    )
                    break
                rows.append({"space": space_name, "label": label_name, "artist_filter": artist_filter,
                             **metrics})
    return rows, notes


def evaluate_store(
    store,
    label_specs: Sequence[str] = ("genre", "artist"),
    k: int = 10,
    artist_filters: Sequence[bool] = (False, True),
    seed: int = 0,
    record: bool = True,
    hub_reduction: bool = False,
    model_version: str | None = None,
) -> dict:
    """Evaluate the current latent space of ``store`` (or that of ``model_version``)
    against MFCC and random vectors.

    Tracks evaluated: those with a vector of the current model and a
    spectrogram of its set (so every space ranks the same tracks). Returns
    {"model_version", "rows", "notes", "tracks"}; with ``record`` the rows
    are written to the evaluations table. With ``hub_reduction`` the latent
    space is also ranked by mutual proximity, as space "latent+mp", and the
    result has the hubness (k-occurrence skewness) of both rankings.
    """
    parsed = [parse_label(spec) for spec in label_specs]  # bad names fail before any work
    csv_maps = {name: csv_labels(path, column) for name, path, column in parsed if path is not None}
    space = store.evaluation_space(model_version)
    model_version, set_id, frame = space["model_version"], space["set_id"], space["tracks"]
    manifest = store.spectrogram_manifest(set_id)
    manifest = manifest.filter(manifest["track_id"].is_in(frame["track_id"].to_list()))
    if manifest.is_empty():
        raise EvaluationInputError(f"{store.path}: no spectrograms of set {set_id} for the latent space")
    features = _mfcc_per_track(manifest)
    frame = frame.filter(frame["track_id"].is_in(list(features)))
    track_ids = frame["track_id"].to_list()
    labels: dict[str, list] = {}
    for name, _, _ in parsed:
        if name in csv_maps:
            labels[name] = [csv_maps[name].get(t) for t in track_ids]
        else:
            labels[name] = [v if v not in ("",) else None for v in frame[name].to_list()]
    latent = np.array(frame["vector"].to_list(), dtype=np.float64)
    spaces = {
        "latent": latent,
        "mfcc": standardise_columns(np.stack([features[t] for t in track_ids])),
        "random": random_vectors(len(track_ids), latent.shape[1] if latent.ndim == 2 else 256, seed),
    }
    hub_reduced: tuple[str, ...] = ()
    result: dict = {}
    if hub_reduction:
        from sonufy_model.hubness import hubness

        spaces = {"latent": latent, "latent+mp": latent, **{n: v for n, v in spaces.items() if n != "latent"}}
        hub_reduced = ("latent+mp",)
        if len(track_ids) > k:
            result["hubness"] = {name: hubness(latent, k, name in hub_reduced) for name in ("latent", "latent+mp")}
    rows, notes = evaluate_spaces(spaces, labels, frame["artist"].to_list(), k, artist_filters, hub_reduced)
    if record and rows:
        store.record_evaluations(model_version, rows)
    return {"model_version": model_version, "rows": rows, "notes": notes, "tracks": len(track_ids), **result}


def _mfcc_per_track(manifest) -> dict[str, np.ndarray]:
    """Per track, the MFCC statistics of its spectrograms (mean over excerpts)."""
    from sonufy_model.spectrograms import read_spectrograms

    from sonufy_model.encoding import mean_per_track

    chunk = 256  # spectrograms read at a time
    per_clip = np.concatenate(
        [mfcc_statistics(read_spectrograms(manifest.slice(start, chunk))) for start in range(0, manifest.height, chunk)]
    )
    track_ids, means = mean_per_track(manifest["track_id"], per_clip)
    return dict(zip(track_ids.to_list(), means))
