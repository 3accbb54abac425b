"""Seeds that are not (yet) in the latent space: a local audio file, a Spotify search.

A file is analysed exactly as the catalog was: the current model's
spectrogram set says which mel parameters (and excerpts), the model's
checkpoint encodes the fixed tiles, the clips' vectors are averaged and the
model's stored standardisation applied. A search asks the catalog service
(Spotify, or the stand-in) and takes the first hit: a track already in the
latent space (by id, else by ISRC) answers with its stored vector; any other
has its preview fetched through the preview sources into a temporary folder
and encoded on the fly. Nothing is written to the DuckDB file.

:func:`recommend` then ranks the space against any seed, with the search's
filters and, optionally, hub reduction (:mod:`sonufy_model.hubness`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

import sql
from sonufy_model import hubness
from sonufy_model.audio import AudioDecodeError, MelParams, analyse, native_stderr_captured, to_uint8
from sonufy_model.store import ModelRecord

SQL_FILE = "journeys.sql"
MIN_QUERY_SECONDS = 5.0  # less audio than this says little about how a track sounds
# Above this median spectral flatness a file sounds like noise (white noise is
# near 0.6, music nearly always under 0.3): its neighbours say little.
NOISE_FLATNESS = 0.45


class QueryError(ValueError):
    """A seed that cannot be used (no model, no hit, no preview); the message names it."""


@dataclass(frozen=True)
class Seed:
    """What recommendations are made from: a standardised vector, and where it came from.

    ``track_id`` is set when the seed is a track of the latent space (it is
    then left out of its own recommendations).
    """

    label: str
    vector: np.ndarray
    kind: str  # "track" | "file" | "search"
    track_id: str | None = None
    # Why its recommendations may say little (a noise-like file), or None.
    warning: str | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "kind": self.kind, "track_id": self.track_id, "warning": self.warning}


def _current_model(store) -> ModelRecord:
    if not Path(store.path).exists():
        raise QueryError(f"{store.path}: no such DuckDB file; run `sonufy build` first")
    model = store.current_model()
    if model is None:
        raise QueryError(f"{store.path}: no current model; run `sonufy build` or `sonufy train` first")
    return model


def mel_params(store, model: ModelRecord) -> MelParams:
    """The mel parameters of the spectrogram set the model was trained on."""
    with store.connect(read_only=True) as con:
        rows = con.execute(sql.statement("spectrogram_params", SQL_FILE), {"set_id": model.set_id}).fetchall()
    if not rows:
        raise QueryError(f"{store.path}: model {model.model_version} names spectrogram set {model.set_id}, "
                         "which is not recorded")
    params = rows[0][0]
    return MelParams.from_stored(json.loads(params) if isinstance(params, str) else params)


def encode_file(store, path: str | Path) -> np.ndarray:
    """The standardised vector of an audio file under the current model (nothing is stored)."""
    return _encode_checked(store, path)[0]


def _encode_checked(store, path: str | Path) -> tuple[np.ndarray, str | None]:
    """The file's standardised vector and a warning (or None).

    Its clips are checked as the catalog's are (:func:`quality.spectrogram_problems`):
    a clip that fails (silent, corrupt) is left out, and a file none of whose
    clips pass is refused, with the reasons. A noise-like file is encoded but
    comes with a warning."""
    from sonufy_model.encoding import load_encoder, track_features
    from sonufy_model.quality import spectrogram_problems

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    model = _current_model(store)
    params = mel_params(store, model)
    try:
        with native_stderr_captured():  # the decoder's own notes on a bad file: ours names it
            clips = analyse(file, params, flatness=True)
    except (OSError, ValueError) as error:
        if isinstance(error, AudioDecodeError):
            raise
        raise AudioDecodeError(f"{path}: does not decode as audio ({error})") from error
    audio_s = sum(stats["duration_s"] for _, stats in clips)
    if audio_s < MIN_QUERY_SECONDS:
        raise AudioDecodeError(f"{path}: only {audio_s:.1f} s of audio; at least {MIN_QUERY_SECONDS:g} s are needed")
    problems = [spectrogram_problems(stats, params, min_seconds=0.0) for _, stats in clips]
    if all(problems):
        reasons = sorted({problem for found in problems for problem in found})
        raise AudioDecodeError(f"{path}: not usable as a query: {'; '.join(reasons)}")
    clips = [clip for clip, found in zip(clips, problems) if not found]
    flatness = float(np.median([stats["spectral_flatness"] for _, stats in clips]))
    warning = None
    if flatness > NOISE_FLATNESS:
        warning = (f"{path} sounds like noise (spectral flatness {flatness:.2f}; music stays under 0.3): "
                   "its nearest tracks say little")
    checkpoint = Path(model.checkpoint)
    if not checkpoint.is_file():
        raise QueryError(f"model {model.model_version}: checkpoint {checkpoint} is missing")
    spectrograms = np.stack([to_uint8(spectrogram) for spectrogram, _ in clips])
    _, raw, texture = track_features(load_encoder(checkpoint), pl.Series([str(file)] * len(clips)), spectrograms,
                                     model.texture)
    return model.vectors(raw, texture)[0], warning


def seed_from_track(store, query: str) -> Seed:
    """A track of the latent space, by id or "artist - title"."""
    track = store.find_track(query)
    vector = hubness.vectors_of(store, [track["track_id"]])[0]
    return Seed(f"{track['artist']} - {track['title']}", vector, "track", track["track_id"])


def seed_from_file(store, path: str | Path) -> Seed:
    vector, warning = _encode_checked(store, path)
    return Seed(str(path), vector, "file", warning=warning)


def search_first_hit(settings, query: str) -> dict:
    """The first track a catalog search for ``query`` finds (a tracks-table row)."""
    from sonufy_model.catalog import fetch_catalog, parse_search_pages
    from sonufy_model.scrape_config import ScrapeConfig

    if not query or not query.strip():
        raise QueryError("--search: the query is empty")
    result = fetch_catalog(settings, ScrapeConfig(queries=(query,), max_items_per_query=1, source="--search"))
    tracks, _ = parse_search_pages(result.pages)
    if tracks.is_empty():
        why = f" ({'; '.join(result.problems)})" if result.problems else ""
        raise QueryError(f"--search {query!r}: no track found{why}")
    return tracks.row(0, named=True)


def _in_latent(store, hit: dict) -> str | None:
    """The latent space's track for a search hit: the same id, else the same ISRC."""
    with store.connect(read_only=True) as con:
        if con.execute(sql.statement("latent_vectors", SQL_FILE), {"track_ids": [hit["track_id"]]}).fetchall():
            return hit["track_id"]
        if hit.get("isrc"):
            row = con.execute(sql.statement("latent_track_by_isrc", SQL_FILE), {"isrc": hit["isrc"]}).fetchone()
            if row:
                return row[0]
    return None


def seed_from_search(store, settings, query: str) -> Seed:
    """The first hit of a catalog search: its stored vector, else its preview encoded now."""
    from sonufy_model.previews import fetch_previews

    _current_model(store)
    hit = search_first_hit(settings, query)
    label = f"{hit['artist']} - {hit['title']}"
    known = _in_latent(store, hit)
    if known is not None:
        return Seed(label, hubness.vectors_of(store, [known])[0], "search", known)
    wanted = pl.DataFrame(
        [{name: hit.get(name) for name in ("track_id", "isrc", "preview_url", "artist", "title")}],
        schema={name: pl.String for name in ("track_id", "isrc", "preview_url", "artist", "title")},
    )
    with tempfile.TemporaryDirectory(prefix="sonufy-query-") as folder:
        outcome = fetch_previews(wanted, settings, Path(folder)).row(0, named=True)
        if outcome["error"] is not None or not outcome["path"]:
            raise QueryError(f"--search {query!r}: found {label} ({hit['track_id']}), but no preview: "
                             f"{outcome['error']}")
        vector = encode_file(store, outcome["path"])
    return Seed(label, vector, "search")


def recommend(store, seed: Seed, k: int = 10, filters=None, hub_reduction: bool = False,
              use_index: bool = True) -> pl.DataFrame:
    """The ``k`` tracks nearest to ``seed``, best first (cosine, or mutual proximity
    over a pool of the nearest by cosine with ``hub_reduction``); ``use_index=False``:
    an exact scan even where the search index could answer."""
    from sonufy_model import search
    from sonufy_model.gaps import Gaps, with_album_keys

    gaps = Gaps()
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    filters = filters or search.SearchFilters()
    wanted = hubness.pool_size(k) if hub_reduction else k
    if hub_reduction and filters.gapped:  # the gaps act on the order mutual proximity gives
        gaps, filters = Gaps(filters.artist_gap, filters.album_gap), replace(filters, artist_gap=0, album_gap=0)
    if seed.track_id is not None:  # excluded from its own list, and what the filters compare with
        rows = search.similar(store, track_id=seed.track_id, k=wanted, filters=filters, use_index=use_index)
    else:
        rows = search.similar(store, vector=seed.vector, k=wanted, filters=filters, use_index=use_index)
    if hub_reduction and gaps:
        ranked = with_album_keys(store, hubness.rerank(store, seed.vector, rows, rows.height))
        return pl.DataFrame(gaps.space_out(ranked.to_dicts(), k), schema=ranked.schema).drop("album_key")
    if hub_reduction:
        rows = hubness.rerank(store, seed.vector, rows, k)
    return rows

