-- Each upstream attempt of the request, in the order they ended: a JSON
-- array of {"deployment", "model", "outcome", "status", "duration_ms"}
-- (at most 16 entries: the first 15 and the last). NULL when no attempt
-- was made, and for rows written before this column existed. Kept as
-- TEXT, not JSONB: it is written and read whole, never queried inside.
-- Mirrors migrations/sqlite/0009_attempt_details.sql.
ALTER TABLE requests ADD COLUMN attempt_details TEXT;
