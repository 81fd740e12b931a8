-- One row per request that reached a model endpoint. The same tables,
-- columns and indexes as migrations/sqlite, in PostgreSQL's types: every
-- integer is BIGINT so that one decoder reads both backends.
CREATE TABLE requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    deployment TEXT,
    stream BOOLEAN NOT NULL,
    status BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    error_code TEXT,
    latency_ms BIGINT NOT NULL,
    ttft_ms BIGINT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cached_input_tokens BIGINT,
    reasoning_tokens BIGINT
);
CREATE INDEX requests_started_at ON requests (started_at_ms);
CREATE INDEX requests_request_id ON requests (request_id);
