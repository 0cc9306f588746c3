-- Why: the events table is the truth of the feed. Every instance reads it, every client resumes from
-- it, and a plain `INSERT INTO kavach_stream_events (type, data) VALUES (...)` is all it takes to
-- emit. `seq` orders the rows written by one transaction; the commit-ordered position that readers
-- page by lives in kavach_stream_commits (0002), joined on `xid`.
CREATE TABLE kavach_stream_events (
    seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id        uuid NOT NULL DEFAULT gen_random_uuid(),
    type      text NOT NULL,
    timestamp timestamptz NOT NULL DEFAULT now(),
    data      jsonb NOT NULL DEFAULT '{}'::jsonb,
    agent_id  text,
    user_id   text,
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),

    CONSTRAINT kavach_stream_events_id_unique UNIQUE (id),
    CONSTRAINT kavach_stream_event_type_format
        CHECK (type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' AND length(type) <= 100),
    CONSTRAINT kavach_stream_event_data_is_object CHECK (jsonb_typeof(data) = 'object'),
    CONSTRAINT kavach_stream_event_data_at_most_64_kib CHECK (octet_length(data::text) <= 65536),
    CONSTRAINT kavach_stream_event_agent_id_length CHECK (length(agent_id) BETWEEN 1 AND 200),
    CONSTRAINT kavach_stream_event_user_id_length CHECK (length(user_id) BETWEEN 1 AND 200)
);

-- Readers join a commit's position to its rows in insertion order.
CREATE INDEX kavach_stream_events_by_xid ON kavach_stream_events (xid, seq);
-- `since` replay and the dashboard's time windows.
CREATE INDEX kavach_stream_events_by_time ON kavach_stream_events (timestamp);
CREATE INDEX kavach_stream_events_by_type_time ON kavach_stream_events (type, timestamp);
