-- Search in the latent space: cosine top-k, exact or through an inverted-file
-- index, with the filters people ask for. Applied on every run, after
-- schema.sql and migrations.sql: every statement here is idempotent.
--
-- Ad-hoc SQL (the DuckDB shell on the file):
--   SELECT * FROM similar_to('<track id>', 10);
--   SELECT * FROM similar_to('<track id>', 10, exclude_same_artist := true, max_per_artist := 2);
--   SELECT * FROM similar_to_vector((SELECT vector FROM latent WHERE track_id = '<id>'), 10);
-- Filters (named parameters, all optional):
--   exclude_track_ids := ['id', ...]   never returned (the seed always is excluded too)
--   seed_track_ids := ['id', ...]      (similar_to_vector) the tracks the filters below compare with
--   exclude_same_artist := true        no track by a seed's artist
--   exclude_same_album := true         no track from a seed's album
--   exclude_duplicates := true         no second recording of a seed or of a better-ranked result:
--                                      same ISRC, or same normalised title and artist
--   min_popularity := 40               popularity at least 40; tracks without a popularity pass
--   max_per_artist := 2                at most 2 tracks per artist
--   candidates := 2000                 the dedup and artist cap act among this many nearest tracks
--   use_index := false                 exact scan even where an index is fresh
-- Output columns: track_id, artist, title, album, cosine, time_similarity,
-- frequency_similarity (the two 128-d halves: time and frequency branches).

-- name: create_search_title_key_macro
-- The normalised "artist|title" two recordings of one song share: lower case,
-- no accents, no bracketed parts ("(Remastered 2011)", "[Live]"), no " - ..."
-- suffix, letters and digits only.
CREATE OR REPLACE MACRO search_title_key(title, artist) AS
    regexp_replace(lower(strip_accents(coalesce(artist, ''))), '[^a-z0-9]+', '', 'g') || '|' ||
    regexp_replace(
        regexp_replace(
            regexp_replace(lower(strip_accents(coalesce(title, ''))), '\([^)]*\)|\[[^\]]*\]', '', 'g'),
            '\s+-\s+.*$', ''),
        '[^a-z0-9]+', '', 'g');

-- name: create_search_artist_key_macro
CREATE OR REPLACE MACRO search_artist_key(artist) AS lower(strip_accents(trim(artist)));

-- name: create_search_exact_candidates_macro
-- The n nearest vectors of the current model by a full scan, with the split
-- scores computed for those n only.
CREATE OR REPLACE MACRO search_exact_candidates(query_vector, n) AS TABLE
SELECT track_id, cosine,
       list_cosine_similarity(vector[1:128], query_vector[1:128]) AS time_similarity,
       list_cosine_similarity(vector[129:256], query_vector[129:256]) AS frequency_similarity
FROM (
    SELECT e.track_id, e.vector, array_cosine_similarity(e.vector, query_vector::FLOAT[256]) AS cosine
    FROM embeddings AS e
    WHERE e.model_version = (SELECT model_version FROM models WHERE is_current)
    ORDER BY cosine DESC, e.track_id
    LIMIT n
);

-- name: create_search_results_macro
-- The filters, over candidates: a list of {track_id, cosine, time_similarity,
-- frequency_similarity} structs, best first. Returns at most k rows.
CREATE OR REPLACE MACRO search_results(
    found, k,
    exclude_track_ids := []::VARCHAR[],
    seed_track_ids := []::VARCHAR[],
    exclude_same_artist := false,
    exclude_same_album := false,
    exclude_duplicates := false,
    min_popularity := NULL::INTEGER,
    max_per_artist := NULL::INTEGER
) AS TABLE
WITH seeds AS (
    SELECT search_artist_key(artist) AS artist_key,
           coalesce(album_id, search_artist_key(artist) || '|' || lower(album)) AS album_key,
           isrc,
           search_title_key(title, artist) AS title_key
    FROM tracks
    WHERE list_contains(seed_track_ids::VARCHAR[], track_id)
),
candidate AS (
    SELECT unnest(found, recursive := true)
),
described AS (
    SELECT c.track_id, t.artist, t.title, t.album,
           coalesce(t.preview_url,
                    CASE WHEN t.source = 'spotify' THEN 'https://open.spotify.com/track/' || t.track_id END,
                    t.path) AS preview_url,
           c.cosine, c.time_similarity, c.frequency_similarity,
           search_artist_key(t.artist) AS artist_key,
           coalesce(t.album_id, search_artist_key(t.artist) || '|' || lower(t.album)) AS album_key,
           coalesce(t.isrc, t.track_id) AS isrc_key,
           search_title_key(t.title, t.artist) AS title_key
    FROM candidate AS c
    JOIN tracks AS t ON t.track_id = c.track_id
    WHERE c.cosine IS NOT NULL
      AND NOT list_contains(exclude_track_ids::VARCHAR[], c.track_id)
      AND NOT list_contains(seed_track_ids::VARCHAR[], c.track_id)
      AND (min_popularity IS NULL OR t.popularity IS NULL OR t.popularity >= min_popularity)
      AND (NOT exclude_same_artist
           OR search_artist_key(t.artist) NOT IN (SELECT artist_key FROM seeds WHERE artist_key IS NOT NULL))
      AND (NOT exclude_same_album
           OR t.album IS NULL
           OR coalesce(t.album_id, search_artist_key(t.artist) || '|' || lower(t.album))
              NOT IN (SELECT album_key FROM seeds WHERE album_key IS NOT NULL))
      AND (NOT exclude_duplicates
           OR ((t.isrc IS NULL OR t.isrc NOT IN (SELECT isrc FROM seeds WHERE isrc IS NOT NULL))
               AND search_title_key(t.title, t.artist) NOT IN (SELECT title_key FROM seeds)))
),
one_per_isrc AS (
    SELECT * FROM described
    QUALIFY NOT exclude_duplicates
         OR row_number() OVER (PARTITION BY isrc_key ORDER BY cosine DESC, track_id) = 1
),
one_per_song AS (
    SELECT * FROM one_per_isrc
    QUALIFY NOT exclude_duplicates
         OR row_number() OVER (PARTITION BY title_key ORDER BY cosine DESC, track_id) = 1
),
capped AS (
    SELECT * FROM one_per_song
    QUALIFY max_per_artist IS NULL
         OR row_number() OVER (PARTITION BY artist_key ORDER BY cosine DESC, track_id) <= max_per_artist
)
SELECT track_id, artist, title, album, preview_url, cosine, time_similarity, frequency_similarity
FROM capped
ORDER BY cosine DESC, track_id
LIMIT k;

-- name: create_similar_to_vector_macro
-- k nearest tracks to a vector of the current model's standardised space.
CREATE OR REPLACE MACRO similar_to_vector(
    query_vector, k,
    exclude_track_ids := []::VARCHAR[],
    seed_track_ids := []::VARCHAR[],
    exclude_same_artist := false,
    exclude_same_album := false,
    exclude_duplicates := false,
    min_popularity := NULL::INTEGER,
    max_per_artist := NULL::INTEGER,
    candidates := NULL::INTEGER
) AS TABLE
SELECT track_id, artist, title, album, cosine, time_similarity, frequency_similarity
FROM search_results(
    (SELECT list({'track_id': track_id, 'cosine': cosine, 'time_similarity': time_similarity,
                  'frequency_similarity': frequency_similarity} ORDER BY cosine DESC, track_id)
     FROM search_exact_candidates(query_vector::FLOAT[256],
                                  coalesce(candidates, greatest(20 * k, 1000)))),
    k,
    exclude_track_ids := exclude_track_ids, seed_track_ids := seed_track_ids,
    exclude_same_artist := exclude_same_artist, exclude_same_album := exclude_same_album,
    exclude_duplicates := exclude_duplicates, min_popularity := min_popularity,
    max_per_artist := max_per_artist
);

-- name: create_similar_to_macro
-- k nearest tracks to a track of the current latent space, the track itself
-- excluded; the filters compare with it.
CREATE OR REPLACE MACRO similar_to(
    query_track_id, k,
    exclude_track_ids := []::VARCHAR[],
    exclude_same_artist := false,
    exclude_same_album := false,
    exclude_duplicates := false,
    min_popularity := NULL::INTEGER,
    max_per_artist := NULL::INTEGER,
    candidates := NULL::INTEGER
) AS TABLE
SELECT * FROM similar_to_vector(
    (SELECT vector FROM latent WHERE track_id = query_track_id), k,
    exclude_track_ids := exclude_track_ids, seed_track_ids := [query_track_id],
    exclude_same_artist := exclude_same_artist, exclude_same_album := exclude_same_album,
    exclude_duplicates := exclude_duplicates, min_popularity := min_popularity,
    max_per_artist := max_per_artist, candidates := candidates
);
