-- The sonic landscape: the latent space in two dimensions (UMAP), per model
-- version. Idempotent: applied after schema.sql on every run.

-- name: create_landscape
-- One point per track and model version. placed_by says how: 'fit' (the
-- track was in the data the UMAP model of that version was fitted on),
-- 'neighbours' (placed later among its nearest fitted tracks, without
-- refitting) or 'transform' (placed later by the fitted UMAP model's
-- transform, as nightlies did before December 2026).
CREATE TABLE IF NOT EXISTS landscape (
    track_id      VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    x             FLOAT NOT NULL,
    y             FLOAT NOT NULL,
    placed_by     VARCHAR NOT NULL DEFAULT 'fit',   -- 'fit' | 'neighbours' | 'transform'
    placed_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (track_id, model_version)
);

-- name: create_group_landscape
-- Artist and genre landscapes: one point per artist (level 'artist') or per
-- artist genre (level 'genre') from the mean latent vector of its tracks. An
-- artist's genre is the most common genre of its tracks. cluster is the
-- k-means cluster (k chosen by silhouette, see landscape_fits), NULL when
-- there were too few points to cluster.
CREATE TABLE IF NOT EXISTS group_landscape (
    model_version VARCHAR NOT NULL,
    level         VARCHAR NOT NULL,                 -- 'artist' | 'genre'
    name          VARCHAR NOT NULL,                 -- the artist, or the genre
    artist        VARCHAR,
    genre         VARCHAR,
    tracks        INTEGER NOT NULL,
    x             FLOAT NOT NULL,
    y             FLOAT NOT NULL,
    cluster       INTEGER,
    PRIMARY KEY (model_version, level, name)
);

-- name: create_landscape_fits
-- How each landscape of a model version was last fitted: its UMAP
-- parameters (n_neighbors as used, after clipping below the number of
-- points) and, for the group levels, the number of clusters chosen and its
-- silhouette.
CREATE TABLE IF NOT EXISTS landscape_fits (
    model_version VARCHAR NOT NULL,
    level         VARCHAR NOT NULL,                 -- 'tracks' | 'artist' | 'genre'
    points        INTEGER NOT NULL,
    n_neighbors   INTEGER NOT NULL,
    min_dist      DOUBLE NOT NULL,
    clusters      INTEGER,
    silhouette    DOUBLE,
    fitted_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model_version, level)
);

-- name: create_track_labels_view
-- The labels a landscape can be coloured by. genre is the search query's
-- genre:"..." (the style, for the demo catalog), year the release year,
-- folder the name of the file's parent folder (a folder library's album or
-- soundtrack; NULL for streamed tracks, which have no file).
CREATE OR REPLACE VIEW track_labels AS
SELECT track_id, artist, title, source,
       nullif(regexp_extract(found_by, 'genre:"([^"]+)"', 1), '') AS genre,
       nullif(left(release_date, 4), '') AS year,
       nullif(trim(album), '') AS album,
       nullif(regexp_extract(path, '([^/\\]+)[/\\][^/\\]*$', 1), '') AS folder,
       preview_url
FROM tracks;
