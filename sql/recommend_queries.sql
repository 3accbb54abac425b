-- Named statements of the recommendations the build prints (sonufy_model/search.py, recommend).

-- name: track_styles
-- Each of $track_ids with its style: the genre:"..." of the catalog search
-- that found it (the demo catalog's styles; track_labels.genre), NULL where
-- it has none (a folder library, a search without a genre).
SELECT track_id, genre AS style
FROM track_labels
WHERE track_id IN (SELECT unnest($track_ids::VARCHAR[]));
