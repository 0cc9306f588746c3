//! Who is connected: one entry per open SSE connection (subscriber, filters, since when, how far
//! it has read), for the dashboard's operations panel and `/metrics`.
//!
//! Connections register once authenticated and are removed when dropped; the position is one
//! relaxed atomic store per chunk, so the hot path pays next to nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// A snapshot of one open connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionInfo {
    /// A number unique within this instance.
    pub id: u64,
    /// The authenticated subscriber, if auth is on.
    pub subscriber: Option<String>,
    /// The types it receives; `None` means all.
    pub types: Option<Vec<String>>,
    /// When it connected.
    pub connected_at: DateTime<Utc>,
    /// The position of the last event it was sent or skipped.
    pub position: i64,
    /// Whether it is a dashboard connection (HTML rows) rather than the JSON stream.
    pub dashboard: bool,
}

/// The open connections of one instance.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    next_id: AtomicU64,
    entries: Mutex<BTreeMap<u64, Arc<Entry>>>,
}

#[derive(Debug)]
pub(crate) struct Entry {
    info: ConnectionInfo,
    position: AtomicI64,
    /// Cancelled when the subscriber is revoked.
    pub revoked: CancellationToken,
}

impl Entry {
    /// The subscriber of the connection.
    pub fn subscriber(&self) -> Option<&str> {
        self.info.subscriber.as_deref()
    }

    /// Records how far the connection has read.
    pub fn set_position(&self, position: i64) {
        self.position.store(position, Relaxed);
    }
}

/// A connection's place in the registry, removed on drop.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    pub entry: Arc<Entry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .entries
            .lock()
            .expect("never held across a panic")
            .remove(&self.entry.info.id);
    }
}

impl Registry {
    /// Adds a connection.
    pub fn register(
        self: &Arc<Self>,
        subscriber: Option<String>,
        types: Option<Vec<String>>,
        dashboard: bool,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let info = ConnectionInfo {
            id,
            subscriber,
            types,
            connected_at: Utc::now(),
            position: 0,
            dashboard,
        };
        let entry = Arc::new(Entry {
            info,
            position: AtomicI64::new(0),
            revoked: CancellationToken::new(),
        });
        self.entries
            .lock()
            .expect("never held across a panic")
            .insert(id, entry.clone());
        Registration {
            registry: self.clone(),
            entry,
        }
    }

    /// Ends the connections of a revoked subscriber.
    pub fn revoke(&self, subscriber: &str) -> usize {
        let entries = self.entries.lock().expect("never held across a panic");
        let revoked: Vec<&Arc<Entry>> = entries
            .values()
            .filter(|entry| entry.info.subscriber.as_deref() == Some(subscriber))
            .collect();
        revoked.iter().for_each(|entry| entry.revoked.cancel());
        revoked.len()
    }

    /// Every open connection, oldest first.
    pub fn snapshot(&self) -> Vec<ConnectionInfo> {
        let entries = self.entries.lock().expect("never held across a panic");
        entries
            .values()
            .map(|entry| ConnectionInfo {
                position: entry.position.load(Relaxed),
                ..entry.info.clone()
            })
            .collect()
    }
}
