-- Nothing looks a record up by `id` alone: it is the last part of the log's
-- order, read through `requests_log_order`, and retention deletes rows by
-- their physical place (`ctid`). Its primary-key index was one of the two
-- index inserts every record without a key costs, and about a fifth of the
-- server's CPU per record written by `COPY` (BENCHMARKS.md). The column
-- keeps its identity, so new rows still take increasing values. (A `ctid`
-- names one row only in an unpartitioned table, as these migrations make
-- `requests`.)
ALTER TABLE requests DROP CONSTRAINT requests_pkey;
