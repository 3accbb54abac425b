-- Named statements of the playlist files (sonufy_model/playlists.py). Not
-- schema: none of them is applied on open.

-- name: playlist_entries
-- What a playlist file says of each of these tracks: artist, title, the
-- stored duration (NULL when unknown, or 0 as some catalogs give it), the
-- local file of a folder track, and where else to hear a track: a catalog
-- track's Spotify page (the whole track, as long as its stored duration),
-- else its preview link, else its file.
SELECT t.track_id, t.artist, t.title,
       CASE WHEN t.duration_ms > 0 THEN t.duration_ms END AS duration_ms,
       CASE WHEN t.source = 'folder' THEN t.path END AS path,
       coalesce(CASE WHEN t.source = 'spotify' THEN 'https://open.spotify.com/track/' || t.track_id END,
                t.preview_url, t.path) AS link
FROM tracks AS t
WHERE list_contains($track_ids, t.track_id);

-- name: playlist_spotify_uris
-- Each track's Spotify URI for --to-spotify: a catalog track's (its stored
-- uri, else made from its id); NULL for a folder track, which has none.
SELECT t.track_id,
       CASE WHEN t.source = 'spotify' THEN coalesce(t.uri, 'spotify:track:' || t.track_id) END AS uri
FROM tracks AS t
WHERE list_contains($track_ids, t.track_id);

-- Saved lists (sonufy_model/saved_lists.py): the recipes of `sonufy playlist save`.

-- name: saved_playlists_exist
-- Whether the store has the table (a store older than schema version 5, read
-- by a reader, which never migrates, has none).
SELECT count(*) > 0 FROM duckdb_tables() WHERE table_name = 'saved_playlists' AND schema_name = 'main';

-- name: saved_playlists_all
SELECT name, seeds, n, max_per_artist, exclude_file, min_seconds, max_seconds, artist_gap, album_gap,
       playlist_path, spotify_name, track_ids, saved_at, refreshed_at, problem
FROM saved_playlists
WHERE $name IS NULL OR name = $name
ORDER BY name;

-- name: saved_playlist_save
-- A recipe saved with the list it made just now; saving a name again replaces it.
INSERT OR REPLACE INTO saved_playlists (name, seeds, n, max_per_artist, exclude_file, min_seconds, max_seconds,
                                        artist_gap, album_gap, playlist_path, spotify_name, track_ids, saved_at,
                                        refreshed_at, problem)
VALUES ($name, $seeds, $n, $max_per_artist, $exclude_file, $min_seconds, $max_seconds, $artist_gap, $album_gap,
        $playlist_path, $spotify_name, $track_ids, current_timestamp, current_timestamp, NULL);

-- name: saved_playlist_refreshed
-- A refresh: the list it made (the one before when it could make none) and
-- its problem, if any.
UPDATE saved_playlists
SET track_ids = coalesce($track_ids, track_ids), refreshed_at = current_timestamp, problem = $problem
WHERE name = $name;

-- name: saved_playlist_delete
DELETE FROM saved_playlists WHERE name = $name RETURNING name;

