-- Named statements the pipeline runs. Parameters are positional ($1, $2...)
-- or named ($name) DuckDB parameters.

-- name: upsert_tracks
-- From a staged batch (tracks_batch) that was de-duplicated by track_id
-- before this runs. first_seen survives reruns. One track per recording: a
-- row whose ISRC the table already holds under another track id is not
-- written (the track that came first stays, with its previews and vectors),
-- and of several batch rows with one ISRC only the earliest release (then the
-- smallest id) is, as catalog.one_per_isrc chooses. Returns the rows written.
INSERT INTO tracks AS t (track_id, source, title, artist, artists, artist_id, album, album_id,
                         release_date, duration_ms, isrc, explicit, popularity, uri, preview_url, path, found_by)
SELECT track_id, source, title, artist, artists, artist_id, album, album_id,
       release_date, duration_ms, isrc, explicit, popularity, uri, preview_url, path, found_by
FROM tracks_batch AS b
WHERE b.isrc IS NULL
   OR NOT EXISTS (SELECT 1 FROM tracks AS held WHERE held.isrc = b.isrc AND held.track_id <> b.track_id)
QUALIFY b.isrc IS NULL
   OR row_number() OVER (PARTITION BY b.isrc ORDER BY b.release_date NULLS LAST, b.track_id) = 1
ON CONFLICT (track_id) DO UPDATE SET
    source = excluded.source, title = excluded.title, artist = excluded.artist,
    artists = excluded.artists, artist_id = excluded.artist_id, album = excluded.album,
    album_id = excluded.album_id, release_date = excluded.release_date,
    duration_ms = excluded.duration_ms, isrc = excluded.isrc, explicit = excluded.explicit,
    popularity = coalesce(excluded.popularity, t.popularity), uri = excluded.uri,
    preview_url = excluded.preview_url,
    path = excluded.path, found_by = coalesce(t.found_by, excluded.found_by),
    updated_at = now()
-- Only rows that changed are touched, so a rerun writes nothing and
-- updated_at says when a track's metadata last changed.
WHERE (t.source, t.title, t.artist, t.artists, t.artist_id, t.album, t.album_id, t.release_date,
       t.duration_ms, t.isrc, t.explicit, t.popularity, t.uri, t.preview_url, t.path)
      IS DISTINCT FROM
      (excluded.source, excluded.title, excluded.artist, excluded.artists, excluded.artist_id,
       excluded.album, excluded.album_id, excluded.release_date, excluded.duration_ms, excluded.isrc,
       excluded.explicit, coalesce(excluded.popularity, t.popularity), excluded.uri,
       excluded.preview_url, excluded.path);

-- name: tracks_without_preview
-- Catalog tracks still to fetch: no preview yet, and not already quarantined
-- at the fetch stage by $max_attempts runs (those wait to be released).
SELECT t.track_id, t.title, t.artist, t.isrc, t.preview_url
FROM tracks AS t
LEFT JOIN previews AS p USING (track_id)
LEFT JOIN quarantine AS q ON q.track_id = t.track_id AND q.stage = 'fetch'
WHERE p.track_id IS NULL AND t.source = 'spotify'
  AND coalesce(q.attempts, 0) < $max_attempts
ORDER BY t.track_id;

-- name: upsert_previews
INSERT OR REPLACE INTO previews (track_id, provider, path, bytes, duration_s, fetched_at)
SELECT track_id, provider, path, bytes, duration_s, current_timestamp FROM previews_batch;

-- name: previews_without_spectrogram
SELECT p.track_id, p.path
FROM previews AS p
LEFT JOIN spectrograms AS s ON s.track_id = p.track_id AND s.set_id = $set_id
WHERE s.track_id IS NULL AND p.path IS NOT NULL
ORDER BY p.track_id;

-- name: upsert_spectrogram_set
INSERT INTO spectrogram_sets (set_id, params) VALUES ($set_id, $params)
ON CONFLICT (set_id) DO NOTHING;

-- name: insert_spectrograms
INSERT OR REPLACE INTO spectrograms (track_id, set_id, excerpt, shard, "row", created_at)
SELECT track_id, set_id, excerpt, shard, "row", current_timestamp FROM spectrograms_batch;

-- name: spectrogram_manifest
-- Every spectrogram of a set that is not quarantined, in shard order so that
-- readers walk each shard once.
SELECT s.track_id, s.excerpt, s.shard, s."row"
FROM spectrograms AS s
WHERE s.set_id = $set_id
  AND s.track_id NOT IN (SELECT track_id FROM quarantine WHERE stage = 'spectrogram')
ORDER BY s.shard, s."row";

-- name: spectrograms_without_embedding
-- Every excerpt of each track without a vector, a track's rows together.
SELECT s.track_id, s.excerpt, s.shard, s."row"
FROM spectrograms AS s
LEFT JOIN embeddings AS e ON e.track_id = s.track_id AND e.model_version = $model_version
WHERE s.set_id = $set_id AND e.track_id IS NULL
  AND s.track_id NOT IN (SELECT track_id FROM quarantine WHERE stage = 'spectrogram')
ORDER BY s.shard, s."row";

-- name: insert_model
INSERT OR REPLACE INTO models (model_version, set_id, config, checkpoint, epochs, train_mse,
                               val_mse, val_loss, n_train_tracks, n_val_tracks, train_seconds,
                               latent_mean, latent_scale, is_current, ever_current)
VALUES ($model_version, $set_id, $config, $checkpoint, $epochs, $train_mse, $val_mse, $val_loss,
        $n_train_tracks, $n_val_tracks, $train_seconds,
        $latent_mean::FLOAT[256], $latent_scale::FLOAT[256], false, false);

-- name: promote_model
-- Exactly one current model, in one statement: readers see the old version
-- or the new one, never none or both. The promotion request is settled; the
-- version is marked as having been current (its vectors are kept from then on).
UPDATE models SET is_current = (model_version = $model_version),
                  ever_current = CASE WHEN model_version = $model_version THEN true ELSE ever_current END,
                  promotion_requested_at = CASE WHEN model_version = $model_version THEN NULL
                                                ELSE promotion_requested_at END;

-- name: switch_to_pending
-- The pending version becomes current, in one statement that checks itself
-- that every spectrogram of its set (but those quarantined) has a vector in
-- it: no write landing between a check and the switch can leave a track out
-- of `latent`. Returns the rows changed (none: nothing pending, or not yet
-- encoded). The new version is marked as having been current.
WITH ready AS (
    SELECT m.model_version FROM models AS m
    WHERE m.promotion_requested_at IS NOT NULL AND NOT m.is_current
      AND NOT EXISTS (
          SELECT 1 FROM spectrograms AS s
          WHERE s.set_id = m.set_id
            AND s.track_id NOT IN (SELECT track_id FROM quarantine WHERE stage = 'spectrogram')
            AND NOT EXISTS (SELECT 1 FROM embeddings AS e
                            WHERE e.track_id = s.track_id AND e.model_version = m.model_version))
      AND m.promotion_requested_at = (SELECT max(promotion_requested_at) FROM models WHERE NOT is_current)
)
UPDATE models SET is_current = (model_version = (SELECT model_version FROM ready)),
                  ever_current = CASE WHEN model_version = (SELECT model_version FROM ready) THEN true
                                      ELSE ever_current END,
                  promotion_requested_at = CASE WHEN model_version = (SELECT model_version FROM ready) THEN NULL
                                                ELSE promotion_requested_at END
WHERE EXISTS (SELECT 1 FROM ready)
RETURNING model_version, is_current;

-- name: forget_superseded_embeddings
-- The vectors of a version that was waiting to become current, never became
-- it, and is now replaced by another request ($model_version): a run killed
-- while encoding it left them, and nothing will finish or read them. Runs in
-- the request's transaction, before it.
DELETE FROM embeddings WHERE model_version IN (
    SELECT model_version FROM models
    WHERE promotion_requested_at IS NOT NULL AND NOT is_current AND model_version <> $model_version);

-- name: request_promotion
-- The version to become current once every track has a vector in it; a newer
-- request replaces an older one.
UPDATE models SET promotion_requested_at = CASE WHEN model_version = $model_version
                                                THEN current_timestamp ELSE NULL END;

-- name: pending_model
-- The version waiting to become current, if any.
SELECT model_version, checkpoint, set_id, latent_mean, latent_scale,
       coalesce(json_extract_string(config, '$.texture'), 'none') AS texture FROM models
WHERE promotion_requested_at IS NOT NULL AND NOT is_current
ORDER BY promotion_requested_at DESC LIMIT 1;

-- name: current_model
SELECT model_version, checkpoint, set_id, latent_mean, latent_scale,
       coalesce(json_extract_string(config, '$.texture'), 'none') AS texture FROM models WHERE is_current;

-- name: model_by_version
SELECT model_version, checkpoint, set_id, latent_mean, latent_scale,
       coalesce(json_extract_string(config, '$.texture'), 'none') AS texture FROM models WHERE model_version = $model_version;

-- name: insert_embeddings
INSERT OR REPLACE INTO embeddings (track_id, model_version, raw, vector, created_at)
SELECT track_id, model_version, raw::FLOAT[256], vector::FLOAT[256], current_timestamp
FROM embeddings_batch;

-- name: quarantine_tracks
-- The latest reason wins; quarantined again at the same stage counts one more attempt.
INSERT INTO quarantine AS q (track_id, stage, reason, run_id, attempts, quarantined_at)
SELECT track_id, stage, reason, run_id, 1, current_timestamp FROM quarantine_batch
ON CONFLICT (track_id, stage) DO UPDATE SET
    reason = excluded.reason, run_id = excluded.run_id,
    attempts = q.attempts + 1, quarantined_at = excluded.quarantined_at;

-- name: release_from_quarantine
DELETE FROM quarantine WHERE stage = $stage AND track_id IN (SELECT track_id FROM released_batch);

-- name: start_run
INSERT OR REPLACE INTO runs (run_id, flow, started_at, status, parameters)
VALUES ($run_id, $flow, current_timestamp, 'running', $parameters);

-- name: finish_run
UPDATE runs SET finished_at = current_timestamp, status = $status, counts = $counts
WHERE run_id = $run_id;

-- name: find_track
-- A track by id, or by "artist - title" (case-insensitive), current space only.
SELECT track_id, artist, title FROM latent
WHERE track_id = $query OR lower(artist || ' - ' || title) = lower($query)
ORDER BY track_id
LIMIT 1;

-- name: table_counts
SELECT
    (SELECT count(*) FROM tracks) AS tracks,
    (SELECT count(*) FROM previews) AS previews,
    (SELECT count(*) FROM spectrograms) AS spectrograms,
    (SELECT count(*) FROM embeddings) AS embeddings,
    (SELECT count(*) FROM quarantine) AS quarantined,
    (SELECT count(*) FROM models) AS models;

-- name: first_track
-- A stable default seed track for demos: the first of the current space.
SELECT track_id, artist, title FROM latent ORDER BY artist, title, track_id LIMIT 1;

-- name: known_album_ids
-- Albums an earlier scrape read whole, none of their tracks failing the
-- metadata suite: a nightly's tag:new search skips them. (An album with only
-- some of its tracks here, found by a genre query, is read again.)
SELECT album_id FROM scraped_albums;

-- name: remember_scraped_albums
INSERT INTO scraped_albums (album_id) SELECT album_id FROM albums_batch ON CONFLICT DO NOTHING;

-- name: known_files
SELECT path, size, mtime_ns FROM files WHERE root = $root;

-- name: upsert_files
INSERT OR REPLACE INTO files (path, track_id, root, size, mtime_ns, scanned_at)
SELECT path, track_id, root, size, mtime_ns, current_timestamp FROM files_batch;

-- name: forget_derived_spectrograms
-- A changed file's spectrograms and vectors describe audio that is gone.
DELETE FROM spectrograms WHERE track_id IN (SELECT track_id FROM changed_batch);

-- name: forget_derived_embeddings
DELETE FROM embeddings WHERE track_id IN (SELECT track_id FROM changed_batch);

-- name: droppable_previews
-- Downloaded previews (never a user's own files) of the tracks in dropped_batch.
SELECT p.track_id, p.path FROM previews AS p
WHERE p.provider <> 'folder' AND p.path IS NOT NULL
  AND p.track_id IN (SELECT track_id FROM dropped_batch);

-- name: forget_preview_paths
UPDATE previews SET path = NULL WHERE track_id IN (SELECT track_id FROM dropped_batch);

-- name: evaluation_space
-- A model's latent space ($model_version, or the current one when NULL) with
-- the labels `sonufy evaluate` knows: genre is the search query's genre:"..."
-- (the style, for the demo catalog), album the album id (else artist and
-- album name); path and root (the folder source's) for a local file, for the
-- folder labels and path-keyed label files.
SELECT e.track_id, e.model_version, m.set_id, e.vector, t.artist,
       coalesce(t.album_id, CASE WHEN t.album IS NOT NULL THEN t.artist || ' / ' || t.album END) AS album,
       nullif(regexp_extract(t.found_by, 'genre:"([^"]+)"', 1), '') AS genre,
       t.path, f.root
FROM embeddings AS e
JOIN models AS m ON m.model_version = e.model_version
JOIN tracks AS t ON t.track_id = e.track_id
LEFT JOIN files AS f ON f.path = t.path
WHERE CASE WHEN $model_version IS NULL THEN m.is_current ELSE m.model_version = $model_version END
ORDER BY e.track_id;

-- name: insert_evaluations
-- One run's rows share evaluated_at (current_timestamp is the transaction's).
INSERT INTO evaluations (evaluated_at, model_version, space, label, artist_filter, exclude_same, k,
                         precision, precision_low, precision_high, map, map_low, map_high,
                         chance, map_chance, tracks)
SELECT current_timestamp, $model_version, space, label, artist_filter, exclude_same, k,
       precision, precision_low, precision_high, map, map_low, map_high, chance, map_chance, tracks
FROM evaluations_batch;

-- name: evaluations
SELECT evaluated_at, model_version, space, label, artist_filter, exclude_same, k, precision,
       precision_low, precision_high, map, map_low, map_high, chance, map_chance, tracks
FROM evaluations
ORDER BY evaluated_at, label, artist_filter, exclude_same NULLS FIRST, space;

-- name: baseline_manifest
-- The spectrograms of a set that are not quarantined, with when each was
-- made, in shard order: what the evaluation's baselines are computed from.
SELECT s.track_id, s.excerpt, s.shard, s."row", s.created_at
FROM spectrograms AS s
WHERE s.set_id = $set_id
  AND s.track_id NOT IN (SELECT track_id FROM quarantine WHERE stage = 'spectrogram')
ORDER BY s.shard, s."row";

-- name: cached_baseline_features
-- Baseline features of a set and kind still computed from the track's
-- current spectrograms (a rescan that redid them makes the row stale).
SELECT b.track_id, b.features
FROM baseline_features AS b
JOIN (SELECT track_id, count(*) AS excerpts, max(created_at) AS created_at
      FROM spectrograms WHERE set_id = $set_id GROUP BY track_id) AS s
  ON s.track_id = b.track_id AND s.excerpts = b.excerpts AND s.created_at = b.spectrograms_at
WHERE b.set_id = $set_id AND b.kind = $kind;

-- name: upsert_baseline_features
INSERT OR REPLACE INTO baseline_features (track_id, set_id, kind, features, excerpts, spectrograms_at, computed_at)
SELECT track_id, $set_id, $kind, features, excerpts, spectrograms_at, current_timestamp
FROM baseline_features_batch;

-- name: crash_stale_runs
-- Runs of a flow still marked running while a new one holds its lock: their
-- process died (kill -9, a lost machine). The new run finishes their work.
UPDATE runs SET status = 'crashed', finished_at = current_timestamp
WHERE flow = $flow AND status = 'running' AND run_id <> $run_id;

-- name: spectrogram_set_params
SELECT params FROM spectrogram_sets WHERE set_id = $set_id;

-- name: forget_model_embeddings
-- The vectors of a model version that was not promoted.
DELETE FROM embeddings WHERE model_version = $model_version;

-- name: changes_since
-- When the run's changes began: the end of the last run that completed
-- before it (rows written by crashed runs in between count as the run's).
SELECT coalesce(max(finished_at), TIMESTAMP '1970-01-01') FROM runs
WHERE status = 'completed' AND run_id <> $run_id
  AND finished_at <= (SELECT started_at FROM runs WHERE run_id = $run_id);

-- name: run_additions
-- Tracks that entered a model's latent space since $since.
SELECT t.track_id, t.artist, t.title, t.album, t.release_date, t.source, p.provider, t.found_by
FROM embeddings AS e
JOIN tracks AS t ON t.track_id = e.track_id
LEFT JOIN previews AS p ON p.track_id = e.track_id
WHERE e.model_version = $model_version AND e.created_at >= $since
ORDER BY t.artist, t.title, t.track_id;

-- name: run_quarantine
-- Tracks quarantined since $since, with the reason.
SELECT q.track_id, t.artist, t.title, q.stage, q.reason, q.attempts
FROM quarantine AS q
LEFT JOIN tracks AS t ON t.track_id = q.track_id
WHERE q.quarantined_at >= $since
ORDER BY q.stage, q.track_id;

-- name: run_counts
-- What changed since $since, table by table.
SELECT
    (SELECT count(*) FROM tracks WHERE first_seen >= $since) AS new_tracks,
    (SELECT count(*) FROM previews WHERE fetched_at >= $since) AS new_previews,
    (SELECT count(DISTINCT track_id) FROM spectrograms WHERE created_at >= $since) AS new_spectrograms,
    (SELECT count(*) FROM embeddings WHERE created_at >= $since) AS new_embeddings,
    (SELECT count(*) FROM quarantine WHERE quarantined_at >= $since) AS quarantined;

-- name: stored_identical_vectors
-- Stored tracks of a model version whose raw vector is identical to one of a
-- batch's (vectors_batch: track_id, raw), other than the track itself.
SELECT b.track_id, e.track_id AS other_track_id
FROM vectors_batch AS b
JOIN embeddings AS e ON e.model_version = $model_version AND e.raw = b.raw::FLOAT[256]
WHERE e.track_id <> b.track_id
ORDER BY b.track_id, e.track_id;

-- name: has_schema_version
-- Whether the store records its schema version (stores from before versions do not).
SELECT count(*) > 0 FROM duckdb_tables() WHERE table_name = 'sonufy_schema' AND schema_name = 'main';

-- name: schema_version
SELECT version, fingerprint FROM sonufy_schema;

-- name: record_schema_version
-- In the migration's transaction, after every schema statement.
INSERT OR REPLACE INTO sonufy_schema (singleton, version, fingerprint, migrated_at)
VALUES (true, $version, $fingerprint, current_timestamp);

-- name: gc_shards_in_use
-- `sonufy gc`: the spectrogram shards the store points at (every other .npy
-- under the data folder's spectrograms is an orphan: a batch written by a
-- run killed before it recorded it).
SELECT DISTINCT shard FROM spectrograms;

-- name: gc_rejected_models
-- `sonufy gc`: versions that are neither current nor waiting to become
-- current and have no vectors left (a retrain's candidate that was not
-- promoted), or only vectors gc deletes (abandoned_candidates: a candidate
-- whose retrain was killed): their checkpoints can go; their rows and
-- evaluations stay.
SELECT m.model_version, m.checkpoint FROM models AS m
WHERE NOT m.is_current AND m.promotion_requested_at IS NULL
  AND (m.ever_current IS NOT DISTINCT FROM false
       OR NOT EXISTS (SELECT 1 FROM embeddings AS e WHERE e.model_version = m.model_version))
ORDER BY m.model_version;

-- name: abandoned_candidates
-- Versions with vectors that are not current, not waiting to become current
-- and have never been current, and how many vectors each has: a retrain's
-- candidate whose run was killed while encoding it or before deciding (a
-- finished retrain deletes a rejected candidate's vectors itself). Nothing
-- reads or finishes them. Only while holding the writer lock: a retrain
-- encoding its candidate holds it. Unknown (NULL ever_current) counts as
-- having been current.
SELECT e.model_version, count(*) AS vectors FROM embeddings AS e
JOIN models AS m ON m.model_version = e.model_version
WHERE NOT m.is_current AND m.promotion_requested_at IS NULL AND m.ever_current IS NOT DISTINCT FROM false
GROUP BY e.model_version ORDER BY e.model_version;

-- name: forget_abandoned_candidates
-- The vectors of abandoned_candidates' versions.
DELETE FROM embeddings WHERE model_version IN (
    SELECT model_version FROM models
    WHERE NOT is_current AND promotion_requested_at IS NULL AND ever_current IS NOT DISTINCT FROM false);
