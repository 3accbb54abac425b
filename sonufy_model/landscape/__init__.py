"""The sonic landscape: the latent space in two dimensions, and its pictures.

A UMAP projection of every track of a model version is fitted once, saved
next to the model version (``<models>/<version>/umap.joblib``) and stored in
DuckDB (table ``landscape``). Tracks that arrive later are placed without
refitting, each at the similarity-weighted mean of the points of its nearest
fitted tracks (:mod:`.placement`: numpy alone, UMAP is not imported); a refit
happens with a new model version, when the placed tracks would grow past
REFIT_PLACED_SHARE (20%) of the fitted ones, or when asked for (``sonufy
landscape --refit``). n_neighbors scales with the library (about sqrt(N), in
[10, 500]: see :func:`scaled_neighbours`), min_dist is 0.1.

Artist and genre landscapes are UMAP projections of the mean latent vector
per artist and per artist genre (n_neighbors by the same rule, min_dist 0.1),
refitted whenever the track landscape is (new artists and genres are placed
among the others in between, like new tracks), with an optional k-means
clustering whose k is the one with the highest silhouette (cosine geometry)
over a range of k.

Colours: genre, folder (the file's parent folder), album, artist, year and
source; ``auto`` (the default) picks the most informative one present (see
:func:`choose_color_by`).

Pictures: a PNG shaded by density with datashader (readable at hundreds of
thousands of points) and a self-contained interactive HTML page (no network:
its script is inline).

The modules: :mod:`.layout` (UMAP and its n_neighbors rule), :mod:`.placement`
(new tracks among their nearest fitted ones, and the refit rule), :mod:`.clusters`
(k-means and nearest neighbours), :mod:`.colors` (categories, colours and the
default label), :mod:`.persistence` (the ``landscape`` tables in DuckDB),
:mod:`.static` (the PNG and the markdown summary), :mod:`.page` (the
interactive HTML page) and :mod:`.pictures` (:func:`render`: both pictures).
Every public name is importable from this package.
"""

from sonufy_model.landscape.clusters import (
    CLUSTER_K_RANGE,
    EXACT_NEIGHBOURS_LIMIT,
    NEIGHBOURS,
    Clustering,
    choose_clusters,
    nearest_neighbours,
)
from sonufy_model.landscape.colors import (
    AUTO,
    AUTO_MAX_VALUES,
    AUTO_MIN_COVERAGE,
    COLOR_LABELS,
    MAX_COLORS,
    OTHER_COLOR,
    UNKNOWN,
    Coloring,
    choose_color_by,
    color_score,
    coloring,
    present_labels,
)
from sonufy_model.landscape.layout import (
    FIT_INFO_FILENAME,
    GROUP_PARAMS,
    LEGACY_PARAMS,
    MAX_NEIGHBOURS,
    MIN_DIST,
    MIN_NEIGHBOURS,
    MIN_POINTS,
    PARAMS_RULE,
    TRACK_PARAMS,
    UMAP_FILENAME,
    FitInfo,
    FittedUmap,
    UmapParams,
    fit_umap,
    read_fit_info,
    scaled_neighbours,
    umap_path,
)
from sonufy_model.landscape.page import HTML_NAME, render_html
from sonufy_model.landscape.persistence import (
    SQL_FILE,
    group_landscape_points,
    group_means,
    landscape_fits,
    landscape_points,
    place_group_landscapes,
    update_group_landscapes,
    update_landscape,
)
from sonufy_model.landscape.pictures import render
from sonufy_model.landscape.placement import (
    PLACEMENT_NEIGHBOURS,
    REFIT_PLACED_SHARE,
    nearest_fitted,
    needs_refit,
    place_by_neighbours,
)
from sonufy_model.landscape.static import PNG_NAME, render_png, summary_markdown

__all__ = [
    "FIT_INFO_FILENAME", "PLACEMENT_NEIGHBOURS", "REFIT_PLACED_SHARE", "FitInfo", "nearest_fitted", "needs_refit",
    "place_by_neighbours", "place_group_landscapes", "read_fit_info",
    "AUTO", "AUTO_MAX_VALUES", "AUTO_MIN_COVERAGE", "CLUSTER_K_RANGE", "COLOR_LABELS", "EXACT_NEIGHBOURS_LIMIT",
    "GROUP_PARAMS", "HTML_NAME", "LEGACY_PARAMS", "MAX_COLORS", "MAX_NEIGHBOURS", "MIN_DIST", "MIN_NEIGHBOURS",
    "MIN_POINTS", "NEIGHBOURS", "OTHER_COLOR", "PARAMS_RULE", "PNG_NAME", "SQL_FILE", "TRACK_PARAMS",
    "UMAP_FILENAME", "UNKNOWN", "Clustering", "Coloring", "FittedUmap", "UmapParams", "choose_clusters",
    "choose_color_by", "color_score", "coloring", "fit_umap", "group_landscape_points", "group_means",
    "landscape_fits", "landscape_points", "nearest_neighbours", "present_labels", "render", "render_html",
    "render_png", "scaled_neighbours", "summary_markdown", "umap_path", "update_group_landscapes",
    "update_landscape",
]
