//! kavach-stream: a live, durable feed of KavachOS security events over Server-Sent Events.
//!
//! Events are rows in the PostgreSQL table `kavach_stream_events`. A trigger gives each writing
//! transaction a position at commit time and rings a NOTIFY doorbell; every instance LISTENs on a
//! connection of its own, reads the new rows by position and fans them out to its SSE clients.
//! Any client can emit with a plain SQL `INSERT`; Rust code uses [`EventStream::emit`],
//! [`EventStream::publish`] or [`emit_in`].
//!
//! ```no_run
//! use kavach_stream::{EventStream, NewEvent, StreamConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pg_config: tokio_postgres::Config = "host=localhost user=postgres dbname=app".parse()?;
//! let config = StreamConfig::default().validate_token(|token: String| async move {
//!     Ok::<_, std::io::Error>((token == "secret").then(|| "user-1".to_owned()))
//! });
//! let stream = EventStream::connect(pg_config, config).await?;
//!
//! let app = axum::Router::new().merge(stream.router());
//! stream.emit(NewEvent::new("agent.created")?.with_agent_id("agent-7"))?;
//! # let _ = app; Ok(()) }
//! ```
//!
//! Layout: `event` (types, cursors), `config`, `store` (all SQL), `migrate`, `writer` (emit and
//! publish), `listener` (LISTEN and read), `hub` (the shared window of recent frames), `wire`
//! (SSE encoding), `request` (parsing a client's request), `connection` (one client's stream),
//! `stream` (the [`EventStream`] handle), `embedded` (a temporary PostgreSQL), `client` (an SSE
//! client for the CLI, tests and benchmarks).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cli;
pub mod client;
mod config;
mod connection;
pub mod dashboard;
mod demo;
mod direct;
pub mod embedded;
mod error;
mod event;
mod hub;
pub mod jwt;
mod listener;
mod metrics;
mod migrate;
pub mod ops;
mod registry;
mod request;
mod retention;
mod server;
mod store;
mod stream;
mod tail;
pub mod telemetry;
pub mod transport;
pub mod wire;
mod writer;

pub use config::{
    ConfigError, Scope, Session, SessionFuture, StreamConfig, TokenValidator, ValidationFuture,
    ValidatorError,
};
pub use connection::Encoding;
pub use error::{EmitError, Error, PublishError};
pub use event::{
    format_timestamp, Cursor, EventType, InvalidCursor, InvalidEvent, NewEvent, StoredEvent,
    KNOWN_TYPES,
};
pub use listener::CHANNEL;
pub use metrics::MetricsSnapshot;
pub use migrate::{migrate, migrations, Migration};
pub use registry::ConnectionInfo;
pub use request::{is_stream_request, parse_params, LastEventId, RequestError, StreamParams};
pub use store::{Direction, EventFilter, Pruned};
pub use stream::{
    build_pool, emit_in, store_event, EventStream, HistoryPage, PageRequest, REPLAY_LIMIT,
};
