-- Reading the request log newest first, a page at a time: the order is
-- (started_at_ms, request_id, id), and SQLite appends the rowid (`id`) to
-- every index, so this index serves both the order and the keyset
-- condition of the next page. It also serves every time-range scan, so it
-- replaces the index on started_at_ms alone and the insert path keeps the
-- same number of indexes. Key and team filters use requests_key and
-- requests_team (0003).
CREATE INDEX requests_log_order ON requests (started_at_ms, request_id);
DROP INDEX requests_started_at;
