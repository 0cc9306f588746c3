-- Why: a dashboard sign-in must survive a restart and hold on every instance behind a load
-- balancer, so sessions live in the database, not in one process's memory. The browser keeps a
-- random session id in an HttpOnly cookie; this table keeps only the id's SHA-256, so whoever can
-- read the table still cannot present a session. Expired rows are deleted at each sign-in.
CREATE TABLE kavach_stream_dashboard_sessions (
    id_hash    bytea PRIMARY KEY,
    subscriber text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,

    CONSTRAINT kavach_stream_dashboard_session_id_hash_is_sha256 CHECK (octet_length(id_hash) = 32)
);

CREATE INDEX kavach_stream_dashboard_sessions_by_expiry
    ON kavach_stream_dashboard_sessions (expires_at);
