-- When a team expires (milliseconds since the epoch): from then on every
-- key of the team is refused as an expired key is. NULL: never.
-- Mirrors migrations/sqlite/0005_team_expiry.sql.
ALTER TABLE teams ADD COLUMN expires_at_ms BIGINT;
