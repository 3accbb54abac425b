-- The statements sonufy_model/search.py runs. The macros and tables they use
-- are in search.sql (applied as schema on every run); these are queries, with
-- parameters, so they live apart from the schema files.

-- name: track_vector
-- A track's standardised vector in the current model.
SELECT vector FROM latent WHERE track_id = $track_id;

-- name: search_exact
SELECT * FROM search_results(
    (SELECT list({'track_id': track_id, 'cosine': cosine, 'time_similarity': time_similarity,
                  'frequency_similarity': frequency_similarity} ORDER BY cosine DESC, track_id)
     FROM search_exact_candidates($vector::FLOAT[256], $candidates)),
    $k,
    exclude_track_ids := $exclude_track_ids, seed_track_ids := $seed_track_ids,
    exclude_same_artist := $exclude_same_artist, exclude_same_album := $exclude_same_album,
    exclude_duplicates := $exclude_duplicates, min_popularity := $min_popularity,
    max_per_artist := $max_per_artist
);

-- name: current_space_size
-- How many vectors the current model has: the most candidates a search can widen to.
SELECT count(*) FROM embeddings
WHERE model_version = (SELECT model_version FROM models WHERE is_current);
