-- Changes to the baseline tables of schema.sql, each idempotent, applied in
-- order after it on every run. Never edit a released migration: add one.

-- name: models_add_promotion_requested_at
-- A version asked to become current: it is encoded for every track first,
-- while queries keep answering from the current one, then the switch is one
-- UPDATE (see switch_model in queries.sql).
ALTER TABLE models ADD COLUMN IF NOT EXISTS promotion_requested_at TIMESTAMP;
