-- Why: a bigserial is taken at INSERT and becomes visible at COMMIT, in another order, so a reader
-- paging by `id > last_seen` silently skips late committers. Instead each writing transaction gets
-- its position at commit time: a deferred constraint trigger takes an advisory transaction lock
-- (held until the commit is visible), draws the next position and records it beside the
-- transaction id. A reader that has seen position P can then never see a new commit below P. The
-- lock serialises only the commit step, which NOTIFY's own commit lock serialises already, and it
-- never waits on unrelated open transactions.
CREATE SEQUENCE kavach_stream_position_seq AS bigint;

CREATE TABLE kavach_stream_commits (
    position     bigint PRIMARY KEY,
    xid          xid8 NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),

    CONSTRAINT kavach_stream_commits_xid_unique UNIQUE (xid)
);

CREATE INDEX kavach_stream_commits_by_time ON kavach_stream_commits (committed_at);

CREATE FUNCTION kavach_stream_sequence_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    this_xid text := pg_current_xact_id()::text;
    assigned bigint;
BEGIN
    -- The trigger fires once per row; only the transaction's first call does the work.
    IF current_setting('kavach_stream.sequenced_xid', true) IS NOT DISTINCT FROM this_xid THEN
        RETURN NULL;
    END IF;

    -- 0x6b617663 spells "kavc": one lock per database orders every commit that wrote events.
    PERFORM pg_advisory_xact_lock(1801549411);
    assigned := nextval('kavach_stream_position_seq');
    INSERT INTO kavach_stream_commits (position, xid) VALUES (assigned, pg_current_xact_id());
    PERFORM set_config('kavach_stream.sequenced_xid', this_xid, true);

    -- The doorbell: it says only that something committed; readers fetch the rows themselves.
    PERFORM pg_notify('kavach_stream', assigned::text);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER kavach_stream_sequence_commit
    AFTER INSERT ON kavach_stream_events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION kavach_stream_sequence_commit();

-- One row: how far retention has pruned, so a cursor from before it is reported as a gap.
CREATE TABLE kavach_stream_state (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through bigint NOT NULL DEFAULT 0
);
INSERT INTO kavach_stream_state DEFAULT VALUES;
