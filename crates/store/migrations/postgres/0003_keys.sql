-- Virtual keys and teams, and who made each request and what it cost.
-- Mirrors migrations/sqlite/0003_keys.sql. Limits are the store's own JSON
-- (written and read back through serde), kept as JSONB; `metadata` is the
-- operator's object, kept as JSON so that its text reads back exactly as
-- it was written (JSONB would reorder keys and respace it).
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    limits JSONB NOT NULL,
    metadata JSON NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT,
    team_id TEXT REFERENCES teams (id),
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    limits JSONB NOT NULL,
    user_limits JSONB,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT,
    metadata JSON NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX keys_team ON keys (team_id);
-- One row whose version grows with every change to keys or teams, so that
-- every instance can tell cheaply when to reload its key cache.
CREATE TABLE key_changes (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO key_changes (id, version) VALUES (1, 0);
ALTER TABLE requests ADD COLUMN key_id TEXT;
ALTER TABLE requests ADD COLUMN team_id TEXT;
ALTER TABLE requests ADD COLUMN end_user TEXT;
ALTER TABLE requests ADD COLUMN cost_nanos BIGINT;
CREATE INDEX requests_key ON requests (key_id, started_at_ms);
CREATE INDEX requests_team ON requests (team_id, started_at_ms);
