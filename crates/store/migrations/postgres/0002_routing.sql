-- Routing: how many upstream attempts a request took, and which public
-- model served it when a fallback did.
ALTER TABLE requests ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN served_model TEXT;
