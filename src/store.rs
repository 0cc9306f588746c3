//! Every SQL statement that reads or writes events. The table is the truth: delivery, replay and
//! history all page through it here by [`Cursor`], in commit order.
//!
//! Events are joined to the position their transaction received at commit
//! (`kavach_stream_commits`, see `migrations/0002_commit_sequencer.sql`); rows of a transaction
//! that has not committed have no position yet and are invisible to every reader.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::ToStatement;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::event::{Cursor, EventType, NewEvent, StoredEvent};

const EVENT_COLUMNS: &str =
    "c.position, e.seq, e.id, e.type, e.timestamp, e.data, e.agent_id, e.user_id \
     FROM kavach_stream_commits c JOIN kavach_stream_events e ON e.xid = c.xid";

/// The listener's read: everything after a cursor, unfiltered. The listener prepares it once per
/// connection.
pub(crate) const READ_AFTER: &str =
    "SELECT c.position, e.seq, e.id, e.type, e.timestamp, e.data, e.agent_id, e.user_id \
     FROM kavach_stream_commits c JOIN kavach_stream_events e ON e.xid = c.xid \
     WHERE c.position >= $1 AND (c.position, e.seq) > ($1, $2) \
     ORDER BY c.position, e.seq LIMIT $3";

/// Stores a batch of events in one statement, whatever its size.
const INSERT_BATCH: &str = "INSERT INTO kavach_stream_events (id, type, timestamp, data, agent_id, user_id) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::jsonb[], $5::text[], $6::text[]) \
     RETURNING seq, pg_current_xact_id()::text";

/// What a reader wants to see, beyond the cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these types; `None` means every type.
    pub types: Option<Vec<EventType>>,
    /// Only events whose agent or user is this subscriber.
    pub concerning: Option<String>,
    /// Only events at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub until: Option<DateTime<Utc>>,
}

impl EventFilter {
    /// Whether an event passes the type and subscriber parts of the filter (time bounds are for
    /// table reads only).
    pub fn admits(
        &self,
        event_type: &EventType,
        agent_id: Option<&str>,
        user_id: Option<&str>,
    ) -> bool {
        let type_ok = self
            .types
            .as_ref()
            .is_none_or(|types| types.contains(event_type));
        let subscriber_ok = self
            .concerning
            .as_deref()
            .is_none_or(|id| agent_id == Some(id) || user_id == Some(id));
        type_ok && subscriber_ok
    }

    fn type_names(&self) -> Option<Vec<&str>> {
        self.types
            .as_ref()
            .map(|types| types.iter().map(EventType::as_str).collect())
    }
}

/// Which way a history page runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first, after the cursor.
    Forward,
    /// Newest first, before the cursor.
    Backward,
}

/// Reads up to `limit` events after `after`, oldest first, unfiltered (`statement` is
/// [`READ_AFTER`], prepared or as text).
pub(crate) async fn read_after<S>(
    client: &impl GenericClient,
    statement: &S,
    after: Cursor,
    limit: i64,
) -> Result<Vec<StoredEvent>, tokio_postgres::Error>
where
    S: ToStatement + ?Sized + Sync + Send,
{
    let rows = client
        .query(statement, &[&after.position, &after.seq, &limit])
        .await?;
    rows.iter().map(event_from_row).collect()
}

/// Reads one page of events past `cursor` in `direction` that match `filter`.
pub(crate) async fn read_page(
    client: &impl GenericClient,
    cursor: Cursor,
    direction: Direction,
    filter: &EventFilter,
    limit: i64,
) -> Result<Vec<StoredEvent>, tokio_postgres::Error> {
    let (comparison, order) = match direction {
        Direction::Forward => (">", "ASC"),
        Direction::Backward => ("<", "DESC"),
    };
    let position_bound = match direction {
        Direction::Forward => "c.position >= $1",
        Direction::Backward => "c.position <= $1",
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} WHERE {position_bound} AND (c.position, e.seq) {comparison} ($1, $2) \
         AND ($3::text[] IS NULL OR e.type = ANY($3)) \
         AND ($4::text IS NULL OR e.agent_id = $4 OR e.user_id = $4) \
         AND ($5::timestamptz IS NULL OR e.timestamp >= $5) \
         AND ($6::timestamptz IS NULL OR e.timestamp < $6) \
         ORDER BY c.position {order}, e.seq {order} LIMIT $7"
    );
    let types = filter.type_names();
    let params: [&(dyn ToSql + Sync); 7] = [
        &cursor.position,
        &cursor.seq,
        &types,
        &filter.concerning,
        &filter.from,
        &filter.until,
        &limit,
    ];
    let rows = client.query(sql.as_str(), &params).await?;
    rows.iter().map(event_from_row).collect()
}

/// Counts the stored events that match `filter`.
pub(crate) async fn count(
    client: &impl GenericClient,
    filter: &EventFilter,
) -> Result<i64, tokio_postgres::Error> {
    let sql = "SELECT count(*) FROM kavach_stream_commits c JOIN kavach_stream_events e ON e.xid = c.xid \
         WHERE ($1::text[] IS NULL OR e.type = ANY($1)) \
         AND ($2::text IS NULL OR e.agent_id = $2 OR e.user_id = $2) \
         AND ($3::timestamptz IS NULL OR e.timestamp >= $3) \
         AND ($4::timestamptz IS NULL OR e.timestamp < $4)";
    let types = filter.type_names();
    let row = client
        .query_one(
            sql,
            &[&types, &filter.concerning, &filter.from, &filter.until],
        )
        .await?;
    Ok(row.get(0))
}

/// The cursor of the newest committed event, or [`Cursor::START`] when there is none.
pub(crate) async fn head(client: &impl GenericClient) -> Result<Cursor, tokio_postgres::Error> {
    let sql =
        "SELECT c.position, (SELECT max(e.seq) FROM kavach_stream_events e WHERE e.xid = c.xid) \
         FROM kavach_stream_commits c ORDER BY c.position DESC LIMIT 1";
    let row = client.query_opt(sql, &[]).await?;
    Ok(row.map_or(Cursor::START, |row| {
        Cursor::new(row.get(0), row.get::<_, Option<i64>>(1).unwrap_or(0))
    }))
}

/// Where a stored event sits, by its id; `None` when no committed event has that id.
pub(crate) async fn cursor_of(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<Cursor>, tokio_postgres::Error> {
    let sql = "SELECT c.position, e.seq FROM kavach_stream_events e \
         JOIN kavach_stream_commits c ON c.xid = e.xid WHERE e.id = $1";
    let row = client.query_opt(sql, &[&id]).await?;
    Ok(row.map(|row| Cursor::new(row.get(0), row.get(1))))
}

/// The last position retention has pruned (0 when nothing was).
pub(crate) async fn pruned_through(
    client: &impl GenericClient,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT pruned_through FROM kavach_stream_state", &[])
        .await?;
    Ok(row.get(0))
}

/// A row the writer stored: its sequence and its transaction, whose position is known after commit.
pub(crate) struct InsertedRow {
    pub seq: i64,
    pub xid: String,
}

/// The statement [`insert_events`] runs; the writer prepares it once per pooled connection.
pub(crate) const INSERT_EVENTS: &str = INSERT_BATCH;

/// Inserts events in one statement (`statement` is [`INSERT_EVENTS`], prepared or as text), inside
/// whatever transaction `client` is in.
pub(crate) async fn insert_events<S>(
    client: &impl GenericClient,
    statement: &S,
    events: &[&NewEvent],
) -> Result<Vec<InsertedRow>, tokio_postgres::Error>
where
    S: ToStatement + ?Sized + Sync + Send,
{
    let ids: Vec<Uuid> = events.iter().map(|event| event.id).collect();
    let types: Vec<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    let timestamps: Vec<DateTime<Utc>> = events.iter().map(|event| event.timestamp).collect();
    let data: Vec<&serde_json::Value> = events.iter().map(|event| &event.data).collect();
    let agents: Vec<Option<&str>> = events
        .iter()
        .map(|event| event.agent_id.as_deref())
        .collect();
    let users: Vec<Option<&str>> = events
        .iter()
        .map(|event| event.user_id.as_deref())
        .collect();

    let rows = client
        .query(
            statement,
            &[&ids, &types, &timestamps, &data, &agents, &users],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| InsertedRow {
            seq: row.get(0),
            xid: row.get(1),
        })
        .collect())
}

/// The position a committed transaction received, by its id as text.
pub(crate) async fn position_of_transaction(
    client: &impl GenericClient,
    xid: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let sql = "SELECT position FROM kavach_stream_commits WHERE xid = $1::text::xid8";
    let row = client.query_opt(sql, &[&xid]).await?;
    Ok(row.map(|row| row.get(0)))
}

fn event_from_row(row: &Row) -> Result<StoredEvent, tokio_postgres::Error> {
    let type_name: String = row.try_get(3)?;
    Ok(StoredEvent {
        cursor: Cursor::new(row.try_get(0)?, row.try_get(1)?),
        id: row.try_get(2)?,
        // The CHECK constraint admits only valid names; parse again rather than trust blindly.
        event_type: type_name
            .parse()
            .unwrap_or_else(|_| EventType::unchecked("invalid")),
        timestamp: row.try_get(4)?,
        data: row.try_get(5)?,
        agent_id: row.try_get(6)?,
        user_id: row.try_get(7)?,
    })
}

/// Whether an `agent.revoked` event names this subscriber.
pub(crate) async fn is_revoked(
    client: &impl GenericClient,
    subscriber: &str,
) -> Result<bool, tokio_postgres::Error> {
    let sql = "SELECT EXISTS (SELECT 1 FROM kavach_stream_events WHERE type = 'agent.revoked' AND agent_id = $1)";
    let row = client.query_one(sql, &[&subscriber]).await?;
    Ok(row.get(0))
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Transactions (positions) removed.
    pub transactions: i64,
    /// Events removed.
    pub events: i64,
    /// The last position pruned so far.
    pub through: i64,
}

/// Removes up to `batch` of the oldest transactions committed before `cutoff`, with their events,
/// and records how far pruning got. One instance prunes at a time; the others find the lock taken
/// and skip. Deleting old rows never blocks writers, which only insert.
pub(crate) async fn prune(
    client: &mut tokio_postgres::Client,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<Pruned, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let locked: bool = transaction
        .query_one("SELECT pg_try_advisory_xact_lock(1801549412)", &[])
        .await?
        .get(0);
    if !locked {
        return Ok(Pruned::default());
    }

    let sql = "WITH doomed AS ( \
             SELECT position, xid FROM kavach_stream_commits \
             WHERE committed_at < $1 ORDER BY position LIMIT $2 \
         ), events_gone AS ( \
             DELETE FROM kavach_stream_events e USING doomed d WHERE e.xid = d.xid RETURNING 1 \
         ), commits_gone AS ( \
             DELETE FROM kavach_stream_commits c USING doomed d WHERE c.position = d.position RETURNING c.position \
         ) \
         UPDATE kavach_stream_state \
         SET pruned_through = greatest(pruned_through, (SELECT coalesce(max(position), 0) FROM commits_gone)) \
         RETURNING (SELECT count(*) FROM commits_gone), (SELECT count(*) FROM events_gone), pruned_through";
    let row = transaction.query_one(sql, &[&cutoff, &batch]).await?;
    transaction.commit().await?;
    Ok(Pruned {
        transactions: row.get(0),
        events: row.get(1),
        through: row.get(2),
    })
}
