-- Changes to the baseline tables of schema.sql, each idempotent, applied in
-- order after it on every run. Never edit a released migration: add one.
-- A new table needs none: schema.sql creates it IF NOT EXISTS, in older stores
-- too (version 5: saved_playlists).

-- name: models_add_promotion_requested_at
-- A version asked to become current: it is encoded for every track first,
-- while queries keep answering from the current one, then the switch is one
-- UPDATE (see switch_model in queries.sql).
ALTER TABLE models ADD COLUMN IF NOT EXISTS promotion_requested_at TIMESTAMP;

-- name: evaluations_add_exclude_same
-- `sonufy evaluate --exclude-same LABEL`: the label whose same-value
-- neighbours were not candidates (NULL: none; artist_filter is 'artist').
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS exclude_same VARCHAR;

-- name: evaluations_add_precision_low
-- 95% bootstrap intervals over the query tracks, and how many were sampled.
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS precision_low DOUBLE;

-- name: evaluations_add_precision_high
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS precision_high DOUBLE;

-- name: evaluations_add_map_low
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS map_low DOUBLE;

-- name: evaluations_add_map_high
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS map_high DOUBLE;

-- name: evaluations_backfill_exclude_same
-- Rows from before exclude_same: the artist filter was the only exclusion.
UPDATE evaluations SET exclude_same = 'artist' WHERE artist_filter AND exclude_same IS NULL;

-- name: models_add_val_loss
-- The validation score a model version was selected on: its objective's loss
-- on held-out tracks (val_mse stays the reconstruction MSE, NULL for models
-- without a decoder).
ALTER TABLE models ADD COLUMN IF NOT EXISTS val_loss DOUBLE;

-- name: models_add_ever_current
-- Whether a version has ever been current (version 6): set where a version
-- becomes current (promote_model, switch_to_pending), false for a new one
-- (insert_model). A version not current, not pending and never current is a
-- retrain's candidate or a train --no-promote version, whose vectors nothing
-- reads once its run has ended: `sonufy gc` and the next retrain delete them
-- (a retrain killed while encoding its candidate left them). A version that
-- was current once keeps its vectors: it can be made current again.
ALTER TABLE models ADD COLUMN IF NOT EXISTS ever_current BOOLEAN;

-- name: models_backfill_ever_current
-- Versions from before the column (NULL), once: the current one, and any
-- other with vectors, count as having been current (whether a version with
-- vectors was once current or a killed candidate is not recorded: keep what
-- might be one to go back to); one without vectors has nothing to keep. Rows
-- written since are never NULL, so applying it again changes nothing.
UPDATE models SET ever_current = is_current OR EXISTS (
    SELECT 1 FROM embeddings AS e WHERE e.model_version = models.model_version)
WHERE ever_current IS NULL;
