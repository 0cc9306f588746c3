//! Counters the stream keeps about itself, read by `/metrics`, `/healthz` and the dashboard.
//!
//! Plain atomics: every hot path only adds, and a reader takes a [`MetricsSnapshot`].

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// Live counters of one stream instance.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) events_queued: AtomicU64,
    pub(crate) events_refused: AtomicU64,
    pub(crate) events_stored: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) write_retries: AtomicU64,
    pub(crate) batches_written: AtomicU64,
    pub(crate) batch_write_micros: AtomicU64,
    pub(crate) events_delivered: AtomicU64,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) lagging_connections: AtomicI64,
    pub(crate) listener: ListenerHealth,
}

/// What the listener last reported.
#[derive(Debug, Default)]
pub(crate) struct ListenerHealth {
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    pub last_position: AtomicI64,
    /// When the listener lost its connection; `None` while connected.
    pub down_since: Mutex<Option<Instant>>,
}

impl ListenerHealth {
    pub fn set_connected(&self) {
        self.connected.store(true, Relaxed);
        *self.down_since.lock().expect("never held across a panic") = None;
    }

    pub fn set_disconnected(&self) {
        self.connected.store(false, Relaxed);
        self.down_since
            .lock()
            .expect("never held across a panic")
            .get_or_insert_with(Instant::now);
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Events accepted by `emit` or `publish` into the write queue.
    pub events_queued: u64,
    /// Events `emit` refused because the queue was full or the stream closed.
    pub events_refused: u64,
    /// Events the background writer committed.
    pub events_stored: u64,
    /// Events the background writer gave up on (each one logged).
    pub events_dropped: u64,
    /// Batch writes retried after a failure.
    pub write_retries: u64,
    /// Batches the background writer committed.
    pub batches_written: u64,
    /// Total time spent writing batches, in microseconds.
    pub batch_write_micros: u64,
    /// Event frames written to connections.
    pub events_delivered: u64,
    /// Connections accepted since start.
    pub connections_opened: u64,
    /// Connections refused by the connection limit.
    pub connections_refused: u64,
    /// Connections currently reading from the table because they fell behind the hub.
    pub lagging_connections: i64,
    /// Whether the listener's connection is up.
    pub listener_connected: bool,
    /// Times the listener reconnected.
    pub listener_reconnects: u64,
    /// The last position the listener published.
    pub listener_last_position: i64,
    /// Seconds the listener has been disconnected, if it is.
    pub listener_down_seconds: Option<f64>,
}

impl Metrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let down_since = *self
            .listener
            .down_since
            .lock()
            .expect("never held across a panic");
        MetricsSnapshot {
            events_queued: self.events_queued.load(Relaxed),
            events_refused: self.events_refused.load(Relaxed),
            events_stored: self.events_stored.load(Relaxed),
            events_dropped: self.events_dropped.load(Relaxed),
            write_retries: self.write_retries.load(Relaxed),
            batches_written: self.batches_written.load(Relaxed),
            batch_write_micros: self.batch_write_micros.load(Relaxed),
            events_delivered: self.events_delivered.load(Relaxed),
            connections_opened: self.connections_opened.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            lagging_connections: self.lagging_connections.load(Relaxed),
            listener_connected: self.listener.connected.load(Relaxed),
            listener_reconnects: self.listener.reconnects.load(Relaxed),
            listener_last_position: self.listener.last_position.load(Relaxed),
            listener_down_seconds: down_since.map(|since| since.elapsed().as_secs_f64()),
        }
    }
}
