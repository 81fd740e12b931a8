-- Whether the response cache answered the request, and the metadata the
-- client attached (x-switchboard-metadata: a JSON object of strings,
-- members sorted). Rows written before these columns existed read as
-- "not from the cache" and "no metadata".
ALTER TABLE requests ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN metadata TEXT;
