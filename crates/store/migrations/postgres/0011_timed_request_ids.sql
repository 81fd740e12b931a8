-- An id the gateway made carries the request's start time
-- (`switchboard_core::request_id`): such a record is found through
-- `requests_log_order`, by `(started_at_ms, request_id)`. Only the other
-- records (ids sent by clients in `x-request-id`, and every record written
-- before this) keep an entry in the index on the id alone: each record
-- with an id of the gateway's own costs an index insert fewer.
ALTER TABLE requests ADD COLUMN timed_id BOOLEAN NOT NULL DEFAULT FALSE;
DROP INDEX requests_request_id;
CREATE INDEX requests_request_id ON requests (request_id) WHERE NOT timed_id;
