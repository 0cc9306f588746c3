//! The errors the library's public calls return. HTTP-facing errors (what a client is told) live
//! in `request`; these are for the Rust caller.

use crate::event::InvalidEvent;

/// Why `emit` refused an event. `emit` never blocks: a refusal is immediate and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The event itself is malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    /// The write queue is full: the database is slower than the emit rate, or down.
    #[error("the emit queue is full; the event was not accepted")]
    QueueFull,
    /// The stream was closed.
    #[error("the event stream is closed")]
    Closed,
}

/// Why `publish` could not confirm an event as stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The event itself is malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    /// The stream was closed before the event was written.
    #[error("the event stream is closed")]
    Closed,
    /// The database refused the event (a constraint it breaks); retrying will not help.
    #[error("the database refused the event: {0}")]
    Rejected(String),
    /// Writing kept failing; the writer gave up after its retries. The event may be stored if the
    /// last failure hid a successful commit: publish it again with the same id to find out.
    #[error("storing the event failed after retries: {0}")]
    Failed(String),
}

/// A failed read or write against the database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database answered with an error, or the connection broke.
    #[error("database error: {}", describe_postgres(.0))]
    Database(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("no database connection available: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The event itself is malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// What PostgreSQL said, not just "db error": the server's message, or the I/O cause.
pub(crate) fn describe_postgres(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        };
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

fn describe_pool(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(error) => describe_postgres(error),
        other => other.to_string(),
    }
}
