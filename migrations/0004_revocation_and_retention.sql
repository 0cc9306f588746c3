-- Why: two questions the stream now asks often must not scan the table. "Was this subscriber
-- revoked?" is asked at every connect when revoked subscribers are refused; retention prunes
-- whole transactions in commit order by their commit time (kavach_stream_commits_by_time, 0002).
CREATE INDEX kavach_stream_events_revoked_agents
    ON kavach_stream_events (agent_id)
    WHERE type = 'agent.revoked';
