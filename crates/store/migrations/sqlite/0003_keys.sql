-- Virtual keys and teams, and who made each request and what it cost.
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    limits TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT,
    team_id TEXT REFERENCES teams (id),
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    limits TEXT NOT NULL,
    user_limits TEXT,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER,
    metadata TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX keys_team ON keys (team_id);
-- One row whose version grows with every change to keys or teams, so that
-- every instance can tell cheaply when to reload its key cache.
CREATE TABLE key_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO key_changes (id, version) VALUES (1, 0);
ALTER TABLE requests ADD COLUMN key_id TEXT;
ALTER TABLE requests ADD COLUMN team_id TEXT;
ALTER TABLE requests ADD COLUMN end_user TEXT;
ALTER TABLE requests ADD COLUMN cost_nanos INTEGER;
CREATE INDEX requests_key ON requests (key_id, started_at_ms);
CREATE INDEX requests_team ON requests (team_id, started_at_ms);
