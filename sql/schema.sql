-- Sonufy's DuckDB schema. Idempotent: applied at the start of every run.
-- Every statement is named ("-- name: ...") so that code refers to it by name.

-- name: create_sonufy_schema
-- One row: the schema version of the code that last migrated this store, and
-- a digest of its schema statements. Only writers migrate; code older than
-- the version refuses to write (see sql/__init__.py, SCHEMA_VERSION).
CREATE TABLE IF NOT EXISTS sonufy_schema (
    singleton     BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    version       INTEGER NOT NULL,
    fingerprint   VARCHAR NOT NULL,
    migrated_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- name: create_tracks
-- One row per recording we know about, whatever the source. track_id is the
-- Spotify id for catalog tracks, "file:<sha1 of path>" for local files.
CREATE TABLE IF NOT EXISTS tracks (
    track_id      VARCHAR PRIMARY KEY,
    source        VARCHAR NOT NULL,          -- 'spotify' | 'folder'
    title         VARCHAR NOT NULL,
    artist        VARCHAR NOT NULL,          -- first credited artist
    artists       VARCHAR[],                 -- all credited artists
    artist_id     VARCHAR,
    album         VARCHAR,
    album_id      VARCHAR,
    release_date  VARCHAR,
    duration_ms   INTEGER,
    isrc          VARCHAR,
    explicit      BOOLEAN,
    popularity    INTEGER,
    uri           VARCHAR,
    preview_url   VARCHAR,                   -- Spotify's own preview, where the app still gets one
    path          VARCHAR,                   -- the audio file, for local sources
    found_by      VARCHAR,                   -- the query or folder that found it
    first_seen    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- name: create_previews
-- The audio we analysed for a track: where it came from and where it lies.
-- Signed preview URLs expire in minutes, so they are never stored.
CREATE TABLE IF NOT EXISTS previews (
    track_id      VARCHAR PRIMARY KEY,
    provider      VARCHAR NOT NULL,          -- 'spotify' | 'deezer' | 'folder'
    path          VARCHAR,                   -- NULL once the file has been dropped
    bytes         BIGINT NOT NULL,
    duration_s    DOUBLE NOT NULL,
    fetched_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- name: create_files
-- Files of local folder sources as last scanned: a rescan skips a file whose
-- size and modification time are unchanged.
CREATE TABLE IF NOT EXISTS files (
    path          VARCHAR PRIMARY KEY,
    track_id      VARCHAR NOT NULL,
    root          VARCHAR NOT NULL,
    size          BIGINT NOT NULL,
    mtime_ns      BIGINT NOT NULL,
    scanned_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- name: create_spectrogram_sets
-- One row per set of spectrogram parameters: changing n_mels or hop makes a
-- new set, never a mix of two in one set.
CREATE TABLE IF NOT EXISTS spectrogram_sets (
    set_id        VARCHAR PRIMARY KEY,
    params        JSON NOT NULL,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- name: create_spectrograms
-- Spectrograms live in .npy shards on disk; this table says which shard and
-- row holds each clip. A long file may have several excerpts (0, 1, ...);
-- a track's vector is the mean over all of them.
CREATE TABLE IF NOT EXISTS spectrograms (
    track_id      VARCHAR NOT NULL,
    set_id        VARCHAR NOT NULL,
    excerpt       INTEGER NOT NULL DEFAULT 0,
    shard         VARCHAR NOT NULL,
    "row"         INTEGER NOT NULL,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (track_id, set_id, excerpt)
);

-- name: create_models
CREATE TABLE IF NOT EXISTS models (
    model_version VARCHAR PRIMARY KEY,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    set_id        VARCHAR NOT NULL,          -- the spectrograms it was trained on
    config        JSON NOT NULL,
    checkpoint    VARCHAR NOT NULL,
    epochs        INTEGER,
    train_mse     DOUBLE,
    val_mse       DOUBLE,
    n_train_tracks INTEGER,
    n_val_tracks  INTEGER,
    train_seconds DOUBLE,
    -- The standardisation of this model's latent space (see standardise.py).
    latent_mean   FLOAT[256],
    latent_scale  FLOAT[256],
    is_current    BOOLEAN NOT NULL DEFAULT false
);

-- name: create_embeddings
-- The latent space: one 256-d vector per track and model version. raw is the
-- mean of the encoder's outputs over fixed tiles; vector, the space cosine
-- runs in, is raw standardised with the model's latent_mean and latent_scale
-- (its first 128 numbers from the encoder's time branch, the last 128 from its
-- frequency branch), or, for a model whose config has "texture": "blocks"
-- (the default), raw standardised fused with the track's texture patterns
-- (sonufy_model/fusion.py): the first 128 numbers the encoder's, the last 128
-- the texture's.
CREATE TABLE IF NOT EXISTS embeddings (
    track_id      VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    raw           FLOAT[256] NOT NULL,
    vector        FLOAT[256] NOT NULL,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (track_id, model_version)
);

-- name: create_scraped_albums
-- Albums a scrape read whole (every track, by any query, album or playlist),
-- none of whose tracks failed the metadata suite (schema version 7): the
-- nightly's tag:new search does not read them again. Not derived from
-- tracks: an album whose tracks all re-release recordings already kept
-- (their ISRCs) has no row there, and one with a row may have been found in
-- part (a genre query).
CREATE TABLE IF NOT EXISTS scraped_albums (
    album_id      VARCHAR PRIMARY KEY,
    scraped_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- name: create_quarantine
-- Tracks a stage could not process, with the reason. A later success at the
-- same stage removes the row. attempts counts the runs that quarantined the
-- track at this stage; at the fetch stage, a track with fetch_max_attempts
-- (default 3) is no longer tried until someone deletes its row (see README).
CREATE TABLE IF NOT EXISTS quarantine (
    track_id      VARCHAR NOT NULL,
    stage         VARCHAR NOT NULL,
    reason        VARCHAR NOT NULL,
    run_id        VARCHAR,
    attempts      INTEGER NOT NULL DEFAULT 1,
    quarantined_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (track_id, stage)
);

-- name: create_runs
CREATE TABLE IF NOT EXISTS runs (
    run_id        VARCHAR PRIMARY KEY,
    flow          VARCHAR NOT NULL,
    started_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at   TIMESTAMP,
    status        VARCHAR NOT NULL DEFAULT 'running',
    parameters    JSON,
    counts        JSON
);

-- name: create_latent_view
-- The stable view for ad-hoc SQL: the current model's latent space.
CREATE OR REPLACE VIEW latent AS
SELECT t.track_id, t.artist, t.title, t.album, t.source, t.path,
       e.model_version, e.vector
FROM embeddings AS e
JOIN models AS m ON m.model_version = e.model_version AND m.is_current
JOIN tracks AS t ON t.track_id = e.track_id;

-- name: create_evaluations
-- `sonufy evaluate`: how often a track's k nearest neighbours share its label,
-- per space (latent: the model's; mfcc and random: baselines on the same
-- tracks), with and without the artist filter (same-artist neighbours not
-- counted as candidates). map is over the full ranking; chance and map_chance
-- are what a random ranking scores; tracks is how many seeds were scored.
CREATE TABLE IF NOT EXISTS evaluations (
    evaluated_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    model_version VARCHAR NOT NULL,
    space         VARCHAR NOT NULL,          -- 'latent' | 'mfcc' | 'random'
    label         VARCHAR NOT NULL,          -- 'genre' | 'artist' | 'album' | 'csv:COLUMN'
    artist_filter BOOLEAN NOT NULL,
    k             INTEGER NOT NULL,
    precision     DOUBLE NOT NULL,
    map           DOUBLE NOT NULL,
    chance        DOUBLE NOT NULL,
    map_chance    DOUBLE,
    tracks        INTEGER NOT NULL
);

-- name: create_baseline_features
-- `sonufy evaluate`'s classic baselines, per track and spectrogram set: the
-- mean over the track's excerpts of each excerpt's statistics (naive: mean
-- and std over time of each mel band in dB; mfcc: mean and covariance of 20
-- MFCCs), not standardised. A row holds while the track's spectrograms are
-- the ones it was computed from (same count, same latest created_at).
CREATE TABLE IF NOT EXISTS baseline_features (
    track_id        VARCHAR NOT NULL,
    set_id          VARCHAR NOT NULL,
    kind            VARCHAR NOT NULL,        -- 'naive' | 'mfcc'
    features        FLOAT[] NOT NULL,
    excerpts        INTEGER NOT NULL,
    spectrograms_at TIMESTAMP NOT NULL,      -- the latest created_at of the spectrograms it came from
    computed_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (track_id, set_id, kind)
);

-- name: create_saved_playlists
-- `sonufy playlist save`: a radio's recipe, made again by every nightly
-- (schema version 5). seeds are track ids; exclude_file is read again at each
-- refresh (edit it, and the next list follows); playlist_path is the file
-- written (absolute) and spotify_name the listener's playlist, each NULL when
-- not asked for. track_ids is the list as last made, what the next refresh
-- compares with; problem is why the last refresh could not make or deliver
-- it (NULL: it did).
CREATE TABLE IF NOT EXISTS saved_playlists (
    name           VARCHAR PRIMARY KEY,
    seeds          VARCHAR[] NOT NULL,
    n              INTEGER NOT NULL,
    max_per_artist INTEGER,
    exclude_file   VARCHAR,
    min_seconds    DOUBLE,
    max_seconds    DOUBLE,
    artist_gap     INTEGER NOT NULL DEFAULT 0,
    album_gap      INTEGER NOT NULL DEFAULT 0,
    playlist_path  VARCHAR,
    spotify_name   VARCHAR,
    track_ids      VARCHAR[] NOT NULL,
    saved_at       TIMESTAMP NOT NULL DEFAULT current_timestamp,
    refreshed_at   TIMESTAMP,
    problem        VARCHAR
);
