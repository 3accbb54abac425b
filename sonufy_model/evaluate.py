"""How good are the recommendations? Precision@k and MAP of same-label neighbours.

For a query track, its k nearest tracks by cosine (itself excluded) are
checked for the same label (style, artist, album, the folder it lies in, a
column of the user's own CSV...). Chance level is what a random ranking
scores on the same tracks, so a score means something only next to it, and
next to the classic baselines: a naive log-mel summary (mean and spread of
each mel band over time) and MFCC statistics, computed from the same stored
spectrograms.

Every figure comes with a 95% bootstrap interval over the query tracks
(per-query values computed once, the queries resampled), and a large
library is scored on a seeded sample of queries (all tracks stay candidate
neighbours): 5,000 queries among 100k tracks rank in about a minute and a
half on 2 cores, for four spaces and four label and exclusion pairs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from sonufy_model.vectors import unit_rows

#: Query tracks scored per label by default; a larger library is sampled.
QUERIES = 5000
#: Bootstrap resamples of the queries behind each interval.
RESAMPLES = 1000
#: Coverage of the intervals.
LEVEL = 0.95


class EvaluationInputError(ValueError):
    """A bad evaluation input (label name, CSV, database); the message names it."""


# -- bootstrap ----------------------------------------------------------------


def bootstrap_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Means of ``values`` (queries × columns, NaN: no value) over ``resamples``
    resamples of the queries with replacement: (resamples × columns).

    A column's mean skips its NaN entries (paired differences where one side
    has no value), so every column is resampled with the same queries.
    """
    values = np.asarray(values, dtype=np.float64)
    squeeze = values.ndim == 1
    if squeeze:
        values = values[:, None]
    n = len(values)
    if n == 0:
        raise ValueError("no values to resample")
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, 2**22 // n))  # resamples at a time: memory of about 4M draws
    out = np.empty((resamples, values.shape[1]))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        index = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        weights = np.bincount(index.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
        sums = weights @ filled
        counts = weights @ present
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + size] = sums / counts
    return out[:, 0] if squeeze else out


def bootstrap_interval(
    values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-query ``values``."""
    means = bootstrap_means(values, resamples, seed)
    tail = (1.0 - level) / 2 * 100
    low, high = np.nanpercentile(means, [tail, 100 - tail])
    return float(low), float(high)


# -- ranking metrics ----------------------------------------------------------


def _is_missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and np.isnan(value))


def _codes(values: Sequence, unique_missing: bool = False) -> np.ndarray:
    """Integer codes of ``values`` in first-seen order; a missing value (None,
    NaN, "") is -1, or with ``unique_missing`` a negative code of its own
    (equal to nothing else)."""
    table: dict = {}
    codes = np.fromiter((table.setdefault(value, len(table)) for value in values), dtype=np.int64,
                        count=len(values))
    missing_codes = [code for value, code in table.items() if _is_missing(value)]
    if missing_codes:
        missing = np.isin(codes, missing_codes)
        codes[missing] = -np.arange(1, missing.sum() + 1) if unique_missing else -1
    return codes


@dataclass(frozen=True)
class _Task:
    labels: np.ndarray  # code per track, -1 unlabelled
    groups: np.ndarray | None  # code per track (unique when missing): same group, not a candidate
    queries: np.ndarray  # bool per track: scored as a query


def _harmonic(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def _random_ap(relevant: np.ndarray, candidates: np.ndarray, harmonic: np.ndarray | None = None) -> np.ndarray:
    """Expected average precision of a uniformly random ranking (Bestgen 2015):
    (R-1)/(N-1) + H_N (N-R) / (N (N-1)) for R relevant among N candidates."""
    r = np.asarray(relevant, dtype=np.float64)
    n = np.asarray(candidates, dtype=np.float64)
    if harmonic is None:
        harmonic = _harmonic(int(n.max()) if n.size else 0)
    h = harmonic[np.asarray(candidates, dtype=np.int64)]
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = (r - 1) / (n - 1) + h * (n - r) / (n * (n - 1))
    return np.where(n <= 1, 1.0, expected)


def _members(codes: np.ndarray) -> dict[int, np.ndarray]:
    """code → the positions holding it (ascending), for codes ≥ 0."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    return {int(sorted_codes[a]): order[a:b] for a, b in zip(starts, ends) if sorted_codes[a] >= 0}


def _score_tasks(
    unit: np.ndarray, tasks: Sequence[_Task], k: int, block: int = 256, hub: tuple | None = None
) -> list[dict[str, np.ndarray]]:
    """Per task, per scored query: its index, precision@k, average precision,
    and their chance levels.

    The similarities of a block of queries are computed and sorted once for
    every task. A query's candidates: every track but itself and the tracks
    of its group; a candidate without a label is never relevant. Each
    same-label candidate's rank is 1 + the number of candidates scoring
    higher (a binary search in the sorted row, less the excluded tracks
    above it); ties rank in track order, as a stable sort would.
    """
    n = len(unit)
    harmonic = _harmonic(n)
    union = np.flatnonzero(np.any([task.queries for task in tasks], axis=0))
    label_members = {}
    by_label: dict[int, list[int]] = {}  # tasks of one label (several exclusions) share its ranks
    for t, task in enumerate(tasks):
        if id(task.labels) not in label_members:
            label_members[id(task.labels)] = _members(task.labels)
        by_label.setdefault(id(task.labels), []).append(t)
    group_members = [None if task.groups is None else _members(task.groups) for task in tasks]
    out = [{name: [] for name in ("query", "precision", "ap", "chance", "ap_chance")} for _ in tasks]
    for start in range(0, len(union), block):
        rows = union[start : start + block]
        scores = unit[rows] @ unit.T
        if hub is not None:
            from sonufy_model.hubness import mutual_proximity

            mean, std = hub
            scores = mutual_proximity(scores, mean[rows], std[rows], mean, std).astype(np.float32)
        scores[np.arange(len(rows)), rows] = -np.inf  # never one's own neighbour
        ordered = np.sort(scores, axis=1)
        found = [{name: [] for name in ("query", "precision", "ap", "chance", "relevant", "candidates")}
                 for _ in tasks]
        for same_label in by_label.values():
            labels, members = tasks[same_label[0]].labels, label_members[id(tasks[same_label[0]].labels)]
            for i in np.flatnonzero(np.any([tasks[t].queries[rows] for t in same_label], axis=0)):
                seed = rows[i]
                relevant = members[int(labels[seed])]
                relevant = relevant[relevant != seed]
                if not len(relevant):
                    continue
                row, sorted_row = scores[i], ordered[i]
                values = row[relevant]
                by_value = np.argsort(values)
                values, relevant = values[by_value], relevant[by_value]  # sorted needles search faster
                right = np.searchsorted(sorted_row, values, side="right")
                base = n - right + 1  # 1 + how many score strictly higher
                tied = (sorted_row[np.maximum(right - 2, 0)] == values) & (right >= 2)  # another scores the same
                for t in same_label:
                    task = tasks[t]
                    if not task.queries[seed]:
                        continue
                    excluded = np.empty(0, dtype=np.int64)
                    if group_members[t] is not None and task.groups[seed] >= 0:
                        excluded = group_members[t].get(int(task.groups[seed]), excluded)
                        excluded = excluded[excluded != seed]
                    candidates = n - 1 - len(excluded)
                    ranks, kept, kept_values, kept_tied = base, relevant, values, tied
                    if len(excluded):
                        keep = ~np.isin(relevant, excluded, assume_unique=True)
                        kept, kept_values, kept_tied = relevant[keep], values[keep], tied[keep]
                        above = np.sort(row[excluded])
                        ranks = base[keep] - (len(excluded) - np.searchsorted(above, kept_values, side="right"))
                    if candidates < k or not len(kept):
                        continue
                    ranks = ranks.copy()
                    for j in np.flatnonzero(kept_tied):  # equal scores: earlier tracks rank first
                        before = np.count_nonzero(row[: kept[j]] == kept_values[j])
                        before -= np.count_nonzero(row[excluded[excluded < kept[j]]] == kept_values[j])
                        ranks[j] += before
                    ranks.sort()
                    record = found[t]
                    record["query"].append(seed)
                    record["precision"].append(np.count_nonzero(ranks <= k) / k)
                    record["ap"].append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
                    record["chance"].append(len(kept) / candidates)
                    record["relevant"].append(len(kept))
                    record["candidates"].append(candidates)
        for t, record in enumerate(found):
            if not record["query"]:
                continue
            relevant_counts, candidate_counts = np.array(record.pop("relevant")), np.array(record.pop("candidates"))
            out[t]["ap_chance"].append(_random_ap(relevant_counts, candidate_counts, harmonic))
            for name, values in record.items():
                out[t][name].append(np.asarray(values))
    return [
        {name: (np.concatenate(parts) if parts else np.empty(0)) for name, parts in found.items()}
        for found in out
    ]


def summarise(
    per_query: Mapping[str, np.ndarray], k: int, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Means of per-query values, with bootstrap intervals on precision and MAP
    (the same resampled queries for both)."""
    precision, ap = per_query["precision"], per_query["ap"]
    means = bootstrap_means(np.stack([precision, ap], axis=1), resamples, seed)
    tail = (1.0 - LEVEL) / 2 * 100
    (p_low, ap_low), (p_high, ap_high) = np.percentile(means, [tail, 100 - tail], axis=0)
    return {
        "precision": float(precision.mean()),
        "precision_low": float(p_low),
        "precision_high": float(p_high),
        "map": float(ap.mean()),
        "map_low": float(ap_low),
        "map_high": float(ap_high),
        "chance": float(per_query["chance"].mean()),
        "map_chance": float(per_query["ap_chance"].mean()),
        "k": k,
        "tracks": int(len(precision)),
    }


def _query_mask(eligible: np.ndarray, queries, seed: int) -> np.ndarray:
    """Which tracks are scored: every eligible one, or ``queries`` of them at
    random (seeded: the same tracks for every space and model version), or
    the given indices."""
    n = len(eligible)
    if queries is None:
        return eligible.copy()
    if np.ndim(queries) == 0:
        order = np.random.default_rng(seed).permutation(n)
        chosen = order[eligible[order]][: int(queries)]
    else:
        chosen = np.asarray(queries, dtype=np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask & eligible


def _eligible(labels: np.ndarray, min_label_tracks: int = 2) -> np.ndarray:
    """Labelled tracks whose label at least ``min_label_tracks`` tracks have
    (itself included): the possible queries."""
    out = labels >= 0
    if out.any():
        counts = np.bincount(labels[out])
        out[out] = counts[labels[out]] >= max(min_label_tracks, 2)
    return out


def ranking_metrics(
    vectors: np.ndarray,
    labels: Sequence,
    k: int = 10,
    exclude_groups: Sequence | None = None,
    block: int = 256,
    hub_reduction: bool = False,
    queries: int | Sequence[int] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    per_query: bool = False,
    min_label_tracks: int = 2,
) -> dict:
    """Precision@k and mean average precision of same-label neighbours, with
    chance and 95% bootstrap intervals.

    Every track is a candidate neighbour of every other (one without a label,
    None, is never a same-label one); the seed itself is never one, nor, with
    ``exclude_groups`` (the artist, the folder...), any track of the seed's
    group. A labelled track is evaluated (counted in ``tracks``) when at
    least ``min_label_tracks`` tracks have its label, and it has at least
    ``k`` candidates and one same-label candidate: a track alone with its
    label cannot score and is left out of the averages. ``queries``: score
    only this many tracks, drawn at random with ``seed`` (or these indices);
    all stay candidates.

    map is the mean over evaluated tracks of the average precision over the
    *full* ranking of its candidates (not MAP@k). chance is the expected
    precision@k of a random ranking (same-label share of the candidates),
    map_chance the expected AP of a random ranking. ``*_low``/``*_high``:
    the 95% percentile bootstrap interval over the queries. Similarities are
    computed ``block`` seeds at a time, so memory grows with block × tracks,
    not tracks². With ``hub_reduction`` neighbours are ranked by mutual
    proximity instead of cosine (see :mod:`sonufy_model.hubness`). With
    ``per_query`` the result has the per-query values under "per_query".
    """
    n = len(vectors)
    if n != len(labels) or n < 2:
        raise ValueError(f"need at least 2 vectors with one label each, got {n} and {len(labels)}")
    if exclude_groups is not None and len(exclude_groups) != n:
        raise ValueError(f"need one group per vector, got {len(exclude_groups)} for {n}")
    codes = _codes(list(labels))
    groups = None if exclude_groups is None else _codes(list(exclude_groups), unique_missing=True)
    unit = unit_rows(vectors, np.float32)
    hub = _hub_statistics(unit, block) if hub_reduction else None
    task = _Task(codes, groups, _query_mask(_eligible(codes, min_label_tracks), queries, seed))
    [found] = _score_tasks(unit, [task], k, block, hub)
    if not len(found["query"]):
        raise ValueError(f"no track has {k} candidate neighbours and one of its label among them")
    result = summarise(found, k, resamples, seed)
    if per_query:
        result["per_query"] = found
    return result


def _hub_statistics(unit: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    from sonufy_model import hubness

    return hubness.similarity_statistics(unit.astype(np.float64), block)


def precision_at_k(
    vectors: np.ndarray,
    labels: Sequence,
    k: int = 10,
    exclude_groups: Sequence | None = None,
) -> dict[str, float]:
    """Mean precision@k of same-label neighbours, and its chance level.

    exclude_groups: a group per track (e.g. the artist); neighbours of the
    same group are not counted as candidates, as MIR evaluations demand.
    Unlike :func:`ranking_metrics`, a track with no same-label candidate is
    still scored (it scores 0).
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(vectors)
    if n != len(labels) or n < 2:
        raise ValueError(f"need at least 2 vectors with one label each, got {n} and {len(labels)}")
    unit = unit_rows(vectors)
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


# -- baselines ----------------------------------------------------------------

N_MFCC = 20
MFCC_DIM = N_MFCC + N_MFCC * (N_MFCC + 1) // 2  # mean + upper triangle of the covariance
TOP_DB = 80.0


def mfcc_statistics(spectrograms: np.ndarray, top_db: float = TOP_DB, chunk: int = 64) -> np.ndarray:
    """Mean and covariance (upper triangle) of 20 MFCCs per stored spectrogram.

    spectrograms: uint8 (tracks × n_mels × frames) as stored, round(255 s)
    with s = (dB + top_db) / top_db; dB is recovered as s·top_db − top_db and
    given to librosa as a log-power mel spectrogram. Returns (tracks, 230),
    not standardised. On an absolute-level set (audio.MelParams.level) the
    recovered dB are off by an affine map; MFCCs are linear in dB (the offset
    lands in c0's mean), so after the standardisation that precedes ranking
    the neighbours are the same.
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


def logmel_statistics(spectrograms: np.ndarray, top_db: float = TOP_DB) -> np.ndarray:
    """The naive baseline: mean and standard deviation over time of each mel
    band, in dB, per stored spectrogram: (tracks, 2 · n_mels), means first,
    not standardised. The stored uint8 is round(255 (dB + top_db) / top_db);
    on an absolute-level set the dB are off by an affine map per column, which
    the standardisation before ranking removes."""
    spectrograms = np.asarray(spectrograms)
    if spectrograms.ndim != 3:
        raise ValueError(f"expected tracks × mels × frames, got shape {spectrograms.shape}")
    s = spectrograms.astype(np.float32)
    frames = s.shape[2]
    scale = top_db / 255.0
    mean = s.sum(axis=2, dtype=np.float64) / frames
    square = np.einsum("bmt,bmt->bm", s, s, dtype=np.float64) / frames  # one pass, not std's two
    std = np.sqrt(np.maximum(square - mean * mean, 0.0))
    return np.concatenate([mean * scale - top_db, std * scale], axis=1)


#: Baseline feature sets: name → (function of a uint8 spectrogram batch, dimension for n_mels).
BASELINES = {
    "naive": logmel_statistics,
    "mfcc": mfcc_statistics,
}


def standardise_columns(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per dimension (constant dimensions become 0)."""
    features = np.asarray(features, dtype=np.float64)
    scale = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def random_vectors(n: int, dim: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim))


def baseline_features(manifest, kinds: Sequence[str], chunk: int = 256) -> dict[str, dict[str, np.ndarray]]:
    """Per baseline kind, per track, its features: the mean over the track's
    excerpts of each excerpt's statistics. ``manifest``: track_id, shard,
    row; the spectrograms are read ``chunk`` at a time, once for every kind."""
    from sonufy_model.encoding import mean_per_track
    from sonufy_model.spectrograms import read_spectrograms

    per_clip: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    for start in range(0, manifest.height, chunk):
        batch = read_spectrograms(manifest.slice(start, chunk))
        for kind in kinds:
            per_clip[kind].append(BASELINES[kind](batch))
    out: dict[str, dict[str, np.ndarray]] = {}
    for kind in kinds:
        track_ids, means = mean_per_track(manifest["track_id"], np.concatenate(per_clip[kind]))
        out[kind] = dict(zip(track_ids.to_list(), means))
    return out


# -- labels -------------------------------------------------------------------

BUILTIN_LABELS = ("artist", "album", "genre")


@dataclass(frozen=True)
class LabelSpec:
    """A parsed label: a built-in column, a folder level, or a CSV column."""

    spec: str
    name: str  # as in the rows: 'artist', 'folder', 'folder:2', 'csv:composer'
    kind: str  # 'builtin' | 'folder' | 'csv'
    levels: int = 1
    csv_path: str | None = None
    column: str | None = None


def label_spec(spec: str, option: str = "--label") -> LabelSpec:
    """'artist' | 'album' | 'genre' | 'folder' | 'folder:N' | 'csv:PATH:COLUMN'."""
    if spec in BUILTIN_LABELS:
        return LabelSpec(spec, spec, "builtin")
    if spec == "folder" or spec.startswith("folder:"):
        levels_text = spec.partition(":")[2] or "1"
        if not levels_text.isdigit() or int(levels_text) < 1:
            raise EvaluationInputError(f"{option} {spec!r}: expected folder or folder:N with N ≥ 1")
        levels = int(levels_text)
        return LabelSpec(spec, "folder" if levels == 1 else f"folder:{levels}", "folder", levels=levels)
    if spec.startswith("csv:"):
        path, sep, column = spec[4:].rpartition(":")
        if not sep or not path or not column:
            raise EvaluationInputError(f"{option} {spec!r}: expected csv:PATH:COLUMN")
        return LabelSpec(spec, f"csv:{column}", "csv", csv_path=path, column=column)
    raise EvaluationInputError(
        f"{option} {spec!r}: unknown label; expected artist, album, genre, folder, folder:N or csv:PATH:COLUMN"
    )


def parse_label(spec: str) -> tuple[str, str | None, str | None]:
    """The label's row name, CSV path and column (None, None for the others)."""
    parsed = label_spec(spec)
    return parsed.name, parsed.csv_path, parsed.column


def read_label_csv(path: str, column: str, option: str = "--label"):
    """The CSV's key column ('track_id', else 'path') and ``column``, as text,
    without rows missing either. Returns (key name, frame)."""
    import polars as pl

    where = f"{option} csv:{path}:{column}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise EvaluationInputError(f"{where}: no such file {path}")
    try:
        frame = pl.read_csv(file, infer_schema_length=0)  # every column as text
    except Exception as error:  # polars raises several types for unreadable CSV
        raise EvaluationInputError(f"{where}: unreadable CSV ({error})") from error
    key = next((name for name in ("track_id", "path") if name in frame.columns), None)
    if column not in frame.columns or key is None:
        missing = repr(column) if column not in frame.columns else "'track_id' or 'path'"
        raise EvaluationInputError(
            f"{where}: {path} has no column {missing} (columns: {', '.join(frame.columns)})"
        )
    frame = frame.select(key, column).filter(pl.col(key).is_not_null() & pl.col(column).is_not_null())
    frame = frame.filter(pl.col(column).str.strip_chars() != "")
    return key, frame


def csv_labels(path: str, column: str, tracks=None, option: str = "--label") -> dict[str, str]:
    """track_id → label from a CSV with ``column`` and a track_id or a path column.

    A path is a track's file: absolute, or relative to its folder source's
    root (``tracks``: track_id, path, root, as :meth:`Store.evaluation_space`
    gives them). A path-keyed CSV none of whose paths is a track's file is an
    error naming the file.
    """
    key, frame = read_label_csv(path, column, option)
    if key == "track_id":
        return dict(zip(frame["track_id"].to_list(), frame[column].to_list()))
    absolute, relative = _path_index(tracks)
    labels: dict[str, str] = {}
    resolved: dict[str, list[str]] | None = None
    for file, label in zip(frame["path"].to_list(), frame[column].to_list()):
        file = os.path.expanduser(file.strip())
        if os.path.isabs(file):
            found = absolute.get(os.path.normpath(file), [])
            if not found:
                if resolved is None:
                    resolved = {}
                    for name, ids in absolute.items():
                        resolved.setdefault(os.path.realpath(name), []).extend(ids)
                found = resolved.get(os.path.realpath(file), [])
        else:
            found = relative.get(PurePath(os.path.normpath(file)).as_posix(), [])
        for track_id in found:
            labels[track_id] = label
    if not labels and frame.height:
        roots = sorted({root for root in (tracks["root"].to_list() if tracks is not None else []) if root})
        where = ", ".join(roots) if roots else "no folder source in this database"
        raise EvaluationInputError(
            f"{option} csv:{path}:{column}: none of the {frame.height} paths in {path} is the file of a "
            f"track in the latent space (paths are absolute, or relative to the folder source's root: {where})"
        )
    return labels


def _relative(file: str, root: str | None) -> str | None:
    """``file``'s path under ``root`` (None when there is no root or it lies outside)."""
    if not root:
        return None
    inside = os.path.relpath(file, root)
    return None if inside == os.pardir or inside.startswith(os.pardir + os.sep) else inside


def _path_index(tracks) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Tracks by absolute file path, and by path relative to their folder root."""
    absolute: dict[str, list[str]] = {}
    relative: dict[str, list[str]] = {}
    if tracks is None:
        return absolute, relative
    for track_id, file, root in zip(tracks["track_id"].to_list(), tracks["path"].to_list(),
                                    tracks["root"].to_list()):
        if not file:
            continue
        file = os.path.normpath(file)
        absolute.setdefault(file, []).append(track_id)
        inside = _relative(file, root)
        if inside is not None:
            relative.setdefault(PurePath(inside).as_posix(), []).append(track_id)
    return absolute, relative


def folder_labels(tracks, levels: int = 1) -> list[str | None]:
    """Per track, the folder ``levels`` up from its file (1: the folder it lies
    in, its album or soundtrack), as a path relative to the folder source's
    root, so that two albums of the same name by two artists differ. None for
    a track without a file, or whose folder would be the root or above it."""
    out: list[str | None] = []
    for file, root in zip(tracks["path"].to_list(), tracks["root"].to_list()):
        if not file:
            out.append(None)
            continue
        file = os.path.normpath(file)
        inside = _relative(file, root)
        if inside is not None:
            parts = PurePath(inside).parts
            out.append("/".join(parts[:-levels]) if len(parts) > levels else None)
        else:
            parents = PurePath(file).parents
            out.append(str(parents[levels - 1]) if levels < len(parents) else None)
    return out


def resolve_labels(spec: LabelSpec, tracks, csv_cache: dict | None = None, option: str = "--label") -> list:
    """One value per row of ``tracks`` (None: unlabelled)."""
    if spec.kind == "builtin":
        return [value if value != "" else None for value in tracks[spec.name].to_list()]
    if spec.kind == "folder":
        return folder_labels(tracks, spec.levels)
    cache = csv_cache if csv_cache is not None else {}
    key = (spec.csv_path, spec.column)
    if key not in cache:
        cache[key] = csv_labels(spec.csv_path, spec.column, tracks, option)
    mapping = cache[key]
    return [mapping.get(track_id) for track_id in tracks["track_id"].to_list()]


# -- whole evaluations --------------------------------------------------------

SPACES = ("latent", "naive", "mfcc", "random")
NO_EXCLUSION = "none"


def _exclusion_text(name: str | None) -> str:
    return "no exclusion" if name is None else f"same {name} excluded"


def evaluate_spaces(
    spaces: dict[str, np.ndarray],
    labels: dict[str, Sequence],
    exclusions: Mapping[str | None, Sequence | None] | None = None,
    k: int = 10,
    hub_reduced: Sequence[str] = (),
    queries: int | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    per_query: bool = False,
    block: int = 256,
    min_label_tracks: int = 2,
) -> tuple[list[dict], list[str]]:
    """Rows (space, label, exclude_same, artist_filter, k, precision and MAP
    with intervals, chance, map_chance, tracks) and notes.

    spaces: name → (tracks × dim) on the same tracks, in one order.
    labels: name → one label per track (None: unlabelled; such a track is
    no query for that label, and a candidate that never shares the label).
    min_label_tracks: a query's label has at least this many tracks.
    exclusions: name → one value per track: a query's neighbours sharing its
    value are not candidates (None as the name: a row without exclusion).
    Default: no exclusion only. ``artist_filter`` is exclude_same == 'artist'.
    queries: how many query tracks per label (seeded sample; None: all).
    hub_reduced: names of spaces ranked by mutual proximity instead of cosine.
    per_query: each row also carries its per-query values ("per_query":
    query index, precision, ap).
    Notes say which combinations could not be scored and why.
    """
    exclusions = dict(exclusions) if exclusions is not None else {None: None}
    notes: list[str] = []
    tasks: list[tuple[str, str | None, _Task]] = []
    group_codes = {name: None if values is None else _codes(list(values), unique_missing=True)
                   for name, values in exclusions.items()}
    for label_name, values in labels.items():
        codes = _codes(list(values))
        if (codes >= 0).sum() < 2:
            notes.append(f"{label_name}: fewer than 2 tracks have this label")
            continue
        query_mask = _query_mask(_eligible(codes, min_label_tracks), queries, seed)
        for exclusion, groups in group_codes.items():
            if exclusion == label_name:
                notes.append(f"{label_name}, {_exclusion_text(exclusion)}: every same-label neighbour is excluded")
                continue
            tasks.append((label_name, exclusion, _Task(codes, groups, query_mask)))
    rows: list[dict] = []
    if not tasks or not spaces:
        return rows, notes
    scored: dict[str, list[dict]] = {}
    for space_name, vectors in spaces.items():
        unit = unit_rows(vectors, np.float32)
        hub = _hub_statistics(unit, block) if space_name in hub_reduced else None
        scored[space_name] = _score_tasks(unit, [task for _, _, task in tasks], k, block, hub)
    for t, (label_name, exclusion, _) in enumerate(tasks):
        if not len(next(iter(scored.values()))[t]["query"]):
            notes.append(f"{label_name}, {_exclusion_text(exclusion)}: no track has {k} candidate "
                         "neighbours and one of its label among them")
            continue
        for space_name in spaces:
            found = scored[space_name][t]
            row = {"space": space_name, "label": label_name, "exclude_same": exclusion,
                   "artist_filter": exclusion == "artist", **summarise(found, k, resamples, seed)}
            if per_query:
                row["per_query"] = {name: found[name] for name in ("query", "precision", "ap")}
            rows.append(row)
    return rows, notes


def exclusion_specs(exclude_same: Sequence[str | None] | None, artist_filters: Sequence[bool] | None):
    """The exclusions asked for: label specs, 'none'/None for no exclusion.
    Default: none and artist (the artist filter off and on)."""
    if exclude_same is None:
        exclude_same = [("artist" if on else None) for on in artist_filters] if artist_filters is not None \
            else [None, "artist"]
    out: list[LabelSpec | None] = []
    for spec in exclude_same:
        parsed = None if spec in (None, NO_EXCLUSION) else label_spec(spec, "--exclude-same")
        if parsed not in out:
            out.append(parsed)
    return out


def evaluate_store(
    store,
    label_specs: Sequence[str] = ("genre", "artist"),
    k: int = 10,
    artist_filters: Sequence[bool] | None = None,
    seed: int = 0,
    record: bool = True,
    hub_reduction: bool = False,
    model_version: str | None = None,
    exclude_same: Sequence[str | None] | None = None,
    queries: int | None = QUERIES,
    resamples: int = RESAMPLES,
    spaces: Sequence[str] = SPACES,
    per_query: bool = False,
    cache: bool = True,
    min_label_tracks: int = 2,
) -> dict:
    """Evaluate the current latent space of ``store`` (or that of ``model_version``)
    against the naive log-mel and MFCC baselines and random vectors.

    Tracks evaluated: those with a vector of the model and, when a baseline
    is asked for, a spectrogram of its set (so every space ranks the same
    tracks). ``exclude_same``: label specs whose same-value neighbours are
    not candidates, 'none' for rows without exclusion (default: none and
    artist; ``artist_filters`` (False, True) says the same the old way).
    ``queries``: query tracks per label, a seeded sample of the labelled
    ones (None: all); a query's label has at least ``min_label_tracks``
    tracks; every track is a candidate neighbour (an unlabelled one never
    shares the seed's label). Baseline features are cached in the store per
    spectrogram set (with ``cache``).

    Returns {"model_version", "rows", "notes", "tracks", "queries",
    "resamples", "level"}; with ``record`` the rows are written to the
    evaluations table. With ``per_query`` each row has its per-query values,
    queries as track ids ("per_query": track_id, precision, ap). With
    ``hub_reduction`` the latent space is also ranked by mutual proximity,
    as space "latent+mp", and the result has the hubness (k-occurrence
    skewness) of both rankings.
    """
    parsed = [label_spec(spec) for spec in label_specs]  # bad names fail before any work
    excluded = exclusion_specs(exclude_same, artist_filters)
    unknown = [name for name in spaces if name not in SPACES]
    if unknown:
        raise EvaluationInputError(f"unknown space {unknown[0]!r}; expected one of {', '.join(SPACES)}")
    for specs, option in ((parsed, "--label"), ([e for e in excluded if e is not None], "--exclude-same")):
        for spec in specs:
            if spec.kind == "csv":  # a missing file or column fails before any work
                read_label_csv(spec.csv_path, spec.column, option)
    space = store.evaluation_space(model_version)
    model_version, set_id, frame = space["model_version"], space["set_id"], space["tracks"]
    kinds = [name for name in spaces if name in BASELINES]
    features: dict[str, dict[str, np.ndarray]] = {}
    if kinds:
        features = _baseline_features(store, set_id, frame["track_id"].to_list(), kinds, cache)
        with_features = set(features[kinds[0]])
        frame = frame.filter(frame["track_id"].is_in(list(with_features)))
        if frame.is_empty():
            raise EvaluationInputError(f"{store.path}: no spectrograms of set {set_id} for the latent space")
    track_ids = frame["track_id"].to_list()
    csv_cache: dict = {}
    labels = {spec.name: resolve_labels(spec, frame, csv_cache) for spec in parsed}
    exclusions = {None if spec is None else spec.name:
                  None if spec is None else resolve_labels(spec, frame, csv_cache, "--exclude-same")
                  for spec in excluded}
    latent = np.array(frame["vector"].to_list(), dtype=np.float32)
    vectors: dict[str, np.ndarray] = {}
    for name in spaces:
        if name == "latent":
            vectors["latent"] = latent
            if hub_reduction:
                vectors["latent+mp"] = latent
        elif name == "random":
            vectors["random"] = random_vectors(len(track_ids), latent.shape[1] if latent.ndim == 2 else 256, seed)
        else:
            vectors[name] = standardise_columns(np.stack([features[name][t] for t in track_ids]))
    hub_reduced: tuple[str, ...] = ("latent+mp",) if hub_reduction and "latent" in spaces else ()
    result: dict = {}
    if hub_reduced and len(track_ids) > k:
        from sonufy_model.hubness import hubness

        result["hubness"] = {name: hubness(latent, k, name in hub_reduced) for name in ("latent", "latent+mp")}
    rows, notes = evaluate_spaces(vectors, labels, exclusions, k, hub_reduced, queries, resamples, seed, per_query,
                                  min_label_tracks=min_label_tracks)
    if per_query:
        ids = np.asarray(track_ids, dtype=object)
        for row in rows:
            found = row["per_query"]
            row["per_query"] = {"track_id": ids[found["query"]].tolist(), "precision": found["precision"],
                                "ap": found["ap"]}
    if record and rows:
        store.record_evaluations(model_version, rows)
    return {"model_version": model_version, "rows": rows, "notes": notes, "tracks": len(track_ids),
            "queries": queries, "resamples": resamples, "level": LEVEL, **result}


# -- comparing two evaluations ---------------------------------------------------


def latent_score(result: dict | None) -> float | None:
    """The latent space's mean precision@k over its rows (every label, with
    and without the artist filter)."""
    if not result:
        return None
    scores = [row["precision"] for row in result["rows"] if row["space"] == "latent"]
    return sum(scores) / len(scores) if scores else None


def row_key(row: dict) -> tuple:
    """What pairs an evaluation row with another evaluation's: its label and what it excludes."""
    return row["label"], row.get("exclude_same", "artist" if row.get("artist_filter") else None)


def paired_difference(candidate: dict, current: dict, resamples: int = RESAMPLES, seed: int = 0) -> dict | None:
    """Candidate minus current latent precision@k, paired on the same queries.

    For each latent row both evaluations have (same label and exclusion), the
    per-query differences on the query tracks both scored; the statistic is
    the mean over rows of each row's mean difference (what
    :func:`latent_score` differs by on those queries). Its 95% interval: the
    query tracks resampled with replacement, the same draw for every row.
    Returns {"difference", "low", "high", "queries", "rows"}, or None when
    no latent row and query is common to both.
    """
    def per_query(result: dict) -> dict[tuple, dict[str, float]]:
        return {row_key(row): dict(zip(row["per_query"]["track_id"], row["per_query"]["precision"]))
                for row in result["rows"] if row["space"] == "latent" and "per_query" in row}

    before, after = per_query(current), per_query(candidate)
    columns = []
    for key in after.keys() & before.keys():
        common = after[key].keys() & before[key].keys()
        if common:
            columns.append({track: after[key][track] - before[key][track] for track in common})
    if not columns:
        return None
    tracks = sorted(set().union(*columns))
    position = {track: i for i, track in enumerate(tracks)}
    matrix = np.full((len(tracks), len(columns)), np.nan)
    for j, column in enumerate(columns):
        for track, difference in column.items():
            matrix[position[track], j] = difference
    observed = float(np.mean(np.nanmean(matrix, axis=0)))
    resampled = bootstrap_means(matrix, resamples, seed).mean(axis=1)
    tail = (1.0 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(resampled, [tail, 100 - tail])
    return {"difference": observed, "low": float(low), "high": float(high),
            "queries": len(tracks), "rows": len(columns)}


def should_promote(candidate: dict | None, current: dict | None, tolerance: float, k: int) -> tuple[bool, str]:
    """Whether a candidate replaces the current version, from their
    evaluations (:func:`evaluate_store` with ``per_query``, as the retrain flow's
    ``evaluate_version`` runs it).

    Paired on the same query tracks: the candidate is promoted unless the 95%
    bootstrap interval of (candidate − current) latent precision@k lies
    entirely below ``-tolerance`` (0: below zero), i.e. unless it is worse
    beyond the noise of the queries. The reason says the difference and its
    interval.
    """
    if current is None:
        return candidate is not None, "no current version to compare with"
    if candidate is None or latent_score(candidate) is None:
        return False, "the candidate could not be scored"
    if latent_score(current) is None:
        return True, "the current version could not be scored"
    paired = paired_difference(candidate, current)
    if paired is None:
        return False, "the candidate and the current version share no scored query track"
    worse = paired["high"] < -tolerance
    margin = f"below {-tolerance:g}" if tolerance else "below zero"
    return not worse, (
        f"latent precision@{k} candidate − current {paired['difference']:+.4f} "
        f"[{paired['low']:+.4f}, {paired['high']:+.4f}] (95% paired bootstrap over {paired['queries']} "
        f"queries, {paired['rows']} rows; {latent_score(candidate):.4f} vs {latent_score(current):.4f}): "
        + (f"worse (the whole interval is {margin})" if worse else "not worse")
    )


def _baseline_features(store, set_id: str, track_ids: Sequence[str], kinds: Sequence[str],
                       cache: bool) -> dict[str, dict[str, np.ndarray]]:
    """Per kind, per track with a spectrogram of ``set_id``: its baseline
    features, from the store's cache where still valid, else computed (and
    cached) from the spectrograms."""
    manifest = store.baseline_manifest(set_id)
    manifest = manifest.filter(manifest["track_id"].is_in(list(track_ids)))
    features = {kind: (store.cached_baseline_features(set_id, kind) if cache else {}) for kind in kinds}
    wanted = set(manifest["track_id"].to_list())
    for kind in kinds:
        features[kind] = {t: v for t, v in features[kind].items() if t in wanted}
    missing = sorted(wanted - set.intersection(*(set(features[kind]) for kind in kinds)))
    if missing:
        todo = manifest.filter(manifest["track_id"].is_in(missing))
        computed = baseline_features(todo, kinds)
        for kind in kinds:
            features[kind].update(computed[kind])
            if cache:
                store.record_baseline_features(set_id, kind, computed[kind], todo)
    return features
