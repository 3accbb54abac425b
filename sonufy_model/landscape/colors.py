"""Colours of a landscape: categories of a label and a colour each, and the
default label to colour by (the most informative one present)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

#: Labels a track landscape can be coloured by, in the order that breaks
#: ties of :func:`choose_color_by`. folder: the file's parent folder (an album
#: or a soundtrack in a folder library; unknown for streamed tracks).
COLOR_LABELS = ("genre", "folder", "album", "artist", "year", "source")
#: Colour by the most informative label present (:func:`choose_color_by`).
AUTO = "auto"
#: A label the default colour may be: at most this many distinct values ...
AUTO_MAX_VALUES = 40
#: ... and a known value for at least this share of the tracks.
AUTO_MIN_COVERAGE = 0.5
#: Categories that get a colour of their own; the rest share OTHER_COLOR.
MAX_COLORS = 20
OTHER_COLOR = "#5b6170"
UNKNOWN = "(unknown)"


@dataclass(frozen=True)
class Coloring:
    """Per-point category codes for one label, categories by count, and a colour each."""

    label: str
    values: list[str]
    codes: np.ndarray
    counts: list[int]
    colors: list[str]


def coloring(label: str, values: Sequence[str | None]) -> Coloring:
    """Colours for a label's values: the MAX_COLORS most common categories get
    distinct colours (years: a sequential scale over every year), the rest grey."""
    import colorcet

    series = pl.Series("v", [UNKNOWN if v is None or v == "" else str(v) for v in values], dtype=pl.String)
    tally = series.value_counts(name="n")
    # most common first, ties by name: the same colours on every run and layer
    tally = tally.sort("v") if label == "year" else tally.sort(["n", "v"], descending=[True, False])
    names = tally["v"].to_list()
    counts = tally["n"].to_list()
    index = {name: i for i, name in enumerate(names)}
    codes = np.array([index[v] for v in series.to_list()], dtype=np.int32)
    if label == "year":
        known = [n for n in names if n != UNKNOWN]
        scale = colorcet.CET_L8[64:]  # purple to yellow, bright enough on the dark ground
        step = {n: i / max(1, len(known) - 1) for i, n in enumerate(known)}
        colors = [OTHER_COLOR if n == UNKNOWN else scale[round(step[n] * (len(scale) - 1))] for n in names]
    else:
        palette = colorcet.glasbey_light
        colors = [OTHER_COLOR if (i >= MAX_COLORS or n == UNKNOWN) else palette[i] for i, n in enumerate(names)]
    return Coloring(label, names, codes, counts, colors)


def _check_color_by(color_by: str, allowed: Sequence[str] = (AUTO, *COLOR_LABELS)) -> None:
    if color_by not in allowed:
        raise ValueError(f"colour by {color_by!r}: expected one of {', '.join(allowed)}")


def _known(values: Sequence[Any]) -> list[str]:
    return [str(v) for v in values if v is not None and str(v) != ""]


def color_score(values: Sequence[Any]) -> dict:
    """How well a label's values split the tracks into groups to colour.

    values: distinct known values; labelled: tracks with a known value;
    coverage: share of the tracks with a known value; evenness: the
    normalised entropy of the known values (H / ln values: 1 when every value
    has as many tracks, 0 with one value); coloured: share of the labelled
    tracks whose value gets a colour of its own (the MAX_COLORS most common;
    the rest are grey); score: evenness x coverage x coloured, to 2 decimals:
    how much of the map the label paints in distinct, evenly used colours.
    eligible: 2 to AUTO_MAX_VALUES values, coverage at least
    AUTO_MIN_COVERAGE and at least two tracks per value on average (not one
    value per track)."""
    n = len(values)
    known = _known(values)
    counts = np.sort(np.array(pl.Series(known, dtype=pl.String).value_counts()["count"].to_list()
                              if known else [], float))[::-1]
    k = len(counts)
    coverage = len(known) / n if n else 0.0
    coloured = float(counts[:MAX_COLORS].sum() / counts.sum()) if k else 0.0
    if k >= 2:
        share = counts / counts.sum()
        evenness = float(-(share * np.log(share)).sum() / math.log(k))
    else:
        evenness = 0.0
    eligible = 2 <= k <= AUTO_MAX_VALUES and coverage >= AUTO_MIN_COVERAGE and 2 * k <= len(known)
    return {"values": k, "labelled": len(known), "coverage": round(coverage, 3), "evenness": round(evenness, 3),
            "coloured": round(coloured, 3), "score": round(evenness * coverage * coloured, 2),
            "eligible": eligible}


def choose_color_by(points: pl.DataFrame, labels: Sequence[str] = COLOR_LABELS) -> tuple[str, dict[str, dict]]:
    """The default colour of a landscape: the most informative label present.

    Among the eligible labels (see :func:`color_score`: 2..40 values, most
    tracks labelled, not one value per track) the one with the highest score
    (normalised entropy x coverage x share of tracks in the 20 colours): the
    label that paints most of the map in distinct, evenly used colours. Ties
    go to the earlier label of ``labels`` (genre,
    folder, album, artist, year, source). With none eligible, the best score
    among labels with at least two values and two tracks per value (however
    many values, however few tracks labelled), else the last label (source).
    Returns the label and every label's figures."""
    scores = {name: color_score(points[name].cast(pl.String).to_list()) for name in labels if name in points.columns}
    grouped = [n for n, f in scores.items() if f["values"] >= 2 and 2 * f["values"] <= f["labelled"]]
    for pool in ([n for n, f in scores.items() if f["eligible"]], grouped):
        if pool:
            return max(pool, key=lambda name: (scores[name]["score"], -labels.index(name))), scores
    return labels[-1], scores


def present_labels(points: pl.DataFrame, labels: Sequence[str] = COLOR_LABELS, keep: str | None = None) -> list[str]:
    """The labels with a known value for at least one track (and ``keep``):
    a folder library has no genre or year to colour by."""
    return [name for name in labels
            if name in points.columns and (name == keep or points[name].cast(pl.String).fill_null("").ne("").any())]

