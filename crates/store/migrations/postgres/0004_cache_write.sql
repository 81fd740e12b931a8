-- Input tokens written to the provider's prompt cache (part of
-- input_tokens), billed at the cache-write price. NULL when the upstream
-- did not report it, and for rows written before this column existed.
-- Mirrors migrations/sqlite/0004_cache_write.sql.
ALTER TABLE requests ADD COLUMN cache_write_tokens BIGINT;
