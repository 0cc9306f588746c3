//! [`EventStream`], the handle a deployment holds: it starts the listener and the writer, takes
//! events (`emit`, `publish`, `emit_in`), answers reads (`replay`, `history`), and serves SSE
//! requests (`handle_request`, `router`).
//!
//! The handle is cheap to clone; every clone drives the same instance.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use http::{header, HeaderValue, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{GenericClient, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{ConfigError, StreamConfig};
use crate::connection::{Connection, ConnectionSlot, Encoding, Identity};
use crate::error::{EmitError, Error, PublishError};
use crate::event::{Cursor, EventType, NewEvent, StoredEvent};
use crate::hub::Hub;
use crate::listener::Listener;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::registry::{ConnectionInfo, Registry};
use crate::request::{self, StreamParams};
use crate::retention::Pruner;
use crate::store::{self, Direction, EventFilter, Pruned};
use crate::writer::{Job, Writer};

/// Most events `replay` returns, as in the reference module.
pub const REPLAY_LIMIT: i64 = 1000;

/// Seconds a client refused by the connection limit is told to wait.
const RETRY_AFTER_SECONDS: &str = "5";

/// A running event stream: one listener, one writer, and the SSE connections of this instance.
#[derive(Clone)]
pub struct EventStream {
    shared: Arc<Shared>,
}

/// What the stream's tasks and connections share.
pub(crate) struct Shared {
    pub config: StreamConfig,
    pub pool: Pool,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<AtomicUsize>,
    pub registry: Arc<Registry>,
    pub shutdown: CancellationToken,
    jobs: mpsc::Sender<Job>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Which page of history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Oldest first after the cursor, or newest first before it.
    pub direction: Direction,
    /// Where the previous page ended; `None` starts at the oldest (forward) or newest (backward).
    pub cursor: Option<Cursor>,
    /// Most events on the page.
    pub limit: usize,
}

/// One page of history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The events, in the page's direction.
    pub events: Vec<StoredEvent>,
    /// Pass this as the next request's cursor; `None` when this page is the last.
    pub next: Option<Cursor>,
}

impl EventStream {
    /// Connects to the database described by `pg_config` with a pool of its own, applies
    /// migrations, and starts the stream.
    pub async fn connect(
        pg_config: tokio_postgres::Config,
        config: StreamConfig,
    ) -> Result<Self, Error> {
        let pool = build_pool(pg_config.clone(), 16)?;
        Self::start(pool, pg_config, config).await
    }

    /// Starts the stream on an existing pool. `listener_config` opens the dedicated LISTEN
    /// connection (pooled connections cannot receive notifications). Applies pending migrations.
    pub async fn start(
        pool: Pool,
        mut listener_config: tokio_postgres::Config,
        config: StreamConfig,
    ) -> Result<Self, Error> {
        config.check()?;
        // Named, so an operator can find it in pg_stat_activity.
        if listener_config.get_application_name().is_none() {
            listener_config.application_name("kavach-stream-listener");
        }
        let mut client = pool.get().await?;
        if config.run_migrations {
            crate::migrate::migrate(&mut client).await?;
        }
        let head = store::head(&**client).await?;
        drop(client);

        let hub = Arc::new(Hub::new(config.hub_capacity, head));
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let (jobs, job_queue) = mpsc::channel(config.emit_queue_capacity);

        let registry = Arc::new(Registry::default());
        let listener = Listener {
            pg_config: listener_config,
            hub: hub.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            read_batch_size: config.read_batch_size as i64,
            safety_poll_interval: config.safety_poll_interval,
            shutdown: shutdown.clone(),
        };
        let writer = Writer {
            pool: pool.clone(),
            metrics: metrics.clone(),
            batch_size: config.write_batch_size,
            shutdown: shutdown.clone(),
        };
        let mut tasks = vec![
            tokio::spawn(listener.run(head)),
            tokio::spawn(writer.run(job_queue)),
        ];
        if let Some(retention) = config.retention {
            let pruner = Pruner {
                pool: pool.clone(),
                retention,
                interval: config.prune_interval,
                shutdown: shutdown.clone(),
            };
            tasks.push(tokio::spawn(pruner.run()));
        }
        info!(position = head.position, path = %config.path, require_auth = config.require_auth, "event stream started");

        let connections = Arc::new(AtomicUsize::new(0));
        let tasks = Mutex::new(tasks);
        let shared = Shared {
            config,
            pool,
            hub,
            metrics,
            connections,
            registry,
            shutdown,
            jobs,
            tasks,
        };
        Ok(EventStream {
            shared: Arc::new(shared),
        })
    }

    /// Queues an event for storage and returns at once. It is delivered to clients once stored.
    /// Refused (and counted) when the event is malformed, the queue is full, or the stream closed.
    pub fn emit(&self, event: NewEvent) -> Result<(), EmitError> {
        let refused = |error| {
            self.shared.metrics.events_refused.fetch_add(1, Relaxed);
            error
        };
        event
            .validate()
            .map_err(|invalid| refused(EmitError::Invalid(invalid)))?;

        self.shared
            .jobs
            .try_send(Job { event, reply: None })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => refused(EmitError::QueueFull),
                mpsc::error::TrySendError::Closed(_) => refused(EmitError::Closed),
            })?;
        self.shared.metrics.events_queued.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Stores an event and returns its cursor once committed. Batched with other writes; waits for
    /// room in the queue instead of refusing.
    pub async fn publish(&self, event: NewEvent) -> Result<Cursor, PublishError> {
        event.validate()?;
        let (reply, stored) = oneshot::channel();

        self.shared
            .jobs
            .send(Job {
                event,
                reply: Some(reply),
            })
            .await
            .map_err(|_| PublishError::Closed)?;
        self.shared.metrics.events_queued.fetch_add(1, Relaxed);
        stored.await.map_err(|_| PublishError::Closed)?
    }

    /// Inserts an event inside the caller's transaction: it is stored and delivered if and only
    /// if that transaction commits.
    pub async fn emit_in(
        &self,
        transaction: &impl GenericClient,
        event: &NewEvent,
    ) -> Result<(), Error> {
        emit_in(transaction, event).await
    }

    /// Up to 1000 stored events at or after `since`, newest first, of the given types (default:
    /// all), never beyond the allow-list.
    pub async fn replay(
        &self,
        since: DateTime<Utc>,
        types: Option<&[EventType]>,
    ) -> Result<Vec<StoredEvent>, Error> {
        let filter = EventFilter {
            types: types.map(<[EventType]>::to_vec),
            from: Some(since),
            ..EventFilter::default()
        };
        let page = PageRequest {
            direction: Direction::Backward,
            cursor: None,
            limit: REPLAY_LIMIT as usize,
        };
        Ok(self.history(filter, page).await?.events)
    }

    /// One page of stored events matching `filter` (narrowed to the allow-list), in any window and
    /// any number of pages.
    pub async fn history(
        &self,
        mut filter: EventFilter,
        page: PageRequest,
    ) -> Result<HistoryPage, Error> {
        filter.types = self.allowed_types(filter.types);
        let cursor = page.cursor.unwrap_or(match page.direction {
            Direction::Forward => Cursor::START,
            Direction::Backward => Cursor::new(i64::MAX, i64::MAX),
        });
        let limit = page.limit.max(1) as i64;

        let client = self.shared.pool.get().await?;
        let events = store::read_page(&**client, cursor, page.direction, &filter, limit).await?;
        let next = (events.len() as i64 == limit)
            .then(|| events.last().map(|event| event.cursor))
            .flatten();
        Ok(HistoryPage { events, next })
    }

    /// How many stored events match `filter` (narrowed to the allow-list).
    pub async fn count(&self, mut filter: EventFilter) -> Result<i64, Error> {
        filter.types = self.allowed_types(filter.types);
        let client = self.shared.pool.get().await?;
        Ok(store::count(&**client, &filter).await?)
    }

    /// The requested types narrowed to the allow-list; an empty list matches nothing.
    fn allowed_types(&self, requested: Option<Vec<EventType>>) -> Option<Vec<EventType>> {
        let allowed: Option<&BTreeSet<EventType>> = self.shared.config.event_types.as_ref();
        match (requested, allowed) {
            (None, None) => None,
            (None, Some(allowed)) => Some(allowed.iter().cloned().collect()),
            (Some(requested), allowed) => Some(
                requested
                    .into_iter()
                    .filter(|event_type| allowed.is_none_or(|allowed| allowed.contains(event_type)))
                    .collect(),
            ),
        }
    }

    /// Prunes now what the retention period says is expired, instead of waiting for the timer.
    pub async fn prune_expired(&self) -> Result<Pruned, Error> {
        let retention = self.shared.config.retention.unwrap_or(Duration::MAX);
        crate::retention::prune_expired(&self.shared.pool, retention).await
    }

    /// Open SSE connections of this instance, counting those still authenticating.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Relaxed)
    }

    /// The counters of this instance.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The cursor of the newest event this instance has published to its connections.
    pub fn head(&self) -> Cursor {
        self.shared.hub.head()
    }

    /// The pool the stream reads and writes with.
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// The configuration the stream runs with.
    pub fn config(&self) -> &StreamConfig {
        &self.shared.config
    }

    /// Ends every connection, refuses new requests and emits, stores what `emit` had queued, and
    /// stops the listener. Returns when all of that is done.
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        let tasks =
            std::mem::take(&mut *self.shared.tasks.lock().expect("never held across a panic"));
        for task in tasks {
            // A task that panicked has nothing left to flush.
            let _ = task.await;
        }
        info!("event stream closed");
    }

    /// Whether [`EventStream::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Answers an SSE request for the stream path, or returns `None` for any other request (not
    /// GET, another path, or an `Accept` without `text/event-stream`), so it can sit in a
    /// catch-all handler.
    pub fn handle_request<B>(&self, request: &http::Request<B>) -> Option<Response> {
        if !request::is_stream_request(request, &self.shared.config.path) {
            return None;
        }
        let params = request::parse_params(request, self.shared.config.event_types.as_ref());
        Some(self.open_stream(params, Encoding::Json, Identity::Token))
    }

    /// An axum router serving the stream at its path.
    pub fn router(&self) -> Router {
        Router::new()
            .route(&self.shared.config.path, get(serve_stream))
            .with_state(self.clone())
    }

    /// Opens a connection for an already authenticated admin (a dashboard session), who sees
    /// every allowed event in `encoding`.
    pub(crate) fn open_admin_stream<B>(
        &self,
        request: &http::Request<B>,
        admin: String,
        encoding: Encoding,
    ) -> Response {
        let params = request::parse_params(request, self.shared.config.event_types.as_ref());
        self.open_stream(params, encoding, Identity::Admin(admin))
    }

    /// The open connections of this instance, oldest first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.registry.snapshot()
    }

    /// Opens a connection with already-parsed parameters, or answers why not.
    fn open_stream(
        &self,
        params: Result<StreamParams, request::RequestError>,
        encoding: Encoding,
        identity: Identity,
    ) -> Response {
        if self.is_closed() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "Stream is closed");
        }
        let Some(slot) =
            ConnectionSlot::acquire(&self.shared.connections, self.shared.config.max_connections)
        else {
            self.shared
                .metrics
                .connections_refused
                .fetch_add(1, Relaxed);
            let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, "Too many connections");
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
            return response;
        };
        let params = match params {
            Ok(params) => params,
            Err(error) => return plain(StatusCode::BAD_REQUEST, &error.to_string()),
        };
        self.shared.metrics.connections_opened.fetch_add(1, Relaxed);

        let connection = Connection::new(self.shared.clone(), slot, params, encoding, identity);
        let chunks = futures_util::stream::unfold(connection, |mut connection| async move {
            let chunk = connection.next_chunk().await?;
            Some((Ok::<_, Infallible>(chunk), connection))
        });
        let mut response = Response::new(Body::from_stream(chunks));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

/// Inserts an event inside the caller's transaction (any `tokio_postgres` client or transaction;
/// a `deadpool_postgres` one dereferences to it): it is stored and delivered if and only if that
/// transaction commits.
pub async fn emit_in(client: &impl GenericClient, event: &NewEvent) -> Result<(), Error> {
    event.validate()?;
    store::insert_events(client, store::INSERT_EVENTS, &[event]).await?;
    Ok(())
}

/// Stores one event in its own transaction and returns its cursor once committed, without a
/// running stream (the CLI's `emit`).
pub async fn store_event(
    client: &mut tokio_postgres::Client,
    event: &NewEvent,
) -> Result<Cursor, Error> {
    let transaction = client.transaction().await?;
    emit_in(&transaction, event).await?;
    transaction.commit().await?;

    let cursor = store::cursor_of(&*client, event.id).await?;
    Ok(cursor.expect("a committed event has a position"))
}

/// A pool for `pg_config` with `size` connections and bounded waits.
pub fn build_pool(pg_config: tokio_postgres::Config, size: usize) -> Result<Pool, Error> {
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = Manager::from_config(pg_config, NoTls, manager_config);
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|error| {
            Error::Config(ConfigError::new(format!(
                "cannot build the connection pool: {error}"
            )))
        })
}

async fn serve_stream(State(stream): State<EventStream>, request: Request) -> Response {
    stream.handle_request(&request).unwrap_or_else(|| {
        plain(
            StatusCode::NOT_ACCEPTABLE,
            "This endpoint serves text/event-stream: send Accept: text/event-stream",
        )
    })
}

/// A plain-text response.
pub(crate) fn plain(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.to_owned(),
    )
        .into_response()
}
