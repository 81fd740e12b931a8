-- Each upstream attempt of the request, in the order they ended: a JSON
-- array of {"deployment", "model", "outcome", "status", "duration_ms"}
-- (at most 16 entries: the first 15 and the last). NULL when no attempt
-- was made, and for rows written before this column existed.
ALTER TABLE requests ADD COLUMN attempt_details TEXT;
