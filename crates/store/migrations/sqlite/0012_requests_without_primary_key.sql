-- PostgreSQL's migration 12 drops the primary-key index on `requests.id`.
-- Here `id` is the rowid, the table's own key, which costs no index of its
-- own: nothing to change, and the numbering stays the same on both backends.
SELECT 1;
