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
