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
--   exclude_list := ['Artist', 'Album', '<track id>', 'Artist - Title']
--                                      never returned: a track whose artist, album, id or "artist - title"
--                                      is an entry (case-insensitive, trimmed, runs of spaces as one)
--   min_seconds := 90, max_seconds := 600
--                                      duration bounds, inclusive; a track of unknown duration passes
--   artist_gap := 3                    down the list, no artist again within the 3 tracks after it:
--                                      a track that would be waits for the first place that keeps the gap
--   album_gap := 5                     likewise for an album (its id, else artist and album name)
--   candidates := 2000                 the filters act among this many nearest tracks
--   nprobe := 32                       cells the index probes (default 16; similar() passes the index's own)
--   use_index := false                 exact scan even where the current version has an index
-- Output columns: track_id, artist, title, album, cosine, time_similarity,
-- frequency_similarity (the two 128-d halves: the time and frequency branches,
-- or, for a model fusing texture, the encoder and the texture patterns);
-- similar_to_vector adds preview_url after album.

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

-- name: create_search_filter_key_macro
-- How an entry of an exclusion list and a track's names are compared: lower
-- case, trimmed, runs of white space as one space.
CREATE OR REPLACE MACRO search_filter_key(text) AS lower(trim(regexp_replace(text, '\s+', ' ', 'g')));

-- name: create_search_album_key_macro
-- What the album gap compares: the album's id, else the artist and album name;
-- NULL (no album, never in a gap) when the track has neither.
CREATE OR REPLACE MACRO search_album_key(album_id, artist, album) AS
    coalesce(album_id, CASE WHEN nullif(trim(album), '') IS NOT NULL
                            THEN search_artist_key(artist) || '|' || lower(trim(album)) END);

-- name: create_search_check_filters_macro
-- true, or an error naming the filter that cannot be met.
CREATE OR REPLACE MACRO search_check_filters(min_seconds, max_seconds, artist_gap, album_gap) AS
    CASE WHEN min_seconds < 0 THEN error('min_seconds must be 0 or more, got ' || min_seconds)
         WHEN max_seconds < 0 THEN error('max_seconds must be 0 or more, got ' || max_seconds)
         WHEN min_seconds > max_seconds
              THEN error('min_seconds ' || min_seconds || ' is more than max_seconds ' || max_seconds)
         WHEN artist_gap < 0 THEN error('artist_gap must be 0 or more, got ' || artist_gap)
         WHEN album_gap < 0 THEN error('album_gap must be 0 or more, got ' || album_gap)
         ELSE true END;

-- name: create_search_preview_url_macro
-- A link to hear a track: Spotify's preview, else its Spotify page, else the local file.
CREATE OR REPLACE MACRO search_preview_url(preview_url, source, track_id, path) AS
    coalesce(preview_url, CASE WHEN source = 'spotify' THEN 'https://open.spotify.com/track/' || track_id END, path);

-- name: create_search_index
-- The inverted-file index of one model version (sonufy_model/search.py):
-- spherical k-means centroids on a sample, each vector in its nearest
-- centroid's cell, stored grouped by cell. A query probes the nprobe cells
-- whose centroids are nearest and re-ranks their vectors exactly. Rebuildable
-- from embeddings at any time, never the only copy. Embeddings created after
-- covered_until are not in the cells yet: queries scan those exactly (see
-- search_index_candidates) until update_index adds them.
CREATE TABLE IF NOT EXISTS search_index (
    model_version VARCHAR PRIMARY KEY,
    cells         INTEGER NOT NULL,
    nprobe        INTEGER NOT NULL,          -- cells a query probes by default
    vectors       BIGINT NOT NULL,
    covered_until TIMESTAMP NOT NULL,
    built_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    build_seconds DOUBLE
);

-- name: create_search_centroids
-- Cell numbers are unique across model versions, so that search_cells needs
-- no version column: probing a version's centroids picks its cells.
CREATE TABLE IF NOT EXISTS search_centroids (
    model_version VARCHAR NOT NULL,
    cell          INTEGER NOT NULL,
    centroid      FLOAT[256] NOT NULL       -- unit length
);

-- name: create_search_cells
-- One row per indexed vector, written in cell order so that a probe reads a
-- few stretches of the table (DuckDB pushes the probed cells into the scan).
-- unit is the standardised vector scaled to unit length.
CREATE TABLE IF NOT EXISTS search_cells (
    cell          INTEGER NOT NULL,
    track_id      VARCHAR NOT NULL,
    unit          FLOAT[256] NOT NULL
);

-- name: create_search_index_space_macro
-- The current version, if it has an index and use_index: the one an indexed
-- search probes. Empty otherwise.
CREATE OR REPLACE MACRO search_index_space(use_index) AS TABLE
SELECT i.model_version, i.nprobe, i.covered_until
FROM search_index AS i
JOIN models AS m ON m.model_version = i.model_version AND m.is_current
WHERE use_index;

-- name: create_search_exact_space_macro
-- The current version, unless an indexed search answers for it: the one an
-- exact search scans. Empty otherwise. (Used as "IN (SELECT ...)": DuckDB
-- then skips the scan altogether when it is empty.)
CREATE OR REPLACE MACRO search_exact_space(use_index) AS TABLE
SELECT model_version FROM models
WHERE is_current AND model_version NOT IN (SELECT model_version FROM search_index_space(use_index));

-- name: create_search_index_candidates_macro
-- The n nearest vectors among the cells_to_probe probed cells (NULL: 16)
-- and the embeddings created since the index last covered them. Empty
-- unless search_index_space(use_index) has the current version. (The CTEs
-- are not materialized, and the probe's LIMIT is a plain value, so that
-- DuckDB pushes the probed cells into the scan of search_cells as a filter.)
CREATE OR REPLACE MACRO search_index_candidates(query_vector, n, cells_to_probe, use_index) AS TABLE
WITH space AS NOT MATERIALIZED (
    SELECT * FROM search_index_space(use_index)
),
q AS NOT MATERIALIZED (
    SELECT query_vector::FLOAT[256] AS v,
           sqrt(array_inner_product(query_vector::FLOAT[256], query_vector::FLOAT[256])) AS norm
),
probe AS NOT MATERIALIZED (
    SELECT c.cell
    FROM search_centroids AS c, q
    WHERE c.model_version IN (SELECT model_version FROM space)
    ORDER BY array_inner_product(c.centroid, q.v) DESC
    LIMIT coalesce(cells_to_probe, 16)
),
unindexed AS NOT MATERIALIZED (
    SELECT e.track_id, array_cosine_similarity(e.vector, q.v) AS cosine, e.vector
    FROM embeddings AS e, q
    WHERE e.model_version IN (SELECT model_version FROM space)
      AND e.created_at > (SELECT covered_until FROM space)
),
nearest AS NOT MATERIALIZED (
    SELECT s.track_id, (array_inner_product(s.unit, q.v) / q.norm)::FLOAT AS cosine, s.unit AS vector
    FROM search_cells AS s, q
    WHERE s.cell IN (SELECT cell FROM probe)
      AND s.track_id NOT IN (SELECT track_id FROM unindexed)
    UNION ALL
    SELECT * FROM unindexed
    ORDER BY cosine DESC, track_id
    LIMIT n
)
SELECT nearest.track_id, nearest.cosine,
       list_cosine_similarity(nearest.vector[1:128], q.v[1:128]) AS time_similarity,
       list_cosine_similarity(nearest.vector[129:256], q.v[129:256]) AS frequency_similarity
FROM nearest, q;

-- name: create_search_exact_candidates_macro
-- The n nearest vectors of the current model by a full scan, with the split
-- scores computed for those n only. Empty when an indexed search answers
-- (see search_exact_space).
CREATE OR REPLACE MACRO search_exact_candidates(query_vector, n, use_index) AS TABLE
SELECT track_id, cosine,
       list_cosine_similarity(vector[1:128], query_vector[1:128]) AS time_similarity,
       list_cosine_similarity(vector[129:256], query_vector[129:256]) AS frequency_similarity
FROM (
    SELECT e.track_id, e.vector, array_cosine_similarity(e.vector, query_vector::FLOAT[256]) AS cosine
    FROM embeddings AS e
    WHERE e.model_version IN (SELECT model_version FROM search_exact_space(use_index))
    ORDER BY cosine DESC, e.track_id
    LIMIT n
);

-- name: create_similar_to_vector_macro
-- k nearest tracks to a vector of the current model's standardised space,
-- best first, with each track's preview link (Spotify's preview, else its
-- Spotify page, else the local file). The filters act on the nearest
-- `candidates` tracks (default max(20 k, 1000)): from the index when the
-- current version has one (nprobe cells; NULL: 16) and use_index, else from
-- an exact scan.
CREATE OR REPLACE MACRO similar_to_vector(
    query_vector, k,
    exclude_track_ids := []::VARCHAR[],
    seed_track_ids := []::VARCHAR[],
    exclude_same_artist := false,
    exclude_same_album := false,
    exclude_duplicates := false,
    min_popularity := NULL::INTEGER,
    max_per_artist := NULL::INTEGER,
    candidates := NULL::INTEGER,
    nprobe := NULL::INTEGER,
    use_index := true,
    exclude_list := []::VARCHAR[],
    min_seconds := NULL::DOUBLE,
    max_seconds := NULL::DOUBLE,
    artist_gap := 0,
    album_gap := 0
) AS TABLE
WITH RECURSIVE checked AS MATERIALIZED (
    SELECT search_check_filters(min_seconds, max_seconds, artist_gap, album_gap) AS ok
),
excluded AS MATERIALIZED (
    SELECT DISTINCT search_filter_key(entry) AS entry
    FROM (SELECT unnest(exclude_list::VARCHAR[]) AS entry)
    WHERE nullif(trim(entry), '') IS NOT NULL
),
seeds AS MATERIALIZED (
    -- Read only when a filter compares with the seeds.
    SELECT search_artist_key(artist) AS artist_key,
           coalesce(album_id, search_artist_key(artist) || '|' || lower(album)) AS album_key,
           isrc,
           search_title_key(title, artist) AS title_key
    FROM tracks
    WHERE (exclude_same_artist OR exclude_same_album OR exclude_duplicates)
      AND track_id IN (SELECT unnest(seed_track_ids::VARCHAR[]))
),
candidate AS (
    SELECT * FROM search_index_candidates(query_vector, coalesce(candidates, greatest(20 * k, 1000)),
                                          nprobe, use_index)
    UNION ALL
    SELECT * FROM search_exact_candidates(query_vector, coalesce(candidates, greatest(20 * k, 1000)),
                                          use_index)
),
described AS (
    SELECT c.track_id, t.artist, t.title, t.album,
           search_preview_url(t.preview_url, t.source, t.track_id, t.path) AS preview_url,
           c.cosine, c.time_similarity, c.frequency_similarity,
           search_artist_key(t.artist) AS artist_key,
           coalesce(t.isrc, t.track_id) AS isrc_key,
           search_title_key(t.title, t.artist) AS title_key,
           search_album_key(t.album_id, t.artist, t.album) AS album_key
    FROM candidate AS c
    JOIN tracks AS t ON t.track_id = c.track_id
    WHERE c.cosine IS NOT NULL
      AND (SELECT ok FROM checked)
      AND (min_seconds IS NULL OR coalesce(t.duration_ms, 0) = 0 OR t.duration_ms >= min_seconds * 1000)
      AND (max_seconds IS NULL OR coalesce(t.duration_ms, 0) = 0 OR t.duration_ms <= max_seconds * 1000)
      AND (len(exclude_list::VARCHAR[]) = 0 OR NOT EXISTS (
               SELECT 1 FROM excluded AS x
               WHERE x.entry IN (search_filter_key(t.artist), search_filter_key(t.album), lower(trim(t.track_id)),
                                 search_filter_key(t.artist || ' - ' || t.title))))
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
),
ranked AS (
    -- Read only with a gap: the list in order, numbered.
    SELECT *, row_number() OVER (ORDER BY cosine DESC, track_id) AS rank
    FROM capped
    WHERE artist_gap > 0 OR album_gap > 0
),
spaced(position, track, pending, recent_artists, recent_albums) AS (
    -- The gaps, one place of the list at a time until k: each place takes the
    -- best-ranked track not placed yet (pending, in order) whose artist (album)
    -- is not among the artist_gap (album_gap) placed just before it; a track
    -- that would break a gap waits for a later place. One row per place, with
    -- its track; empty without a gap. (The tracks waiting travel in the rows:
    -- read from ranked at each place, the search would run again each time,
    -- and DuckDB 1.5's recursion reads a MATERIALIZED ranked as empty.)
    SELECT 0, first(r), list(r ORDER BY r.rank), []::VARCHAR[], []::VARCHAR[]  -- place 0: no track
    FROM ranked AS r
    WHERE artist_gap > 0 OR album_gap > 0
    UNION ALL
    SELECT position + 1, track, list_filter(pending, lambda p: p.rank <> track.rank),
           CASE WHEN artist_gap > 0 THEN list_slice(list_append(recent_artists, track.artist_key), -artist_gap, -1)
                ELSE [] END,
           CASE WHEN album_gap > 0 THEN list_slice(list_append(recent_albums, track.album_key), -album_gap, -1)
                ELSE [] END
    FROM (
        SELECT s.position, s.pending, s.recent_artists, s.recent_albums,
               list_filter(s.pending, lambda p: NOT list_contains(s.recent_artists, p.artist_key)
                                               AND (p.album_key IS NULL
                                                    OR NOT list_contains(s.recent_albums, p.album_key)))[1] AS track
        FROM spaced AS s
        WHERE s.position < k
    )
    WHERE track IS NOT NULL
),
listed AS (
    SELECT track.track_id, track.artist, track.title, track.album, track.preview_url, track.cosine,
           track.time_similarity, track.frequency_similarity, position
    FROM spaced
    WHERE position > 0
    UNION ALL
    SELECT track_id, artist, title, album, preview_url, cosine, time_similarity, frequency_similarity,
           row_number() OVER (ORDER BY cosine DESC, track_id) AS position
    FROM capped
    WHERE NOT (artist_gap > 0 OR album_gap > 0)
)
SELECT track_id, artist, title, album, preview_url, cosine, time_similarity, frequency_similarity
FROM listed
ORDER BY position
LIMIT k;

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
    candidates := NULL::INTEGER,
    nprobe := NULL::INTEGER,
    use_index := true,
    exclude_list := []::VARCHAR[],
    min_seconds := NULL::DOUBLE,
    max_seconds := NULL::DOUBLE,
    artist_gap := 0,
    album_gap := 0
) AS TABLE
SELECT track_id, artist, title, album, cosine, time_similarity, frequency_similarity
FROM similar_to_vector(
    (SELECT vector FROM latent WHERE track_id = query_track_id), k,
    exclude_track_ids := exclude_track_ids, seed_track_ids := [query_track_id],
    exclude_same_artist := exclude_same_artist, exclude_same_album := exclude_same_album,
    exclude_duplicates := exclude_duplicates, min_popularity := min_popularity,
    max_per_artist := max_per_artist, candidates := candidates, nprobe := nprobe, use_index := use_index,
    exclude_list := exclude_list, min_seconds := min_seconds, max_seconds := max_seconds,
    artist_gap := artist_gap, album_gap := album_gap
);
