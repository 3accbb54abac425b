-- Named statements of path, radio, queries by audio and hub reduction
-- (sonufy_model/journeys.py, query_audio.py, hubness.py). Not schema: none
-- of them is applied on open.

-- name: latent_sample
-- A fixed sample of the current latent space (the same rows for the same
-- tracks, whatever their order in the file): what a track's similarities to
-- "everyone" are estimated from.
-- The ids are chosen first (ordering the vectors themselves is ten times
-- slower), from the current model's embeddings: the latent view's join with
-- tracks is not needed here.
SELECT e.vector FROM embeddings AS e JOIN models AS m ON m.model_version = e.model_version AND m.is_current
WHERE e.track_id IN (
    SELECT s.track_id FROM embeddings AS s JOIN models AS c ON c.model_version = s.model_version AND c.is_current
    ORDER BY hash(s.track_id, $seed), s.track_id
    LIMIT $size);

-- name: latent_vectors
-- The current model's vectors of a list of tracks (the latent view's, without
-- its join with tracks).
SELECT e.track_id, e.vector
FROM embeddings AS e JOIN models AS m ON m.model_version = e.model_version AND m.is_current
WHERE e.track_id IN (SELECT unnest($track_ids));

-- name: spectrogram_params
-- The mel parameters of a spectrogram set (what a query file must be analysed with).
SELECT params FROM spectrogram_sets WHERE set_id = $set_id;

-- name: latent_track_by_isrc
-- A track of the current latent space with this ISRC: the same recording
-- under another track id (an album and its compilation).
SELECT l.track_id FROM latent AS l JOIN tracks AS t USING (track_id)
WHERE t.isrc = $isrc
ORDER BY l.track_id
LIMIT 1;

-- name: journey_tracks
-- What a list shows of each of these tracks of the current latent space;
-- the preview link as sonufy_model.search gives it (sql/search.sql).
SELECT l.track_id, t.artist, t.title, t.album,
       coalesce(t.preview_url,
                CASE WHEN t.source = 'spotify' THEN 'https://open.spotify.com/track/' || t.track_id END,
                t.path) AS preview_url
FROM latent AS l JOIN tracks AS t USING (track_id)
WHERE list_contains($track_ids, l.track_id);

-- name: journey_album_keys
-- Each of these tracks' album as the album gap compares them (sql/search.sql's
-- search_album_key: the album's id, else its artist and name; NULL: none).
SELECT track_id, search_album_key(album_id, artist, album) AS album_key
FROM tracks
WHERE list_contains($track_ids, track_id);
