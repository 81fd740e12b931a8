-- Request and response bodies, redacted, for the requests whose model,
-- key or team asks for them; kept apart so the requests table stays small.
CREATE TABLE request_bodies (
    request_id TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    request TEXT NOT NULL,
    response TEXT
);
CREATE INDEX request_bodies_by_request ON request_bodies (request_id, started_at_ms);
CREATE INDEX request_bodies_by_start ON request_bodies (started_at_ms);
