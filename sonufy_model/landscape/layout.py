"""The layout of a landscape: UMAP in two dimensions, its n_neighbors rule,
and the fitted model saved next to a model version (``umap.joblib``)."""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

UMAP_FILENAME = "umap.joblib"
#: Beside it: what the fit was made with (JSON), read without unpickling the
#: UMAP model, so that placing new tracks never imports UMAP.
FIT_INFO_FILENAME = "umap.json"
#: UMAP's spectral initialisation needs more points than this.
MIN_POINTS = 4
_FORMAT = 1


#: The bounds of the scaled n_neighbors.
MIN_NEIGHBOURS, MAX_NEIGHBOURS = 10, 500
#: min_dist of every landscape.
MIN_DIST = 0.1


def scaled_neighbours(n: int) -> int:
    """UMAP n_neighbors for ``n`` points: round(sqrt(n)), clamped to [10, 500].

    n_neighbors is the size of the neighbourhood UMAP keeps: a fixed 500
    (the seed's, for 278,000 tracks) makes every point's neighbourhood the
    whole of a library of a few hundred tracks, and the map one disc. With
    sqrt(n) a neighbourhood is a vanishing share of a growing library
    (1/sqrt(n): 22 of 475 tracks, 15 of 240), about the size of an album or
    soundtrack in a small one, and the seed's own setting at the seed's size
    (sqrt(278,000) = 527, clamped to 500: the cost of the fit grows with it).
    Below 10 (libraries under 100 tracks) the neighbour graph falls apart into
    islands of a few points; UMAP's own default is 15.
    """
    return int(min(MAX_NEIGHBOURS, max(MIN_NEIGHBOURS, round(math.sqrt(max(n, 0))))))


@dataclass(frozen=True)
class UmapParams:
    """UMAP settings of one landscape. ``n_neighbors`` None: scaled to the
    number of points (:func:`scaled_neighbours`); either way it is clipped
    below the number of points when fitting (see :meth:`for_points`).

    min_dist 0.1 (UMAP's default) lets the points of one neighbourhood pack
    together, so that groups read as groups; the seed's 0.5 spread every point
    evenly, which at a few hundred tracks makes a uniform disc."""

    n_neighbors: int | None = None
    min_dist: float = MIN_DIST
    metric: str = "cosine"
    random_state: int | None = 42

    def __post_init__(self) -> None:
        if self.n_neighbors is not None and (
            isinstance(self.n_neighbors, bool) or not isinstance(self.n_neighbors, int) or self.n_neighbors < 2
        ):
            raise ValueError(f"n_neighbors must be a whole number of at least 2, got {self.n_neighbors!r}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise ValueError(f"min_dist must lie in [0, 1] (UMAP's spread is 1), got {self.min_dist!r}")

    def for_points(self, n: int) -> "UmapParams":
        """These settings for ``n`` points: n_neighbors scaled (when None) and
        at most n - 1."""
        wanted = scaled_neighbours(n) if self.n_neighbors is None else self.n_neighbors
        return UmapParams(max(2, min(wanted, n - 1)), self.min_dist, self.metric, self.random_state)


TRACK_PARAMS = UmapParams(n_neighbors=None, min_dist=MIN_DIST)
GROUP_PARAMS = UmapParams(n_neighbors=None, min_dist=MIN_DIST)
#: What every landscape was fitted with before n_neighbors scaled: a saved
#: fit made with these by default (no "rule" in the file) is refitted.
LEGACY_PARAMS = UmapParams(n_neighbors=500, min_dist=0.5)
#: Written into each saved fit: the rule its default parameters came from.
PARAMS_RULE = "sqrt-neighbours-v1"


# -- UMAP ----------------------------------------------------------------------


def _matrix(vectors: Any, what: str) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array of vectors, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what}: {int((~np.isfinite(matrix)).any(axis=1).sum())} vectors are not finite")
    return matrix


@dataclass
class FittedUmap:
    """A UMAP model fitted on one model version's tracks."""

    reducer: Any
    params: UmapParams  # as asked, before clipping
    used: UmapParams  # as fitted
    n_fitted: int
    model_version: str = ""
    #: The rule of the default parameters when it was saved; None in a file
    #: saved before the rule (its defaults were LEGACY_PARAMS).
    rule: str | None = PARAMS_RULE

    def transform(self, vectors: Any) -> np.ndarray:
        """Points for new vectors, by the fitted model (no refit)."""
        matrix = _matrix(vectors, "vectors to place")
        if matrix.shape[1] != self.reducer._raw_data.shape[1]:
            raise ValueError(
                f"vectors to place have {matrix.shape[1]} dimensions; the landscape of "
                f"{self.model_version!r} was fitted on {self.reducer._raw_data.shape[1]}"
            )
        _umap_with_cached_kernels()  # transform's kernels too
        return np.asarray(self.reducer.transform(matrix), dtype=np.float32)

    def save(self, path: Path) -> Path:
        """Write the model (without what only refitting needs) to ``path``."""
        import copy

        import joblib

        slim = copy.copy(self.reducer)
        # Kept: the data, the embedding and the neighbour index transform
        # uses. Dropped: the fuzzy graph and the fit's k-NN arrays (hundreds of
        # MB at 50,000 tracks with 500 neighbours); transform does not read them.
        slim.graph_ = None
        for name in ("_knn_indices", "_knn_dists", "graph_dists_"):
            if hasattr(slim, name):
                setattr(slim, name, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        joblib.dump(
            {"format": _FORMAT, "model_version": self.model_version, "params": asdict(self.params),
             "used": asdict(self.used), "n_fitted": self.n_fitted, "rule": self.rule, "reducer": slim},
            partial,
        )
        partial.replace(path)
        self.info().write(path)
        return path

    def info(self) -> "FitInfo":
        return FitInfo(self.params, self.used, self.n_fitted, self.model_version, self.rule)

    @classmethod
    def load(cls, path: Path, model_version: str | None = None) -> "FittedUmap":
        import joblib

        try:
            saved = joblib.load(path)
        except FileNotFoundError:
            raise
        except Exception as error:  # a truncated or foreign file
            raise ValueError(f"{path}: not a saved Sonufy landscape ({error}); rerun with --refit") from None
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a saved Sonufy landscape (format {_FORMAT}); rerun with --refit")
        if model_version is not None and saved["model_version"] != model_version:
            raise ValueError(
                f"{path}: fitted for model version {saved['model_version']!r}, not {model_version!r}"
            )
        return cls(
            reducer=saved["reducer"], params=UmapParams(**saved["params"]), used=UmapParams(**saved["used"]),
            n_fitted=saved["n_fitted"], model_version=saved["model_version"], rule=saved.get("rule"),
        )


@dataclass(frozen=True)
class FitInfo:
    """What a saved fit was made with, without the model: enough to decide
    whether to place new tracks or refit (see :func:`read_fit_info`)."""

    params: UmapParams  # as asked, before clipping
    used: UmapParams  # as fitted
    n_fitted: int
    model_version: str
    rule: str | None

    def write(self, model_path: Path) -> Path:
        """Write ``umap.json`` beside ``model_path``, atomically."""
        import json

        path = Path(model_path).with_name(FIT_INFO_FILENAME)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(
            {"format": _FORMAT, "model_version": self.model_version, "params": asdict(self.params),
             "used": asdict(self.used), "n_fitted": self.n_fitted, "rule": self.rule}, indent=1))
        partial.replace(path)
        return path


def read_fit_info(model_path: Path, model_version: str | None = None) -> FitInfo:
    """What the fit saved at ``model_path`` (``umap.joblib``) was made with,
    from the ``umap.json`` beside it. A fit saved before that file existed
    (or whose file is unreadable, or older than the model's) is loaded once
    (that imports UMAP) and the file written, so later runs read the JSON
    alone. FileNotFoundError when there is no saved fit."""
    model_path = Path(model_path)
    model_mtime = model_path.stat().st_mtime_ns  # FileNotFoundError: no fit
    info = _saved_info(model_path.with_name(FIT_INFO_FILENAME), model_mtime)
    if info is None:
        info = FittedUmap.load(model_path, model_version).info()
        info.write(model_path)
    if model_version is not None and info.model_version != model_version:
        raise ValueError(f"{model_path}: fitted for model version {info.model_version!r}, not {model_version!r}")
    return info


def _saved_info(path: Path, model_mtime: int) -> FitInfo | None:
    """The FitInfo in ``path``; None when it is missing, unreadable, of another
    format, or older than the model file it describes."""
    import json

    try:
        if path.stat().st_mtime_ns < model_mtime:
            return None
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            return None
        return FitInfo(UmapParams(**saved["params"]), UmapParams(**saved["used"]), int(saved["n_fitted"]),
                       str(saved["model_version"]), saved.get("rule"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@functools.cache
def _umap_with_cached_kernels() -> Any:
    """The ``umap`` module, its numba kernels (and pynndescent's) set to keep
    what they compile on disk.

    UMAP compiles most of its kernels without numba's ``cache=True``, so every
    fresh process that fits a landscape (each ``sonufy train``, build or
    refit) spent 10 to 15 s compiling the same code again before fitting even
    a few dozen points. With caching on, a later process loads the machine
    code numba wrote beside the sources (or under ``NUMBA_CACHE_DIR``) in a
    fraction of a second; numba keys it on the source file, so an upgraded
    UMAP compiles afresh. A kernel numba cannot cache is compiled as before.
    """
    import umap
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in ("umap", "pynndescent") and module is not None:
            for kernel in list(vars(module).values()):
                if isinstance(kernel, CPUDispatcher):
                    try:
                        kernel.enable_caching()
                    except RuntimeError:  # no writable place for its cache: it compiles as before
                        pass
    return umap


def fit_umap(vectors: Any, params: UmapParams = TRACK_PARAMS, model_version: str = "") -> tuple[FittedUmap, np.ndarray]:
    """Fit UMAP on ``vectors``; the fitted model and the 2-D points."""
    import warnings

    umap = _umap_with_cached_kernels()
    matrix = _matrix(vectors, "vectors to fit")
    if matrix.shape[0] < MIN_POINTS:
        raise ValueError(f"a landscape needs at least {MIN_POINTS} points, got {matrix.shape[0]}")
    used = params.for_points(matrix.shape[0])
    reducer = umap.UMAP(
        n_neighbors=used.n_neighbors, min_dist=used.min_dist, metric=used.metric,
        random_state=used.random_state, n_components=2,
    )
    with warnings.catch_warnings():
        # "n_jobs overridden to 1 by setting random_state": reproducibility is the point.
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        points = reducer.fit_transform(matrix)
    return FittedUmap(reducer, params, used, matrix.shape[0], model_version), np.asarray(points, np.float32)


def umap_path(models_dir: Path, model_version: str) -> Path:
    """Where a model version's fitted UMAP lies: next to its checkpoints."""
    return Path(models_dir) / model_version / UMAP_FILENAME

