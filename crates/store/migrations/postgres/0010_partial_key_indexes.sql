-- The key and team filters only ever look for a given key or team, so rows
-- without one (the master key, a gateway without keys) need no entry in
-- those indexes: each such record now costs two index inserts fewer.
-- `key_id = ?` implies `key_id IS NOT NULL`, so the planner still uses them.
DROP INDEX requests_key;
DROP INDEX requests_team;
CREATE INDEX requests_key ON requests (key_id, started_at_ms) WHERE key_id IS NOT NULL;
CREATE INDEX requests_team ON requests (team_id, started_at_ms) WHERE team_id IS NOT NULL;
