//! The dashboard's own reads, beyond what [`EventStream`](crate::EventStream) offers: one event by
//! id, counts per type over the last hour, and the storage the feed takes.
//!
//! Like `store`, they see only events whose transaction committed (joined to
//! `kavach_stream_commits`) or count raw rows where that does not matter (operations figures).

use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::event::{Cursor, EventType, StoredEvent};

use super::error::DashboardError;

/// Events per type whose time is within the last hour, most frequent first.
pub(crate) async fn counts_last_hour(pool: &Pool) -> Result<Vec<(String, i64)>, DashboardError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT type, count(*) FROM kavach_stream_events \
             WHERE timestamp >= now() - interval '1 hour' \
             GROUP BY type ORDER BY count(*) DESC, type",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Bytes taken by the events and commits tables, with their indexes.
pub(crate) async fn storage_bytes(pool: &Pool) -> Result<i64, DashboardError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT pg_total_relation_size('kavach_stream_events') \
                  + pg_total_relation_size('kavach_stream_commits')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The committed event with this id.
pub(crate) async fn event_by_id(
    pool: &Pool,
    id: Uuid,
) -> Result<Option<StoredEvent>, DashboardError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT c.position, e.seq, e.type, e.timestamp, e.data, e.agent_id, e.user_id \
             FROM kavach_stream_events e JOIN kavach_stream_commits c ON c.xid = e.xid \
             WHERE e.id = $1",
            &[&id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };

    let type_name: String = row.try_get(2)?;
    Ok(Some(StoredEvent {
        cursor: Cursor::new(row.try_get(0)?, row.try_get(1)?),
        id,
        // The table's CHECK constraint admits only valid names.
        event_type: type_name
            .parse()
            .unwrap_or_else(|_| EventType::unchecked("invalid")),
        timestamp: row.try_get(3)?,
        data: row.try_get(4)?,
        agent_id: row.try_get(5)?,
        user_id: row.try_get(6)?,
    }))
}
