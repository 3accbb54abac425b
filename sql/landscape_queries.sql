-- Named statements of the sonic landscape (tables in landscape.sql). Kept
-- apart from landscape.sql because every statement of a schema file is run
-- when the schema is applied.

-- name: landscape_vectors
-- Every track of the current latent space, with the labels the group
-- landscapes need.
SELECT l.track_id, l.model_version, l.vector, l.artist, lab.genre
FROM latent AS l
JOIN track_labels AS lab USING (track_id)
ORDER BY l.track_id;

-- name: landscape_unplaced
-- Tracks of the current latent space without a point in its landscape.
SELECT l.track_id, l.model_version, l.vector
FROM latent AS l
LEFT JOIN landscape AS p ON p.track_id = l.track_id AND p.model_version = l.model_version
WHERE p.track_id IS NULL
ORDER BY l.track_id;

-- name: landscape_counts
-- The current latent space's tracks by how they got their point: fitted
-- (in the data of the version's UMAP fit), placed later (by neighbours, or
-- by UMAP's transform before December 2026) and pending (no point yet).
SELECT count(*) FILTER (WHERE p.placed_by = 'fit') AS fitted,
       count(*) FILTER (WHERE p.placed_by <> 'fit') AS placed,
       count(*) FILTER (WHERE p.track_id IS NULL) AS pending
FROM latent AS l
LEFT JOIN landscape AS p ON p.track_id = l.track_id AND p.model_version = l.model_version;

-- name: landscape_fitted_points
-- The tracks the current version's UMAP fit placed itself: their vectors
-- and points, which new tracks are placed among.
SELECT l.track_id, l.vector, p.x, p.y
FROM latent AS l
JOIN landscape AS p ON p.track_id = l.track_id AND p.model_version = l.model_version
WHERE p.placed_by = 'fit'
ORDER BY l.track_id;

-- name: group_level_points
-- One level's points of the current version's artist or genre landscape.
SELECT name, x, y, cluster
FROM group_landscape
WHERE model_version = $model_version AND level = $level
ORDER BY name;

-- name: delete_landscape
DELETE FROM landscape WHERE model_version = $model_version;

-- name: insert_landscape
INSERT OR REPLACE INTO landscape (track_id, model_version, x, y, placed_by, placed_at)
SELECT track_id, $model_version, x, y, $placed_by, current_timestamp FROM landscape_batch;

-- name: delete_group_landscape
DELETE FROM group_landscape WHERE model_version = $model_version AND level = $level;

-- name: insert_group_landscape
INSERT INTO group_landscape (model_version, level, name, artist, genre, tracks, x, y, cluster)
SELECT $model_version, $level, name, artist, genre, tracks, x, y, cluster FROM group_batch;

-- name: delete_landscape_fit
DELETE FROM landscape_fits WHERE model_version = $model_version AND level = $level;

-- name: group_levels_without_points
-- The group levels the current version's fits list but whose points are
-- gone (a store written before the map and its fit were one transaction).
SELECT f.level
FROM landscape_fits AS f
JOIN models AS m ON m.model_version = f.model_version AND m.is_current
WHERE f.level IN ('artist', 'genre')
  AND NOT EXISTS (SELECT 1 FROM group_landscape AS g
                  WHERE g.model_version = f.model_version AND g.level = f.level);

-- name: upsert_landscape_fit
INSERT OR REPLACE INTO landscape_fits (model_version, level, points, n_neighbors, min_dist,
                                       clusters, silhouette, fitted_at)
VALUES ($model_version, $level, $points, $n_neighbors, $min_dist, $clusters, $silhouette,
        current_timestamp);

-- name: landscape_points
-- The current landscape with everything a picture shows: labels, the
-- preview to play (Spotify's preview_url, else the analysed file on disk)
-- and the vector (for the nearest neighbours a search highlights).
SELECT p.track_id, p.x, p.y, lab.artist, lab.title, lab.genre, lab.folder, lab.album, lab.year, lab.source,
       lab.preview_url, pv.path AS preview_path, l.vector, l.model_version
FROM latent AS l
JOIN landscape AS p ON p.track_id = l.track_id AND p.model_version = l.model_version
JOIN track_labels AS lab ON lab.track_id = l.track_id
LEFT JOIN previews AS pv ON pv.track_id = l.track_id
ORDER BY p.track_id;

-- name: group_landscape_points
-- The current model's artist and genre landscapes.
SELECT g.level, g.name, g.artist, g.genre, g.tracks, g.x, g.y, g.cluster
FROM group_landscape AS g
JOIN models AS m ON m.model_version = g.model_version AND m.is_current
ORDER BY g.level, g.name;

-- name: landscape_fits
SELECT f.level, f.points, f.n_neighbors, f.min_dist, f.clusters, f.silhouette, f.fitted_at
FROM landscape_fits AS f
JOIN models AS m ON m.model_version = f.model_version AND m.is_current
ORDER BY f.level;
