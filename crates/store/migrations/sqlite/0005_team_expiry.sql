-- When a team expires (milliseconds since the epoch): from then on every
-- key of the team is refused as an expired key is. NULL: never.
ALTER TABLE teams ADD COLUMN expires_at_ms INTEGER;
