//! The verdict of a phase: the committed events as the table has them, and each client's
//! differences from them (lost, duplicated, reordered, unexpected), counted into a [`Report`].

use std::collections::{BTreeSet, HashMap, HashSet};

use kavach_stream::Cursor;

use crate::clients::ClientLog;
use crate::writers::WriterOutcome;
use crate::{connect, Fault};

/// What one phase counted.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) fault: Option<Fault>,
    /// Committed events in the table.
    pub(crate) written: usize,
    /// Events whose transaction was rolled back.
    pub(crate) rolled_back: usize,
    /// Events whose commit broke off unacknowledged (stored or not; the table says which).
    pub(crate) uncertain: usize,
    /// Event frames the clients received, summed.
    pub(crate) delivered: usize,
    /// Expected events a client never received.
    pub(crate) lost: usize,
    /// Events a client received more than once.
    pub(crate) duplicated: usize,
    /// Events a client received after one with a later cursor.
    pub(crate) reordered: usize,
    /// Events a client received that are not committed or do not match its filter.
    pub(crate) unexpected: usize,
    /// Acknowledged events missing from the table, and rolled-back events present in it.
    pub(crate) writer_mismatches: usize,
    /// `gap` frames the clients received (a full history exists, so none is due).
    pub(crate) gaps: usize,
    /// Connections the clients opened after their first.
    pub(crate) reconnects: usize,
    /// How many times the fault struck.
    pub(crate) faults: usize,
}

impl Report {
    pub(crate) fn header() -> String {
        format!(
            "{:<20} {:>8} {:>7} {:>9} {:>9} {:>5} {:>10} {:>9} {:>10} {:>5} {:>10} {:>6}",
            "fault",
            "written",
            "rolled",
            "uncertain",
            "delivered",
            "lost",
            "duplicated",
            "reordered",
            "unexpected",
            "gaps",
            "reconnects",
            "struck"
        )
    }

    pub(crate) fn row(&self) -> String {
        format!(
            "{:<20} {:>8} {:>7} {:>9} {:>9} {:>5} {:>10} {:>9} {:>10} {:>5} {:>10} {:>6}",
            self.name(),
            self.written,
            self.rolled_back,
            self.uncertain,
            self.delivered,
            self.lost,
            self.duplicated,
            self.reordered,
            self.unexpected + self.writer_mismatches,
            self.gaps,
            self.reconnects,
            self.faults
        )
    }

    pub(crate) fn name(&self) -> &'static str {
        self.fault.map_or("?", Fault::name)
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.unexpected == 0
            && self.writer_mismatches == 0
            && self.gaps == 0
    }
}

/// A committed event, as the table has it.
pub(crate) struct Committed {
    pub(crate) cursor: Cursor,
    pub(crate) id: String,
    pub(crate) event_type: String,
}

/// The table after the writers stopped.
pub(crate) struct Truth {
    /// Committed events in commit order.
    pub(crate) events: Vec<Committed>,
    /// Rows of `kavach_stream_events`, with or without a position.
    pub(crate) rows: usize,
}

impl Truth {
    pub(crate) fn matching(&self, filter: Option<&str>) -> Vec<&Committed> {
        let types: Option<BTreeSet<&str>> = filter.map(|types| types.split(',').collect());
        self.events
            .iter()
            .filter(|event| {
                types
                    .as_ref()
                    .is_none_or(|types| types.contains(event.event_type.as_str()))
            })
            .collect()
    }
}

pub(crate) async fn committed_events(pg_config: &tokio_postgres::Config) -> Truth {
    let client = connect(pg_config).await.expect("connect to read the truth");
    let events = client
        .query(
            "SELECT c.position, e.seq, e.id::text, e.type \
             FROM kavach_stream_commits c JOIN kavach_stream_events e ON e.xid = c.xid \
             ORDER BY c.position, e.seq",
            &[],
        )
        .await
        .expect("read the committed events")
        .iter()
        .map(|row| Committed {
            cursor: Cursor::new(row.get(0), row.get(1)),
            id: row.get(2),
            event_type: row.get(3),
        })
        .collect();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM kavach_stream_events", &[])
        .await
        .expect("count the rows")
        .get(0);
    Truth {
        events,
        rows: rows as usize,
    }
}

/// Acknowledged events missing from the table, rolled-back events in it, and rows without a
/// position.
pub(crate) fn writer_mismatches(truth: &Truth, outcome: &WriterOutcome) -> usize {
    let stored: HashSet<String> = truth.events.iter().map(|e| e.id.clone()).collect();
    let missing = outcome
        .acknowledged
        .iter()
        .filter(|id| !stored.contains(&id.to_string()))
        .count();
    let resurrected = outcome
        .rolled_back
        .iter()
        .filter(|id| stored.contains(&id.to_string()))
        .count();
    missing + resurrected + truth.rows.abs_diff(truth.events.len())
}

/// Adds one client's differences from what it should have received to `report`.
pub(crate) fn compare(
    expected: &[&Committed],
    log: &ClientLog,
    truth: &Truth,
    report: &mut Report,
) {
    let expected_ids: HashSet<&str> = expected.iter().map(|e| e.id.as_str()).collect();
    let cursors: HashMap<&str, Cursor> = truth
        .events
        .iter()
        .map(|e| (e.id.as_str(), e.cursor))
        .collect();

    let mut seen = HashSet::new();
    let mut highest = None;
    for (cursor, id) in &log.received {
        if !seen.insert(id.as_str()) {
            report.duplicated += 1;
            continue;
        }
        let committed_here = cursors.get(id.as_str()) == Some(cursor);
        if !expected_ids.contains(id.as_str()) || !committed_here {
            report.unexpected += 1;
        }
        if highest.is_some_and(|highest| *cursor < highest) {
            report.reordered += 1;
        } else {
            highest = Some(*cursor);
        }
    }
    report.delivered += log.received.len();
    report.lost += expected_ids.difference(&seen).count();
    report.gaps += log.gaps;
    report.reconnects += log.connections.saturating_sub(1);
}
