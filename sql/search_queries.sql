-- The statements sonufy_model/search.py runs. The macros and tables they use
-- are in search.sql (applied as schema on every run); these are queries, with
-- parameters, so they live apart from the schema files.

-- name: track_vector
-- A track's standardised vector in the current model.
SELECT vector FROM latent WHERE track_id = $track_id;

-- name: search
SELECT * FROM similar_to_vector(
    $vector::FLOAT[256], $k,
    exclude_track_ids := $exclude_track_ids, seed_track_ids := $seed_track_ids,
    exclude_same_artist := $exclude_same_artist, exclude_same_album := $exclude_same_album,
    exclude_duplicates := $exclude_duplicates, min_popularity := $min_popularity,
    max_per_artist := $max_per_artist, candidates := $candidates, nprobe := $nprobe,
    use_index := $use_index, exclude_list := $exclude_list, min_seconds := $min_seconds,
    max_seconds := $max_seconds, artist_gap := $artist_gap, album_gap := $album_gap
);

-- name: search_nearest
-- The same as "search" without the filters that compare tracks (only
-- exclude_track_ids): a smaller plan, for the plain top-k.
WITH candidate AS (
    SELECT * FROM search_index_candidates($vector::FLOAT[256], $candidates, $nprobe, $use_index)
    UNION ALL
    SELECT * FROM search_exact_candidates($vector::FLOAT[256], $candidates, $use_index)
)
SELECT c.track_id, t.artist, t.title, t.album,
       search_preview_url(t.preview_url, t.source, t.track_id, t.path) AS preview_url,
       c.cosine, c.time_similarity, c.frequency_similarity
FROM candidate AS c
JOIN tracks AS t ON t.track_id = c.track_id
WHERE c.cosine IS NOT NULL AND NOT list_contains($exclude_track_ids::VARCHAR[], c.track_id)
ORDER BY c.cosine DESC, c.track_id
LIMIT $k;

-- name: current_space_size
-- How many vectors the current model has: the most candidates a search can widen to.
SELECT count(*) FROM embeddings
WHERE model_version = (SELECT model_version FROM models WHERE is_current);

-- name: search_index_state
-- The current version's index, if any.
SELECT i.model_version, i.cells, i.nprobe, i.vectors, i.covered_until
FROM search_index AS i
JOIN models AS m ON m.model_version = i.model_version AND m.is_current;

-- name: index_of_version
SELECT model_version, cells, nprobe, vectors, covered_until FROM search_index WHERE model_version = $model_version;

-- name: vectors_to_index
-- A version's vectors created after $since (NULL: all of them).
SELECT track_id, vector, created_at FROM embeddings
WHERE model_version = $model_version AND ($since IS NULL OR created_at > $since)
ORDER BY created_at, track_id;

-- name: next_free_cell
SELECT coalesce(max(cell) + 1, 0) FROM search_centroids;

-- name: drop_index_cells
-- A version's index, in three statements (a rebuild, or a version no longer current).
DELETE FROM search_cells WHERE cell IN (SELECT cell FROM search_centroids WHERE model_version = $model_version);

-- name: drop_index_centroids
DELETE FROM search_centroids WHERE model_version = $model_version;

-- name: drop_index_row
DELETE FROM search_index WHERE model_version = $model_version;

-- name: other_indexed_versions
SELECT model_version FROM search_index WHERE model_version <> $model_version ORDER BY model_version;

-- name: insert_centroids
INSERT INTO search_centroids (model_version, cell, centroid)
SELECT $model_version, cell, centroid::FLOAT[256] FROM centroids_batch ORDER BY cell;

-- name: insert_cells
-- In cell order: a probe reads a few stretches of the table.
INSERT INTO search_cells (cell, track_id, unit)
SELECT cell, track_id, unit::FLOAT[256] FROM cells_batch ORDER BY cell;

-- name: centroids_of_version
SELECT cell, centroid FROM search_centroids WHERE model_version = $model_version ORDER BY cell;

-- name: forget_indexed
-- Vectors about to be indexed again (re-encoded tracks), and indexed vectors
-- whose embedding is gone.
DELETE FROM search_cells
WHERE cell IN (SELECT cell FROM search_centroids WHERE model_version = $model_version)
  AND (track_id IN (SELECT track_id FROM cells_batch)
       OR track_id NOT IN (SELECT track_id FROM embeddings WHERE model_version = $model_version));

-- name: record_index
INSERT OR REPLACE INTO search_index (model_version, cells, nprobe, vectors, covered_until, built_at, updated_at,
                                     build_seconds)
VALUES ($model_version, $cells, $nprobe, $vectors, $covered_until, current_timestamp, current_timestamp,
        $build_seconds);

-- name: record_index_update
UPDATE search_index
SET vectors = (SELECT count(*) FROM search_cells
               WHERE cell IN (SELECT cell FROM search_centroids WHERE model_version = $model_version)),
    covered_until = $covered_until, updated_at = current_timestamp
WHERE model_version = $model_version
RETURNING vectors;

