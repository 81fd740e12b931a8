-- Whether the response cache answered the request, and the metadata the
-- client attached (x-switchboard-metadata: a JSON object of strings,
-- members sorted). Mirrors migrations/sqlite/0007_cache_hit_metadata.sql.
ALTER TABLE requests ADD COLUMN cache_hit BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE requests ADD COLUMN metadata TEXT;
