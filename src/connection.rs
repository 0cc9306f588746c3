//! One SSE connection, from authentication to its last frame, as a stream of byte chunks that the
//! HTTP server writes as they come.
//!
//! The connection subscribes to the hub *before* it replays from the table, replays everything
//! after its cursor that matches its filters, then reads the hub and drops what it already sent by
//! position: no gap, no duplicate. If it falls out of the hub's window it reads the table again
//! from its own cursor. The HTTP server only polls for the next chunk when the socket can take it,
//! so a slow reader holds at most one chunk and two table pages (the one being written and the
//! next, read ahead) in memory.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, warn};

use crate::config::Session;
use crate::event::{Cursor, StoredEvent};
use crate::hub::Frame;
use crate::registry::Registration;
use crate::request::{LastEventId, StreamParams};
use crate::store::{self, Direction, EventFilter};
use crate::stream::Shared;
use crate::wire::{self, ControlEvent, ErrorData};
use chrono::{DateTime, Utc};

/// Most frames gathered into one chunk written to the socket.
const FRAMES_PER_CHUNK: usize = 256;

/// How a connection's events are encoded.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    /// The JSON wire format of the public stream.
    Json,
    /// Server-rendered HTML rows for the dashboard, rendered once per event by this function.
    Html(fn(&StoredEvent) -> Bytes),
}

impl Encoding {
    fn frame(self, frame: &Frame) -> Bytes {
        match self {
            Encoding::Json => frame.sse.clone(),
            Encoding::Html(render) => frame.html(render),
        }
    }

    fn event(self, event: &StoredEvent) -> Bytes {
        match self {
            Encoding::Json => wire::event_frame(event),
            Encoding::Html(render) => render(event),
        }
    }
}

/// A place under the connection limit, held for the connection's whole life (authentication
/// included) and given back on drop.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    /// Takes a place if fewer than `max` are taken; atomic, so a burst cannot overshoot.
    pub fn acquire(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Relaxed, Relaxed, |taken| (taken < max).then_some(taken + 1))
            .ok()
            .map(|_| ConnectionSlot(count.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

enum Phase {
    /// Authenticate and choose where to start.
    Open,
    /// Read the table after `last_seen` until it is exhausted.
    Replay,
    /// Read the hub.
    Live,
    /// Send what is pending, then end.
    Done,
}

/// The state of one connection.
pub struct Connection {
    shared: Arc<Shared>,
    _slot: ConnectionSlot,
    params: StreamParams,
    encoding: Encoding,
    phase: Phase,
    pending: VecDeque<Bytes>,
    filter: EventFilter,
    receiver: Option<broadcast::Receiver<Arc<Frame>>>,
    /// The newest event this connection has sent or deliberately skipped.
    last_seen: Cursor,
    replayed: u64,
    /// Whether a `live` frame is owed when the requested replay ends.
    announce_live: bool,
    lagging: bool,
    heartbeat: Interval,
    identity: Identity,
    registration: Option<Registration>,
    /// When the token stops being valid; the stream ends with an `error` frame then.
    expires_at: Option<DateTime<Utc>>,
    /// The next replay page, being read while the current one is written.
    prefetched: Option<PrefetchedPage>,
    /// Resolves on shutdown, revocation or expiry. Built once when the connection first goes
    /// live, not on every wake-up: building these futures per delivery took the shared shutdown
    /// token's mutex twice and registered with its waiter list every time (about 5 % of the
    /// server's CPU at 1,000 clients x 100 events/s).
    end_signal: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

/// Who a connection is before it opens.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    /// Authenticate with the request's bearer token.
    Token,
    /// Already authenticated as an admin (a dashboard session): sees every event.
    Admin(String),
}

impl Connection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        slot: ConnectionSlot,
        params: StreamParams,
        encoding: Encoding,
        identity: Identity,
    ) -> Self {
        let period = shared.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Connection {
            shared,
            _slot: slot,
            params,
            encoding,
            phase: Phase::Open,
            pending: VecDeque::new(),
            filter: EventFilter::default(),
            receiver: None,
            last_seen: Cursor::START,
            replayed: 0,
            announce_live: false,
            lagging: false,
            heartbeat,
            identity,
            registration: None,
            expires_at: None,
            end_signal: None,
            prefetched: None,
        }
    }

    /// The next chunk to write, or `None` when the stream ends.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if matches!(self.phase, Phase::Replay | Phase::Live) {
                // A replaying connection must notice `close()` too, not only a live one.
                if self.shared.shutdown.is_cancelled() {
                    self.phase = Phase::Done;
                    continue;
                }
                if let Some((code, message)) = self.revoked_or_expired() {
                    self.fail(code, message);
                    continue;
                }
            }
            match self.phase {
                Phase::Open => self.open().await,
                Phase::Replay => {
                    if let Some(chunk) = self.replay_page().await {
                        return Some(chunk);
                    }
                }
                Phase::Live => {
                    if let Some(chunk) = self.live().await {
                        return Some(chunk);
                    }
                }
                Phase::Done => return None,
            }
        }
    }

    /// Authenticates, then sends the `retry:` hint and the `connected` frame and picks the phase.
    async fn open(&mut self) {
        let (subscriber, restriction) = match &self.identity {
            Identity::Admin(admin) => (Some(admin.clone()), None),
            Identity::Token => match self.authenticate().await {
                Ok(session) => {
                    self.expires_at = session.as_ref().and_then(|session| session.expires_at);
                    let subscriber = session.map(|session| session.subscriber);
                    let scope = &self.shared.config.scope;
                    let restriction = scope.restriction_for(subscriber.as_deref());
                    (subscriber, restriction)
                }
                Err((code, message)) => return self.fail(code, message),
            },
        };

        self.filter = EventFilter {
            types: self
                .params
                .types
                .as_ref()
                .map(|types| types.iter().cloned().collect()),
            concerning: restriction,
            from: None,
            until: None,
        };

        // Subscribe before reading the table, so nothing committed from here on can be missed.
        let (receiver, head) = self.shared.hub.subscribe();
        self.receiver = Some(receiver);
        let gap = match self.choose_start(head).await {
            Ok(gap) => gap,
            Err(error) => {
                warn!(error = %error, "could not read the stream's start; closing the connection");
                return self.fail(
                    "STORE_UNAVAILABLE",
                    "Could not read stored events; reconnect to retry",
                );
            }
        };

        let types = self
            .filter
            .types
            .as_ref()
            .map(|types| types.iter().map(|t| t.as_str()).collect::<Vec<_>>());
        let connected = Connected {
            subscriber: subscriber.as_deref(),
            cursor: self.last_seen.to_string(),
            types,
        };
        let retry = Some(self.shared.config.retry_hint);
        self.pending.push_back(wire::control_frame(
            ControlEvent::Connected,
            &connected,
            retry,
        ));
        if let Some(gap) = gap {
            self.pending
                .push_back(wire::control_frame(ControlEvent::Gap, &gap, None));
        }
        debug!(subscriber = subscriber.as_deref().unwrap_or("-"), cursor = %self.last_seen, "connection opened");
        let types = self.filter.types.as_ref();
        let types = types.map(|types| types.iter().map(|t| t.to_string()).collect());
        let dashboard = matches!(self.encoding, Encoding::Html(_));
        let registration = self.shared.registry.register(subscriber, types, dashboard);
        registration.entry.set_position(self.last_seen.position);
        self.registration = Some(registration);
    }

    /// The session of the request's token, or the `error` frame's code and message.
    async fn authenticate(&mut self) -> Result<Option<Session>, (&'static str, &'static str)> {
        let config = &self.shared.config;
        if !config.require_auth {
            return Ok(None);
        }
        let Some(token) = self.params.token.take() else {
            return Err(("UNAUTHORIZED", "Bearer token required"));
        };
        let validator = config
            .validator
            .clone()
            .expect("config.check() demands a validator when auth is required");

        // On its own task, so a panicking validator ends this connection and nothing else.
        let validation = tokio::spawn(async move { validator.validate_session(token).await });
        let session = match tokio::time::timeout(config.validator_timeout, validation).await {
            Ok(Ok(Ok(Some(session)))) => session,
            Ok(Ok(Ok(None))) => return Err(("UNAUTHORIZED", "Invalid token")),
            Ok(Ok(Err(error))) => {
                warn!(error = %error, "token validator failed");
                return Err(("AUTH_ERROR", "Token validation failed"));
            }
            Ok(Err(join_error)) => {
                warn!(error = %join_error, "token validator panicked");
                return Err(("AUTH_ERROR", "Token validation failed"));
            }
            Err(_) => {
                let timeout_ms = config.validator_timeout.as_millis() as u64;
                warn!(timeout_ms, "token validator timed out");
                return Err(("AUTH_TIMEOUT", "Token validation timed out"));
            }
        };

        if session
            .expires_at
            .is_some_and(|expiry| expiry <= Utc::now())
        {
            return Err(("TOKEN_EXPIRED", "Token expired"));
        }
        if config.reject_revoked && self.is_revoked(&session.subscriber).await? {
            return Err(("UNAUTHORIZED", "Subscriber was revoked"));
        }
        Ok(Some(session))
    }

    async fn is_revoked(&self, subscriber: &str) -> Result<bool, (&'static str, &'static str)> {
        let unavailable = (
            "STORE_UNAVAILABLE",
            "Could not check revocations; reconnect to retry",
        );
        let client = self.shared.pool.get().await.map_err(|_| unavailable)?;
        store::is_revoked(&**client, subscriber)
            .await
            .map_err(|error| {
                warn!(error = %crate::error::describe_postgres(&error), "revocation check failed");
                unavailable
            })
    }

    /// Sets `last_seen` and the phase from `Last-Event-ID` (which wins) or `since`; returns the gap
    /// to report when the requested cursor cannot be honoured.
    async fn choose_start(&mut self, head: Cursor) -> Result<Option<Gap>, crate::Error> {
        self.last_seen = head;
        self.phase = Phase::Live;
        let Some(last_event_id) = self.params.last_event_id.clone() else {
            if let Some(since) = self.params.since {
                self.replay_from(Cursor::START, Some(since));
            }
            return Ok(None);
        };

        let client = self.shared.pool.get().await?;
        let (reason, requested) = match last_event_id {
            // Compared with the table, not the hub: another instance may have shown it already.
            LastEventId::Cursor(cursor) if cursor > store::head(&**client).await? => {
                ("unknown", cursor.to_string())
            }
            LastEventId::Cursor(cursor) => {
                let pruned_through = store::pruned_through(&**client).await?;
                // A cursor inside the last pruned transaction may have missed the rest of it.
                if pruned_through == 0 || cursor.position > pruned_through {
                    self.replay_from(cursor, None);
                    return Ok(None);
                }
                self.replay_from(Cursor::new(pruned_through, 0), None);
                let gap = Gap::new("pruned", cursor.to_string(), self.last_seen);
                return Ok(Some(gap));
            }
            LastEventId::EventId(id) => match store::cursor_of(&**client, id).await? {
                Some(cursor) => {
                    self.replay_from(cursor, None);
                    return Ok(None);
                }
                None => ("unknown", id.to_string()),
            },
            LastEventId::Time(time) => {
                self.replay_from(
                    Cursor::START,
                    Some(time + chrono::Duration::microseconds(1)),
                );
                return Ok(None);
            }
            LastEventId::Malformed(text) => ("malformed", text),
        };

        // Unknown or malformed: fall back to `since` when given, else start live.
        if let Some(since) = self.params.since {
            self.replay_from(Cursor::START, Some(since));
        }
        Ok(Some(Gap::new(reason, requested, self.last_seen)))
    }

    fn replay_from(&mut self, after: Cursor, from: Option<chrono::DateTime<chrono::Utc>>) {
        self.last_seen = after;
        self.filter.from = from;
        self.phase = Phase::Replay;
        self.announce_live = true;
    }

    /// One page of the table after `last_seen`; switches to live once the table is exhausted.
    /// While a full page is written, the next one is already being read.
    async fn replay_page(&mut self) -> Option<Bytes> {
        let limit = self.shared.config.read_batch_size as i64;
        let prefetched = self
            .prefetched
            .take()
            .filter(|page| page.after == self.last_seen);
        let read = match prefetched {
            Some(page) => page.join().await,
            None => None,
        };
        let read = match read {
            Some(read) => read,
            None => {
                read_page(
                    self.shared.pool.clone(),
                    self.last_seen,
                    self.filter.clone(),
                    limit,
                )
                .await
            }
        };
        let page = match read {
            Ok(page) => page,
            Err(error) => {
                warn!(error = %error, cursor = %self.last_seen, "replay read failed; closing the connection");
                self.fail(
                    "STORE_UNAVAILABLE",
                    "Could not read stored events; reconnect to resume",
                );
                return None;
            }
        };

        if let Some(last) = page.last() {
            self.last_seen = last.cursor;
            self.replayed += page.len() as u64;
        }
        if (page.len() as i64) < limit {
            self.enter_live();
        } else {
            self.prefetched = Some(PrefetchedPage::start(
                &self.shared,
                self.last_seen,
                &self.filter,
                limit,
            ));
        }
        if page.is_empty() {
            return None;
        }
        let mut chunk = BytesMut::new();
        for event in &page {
            chunk.extend_from_slice(&self.encoding.event(event));
        }
        self.shared
            .metrics
            .events_delivered
            .fetch_add(page.len() as u64, Relaxed);
        self.record_position();
        Some(chunk.freeze())
    }

    /// Leaves replay: the time bound applied only to stored events. The first replay, the one the
    /// client asked for, is announced with a `live` frame; catch-ups after lagging are not.
    fn enter_live(&mut self) {
        self.phase = Phase::Live;
        self.filter.from = None;
        if self.lagging {
            self.lagging = false;
            self.shared
                .metrics
                .lagging_connections
                .fetch_sub(1, Relaxed);
        }
        if std::mem::take(&mut self.announce_live) {
            let live = Live {
                cursor: self.last_seen.to_string(),
                replayed: self.replayed,
            };
            self.pending
                .push_back(wire::control_frame(ControlEvent::Live, &live, None));
        }
    }

    /// Waits for the next frames from the hub, a heartbeat, or shutdown.
    async fn live(&mut self) -> Option<Bytes> {
        let receiver = self
            .receiver
            .as_mut()
            .expect("a live connection has subscribed");
        let end_signal = self.end_signal.get_or_insert_with(|| {
            let shutdown = self.shared.shutdown.clone();
            let revoked = self
                .registration
                .as_ref()
                .map(|registration| registration.entry.revoked.clone());
            let expires_at = self.expires_at;
            Box::pin(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = until_cancelled(revoked) => {}
                    _ = until(expires_at) => {}
                }
            })
        });
        let received = tokio::select! {
            biased;
            // Shutdown ends the stream here; revocation and expiry are acted on by `next_chunk`.
            _ = end_signal.as_mut() => {
                self.end_signal = None;
                if self.shared.shutdown.is_cancelled() {
                    self.phase = Phase::Done;
                }
                return None;
            }
            received = receiver.recv() => received,
            _ = self.heartbeat.tick() => return Some(Bytes::from_static(wire::HEARTBEAT)),
        };
        let receiver = self
            .receiver
            .as_mut()
            .expect("a live connection has subscribed");

        let first = match received {
            Ok(frame) => frame,
            Err(RecvError::Lagged(missed)) => {
                self.fall_behind(missed);
                return None;
            }
            Err(RecvError::Closed) => {
                self.phase = Phase::Done;
                return None;
            }
        };

        // Gather whatever else is already waiting into the same write.
        let mut frames = vec![first];
        while frames.len() < FRAMES_PER_CHUNK {
            match receiver.try_recv() {
                Ok(frame) => frames.push(frame),
                Err(TryRecvError::Lagged(missed)) => {
                    self.fall_behind(missed);
                    break;
                }
                Err(_) => break,
            }
        }
        self.chunk_of(&frames)
    }

    /// Encodes the frames this connection has not seen and may receive.
    fn chunk_of(&mut self, frames: &[Arc<Frame>]) -> Option<Bytes> {
        let mut chosen = Vec::with_capacity(frames.len());
        for frame in frames {
            let event = &frame.event;
            if event.cursor <= self.last_seen {
                continue;
            }
            self.last_seen = event.cursor;
            if self.revokes_me(event) {
                // The registry may not have known this connection yet when the listener revoked.
                if let Some(registration) = &self.registration {
                    registration.entry.revoked.cancel();
                }
                break;
            }
            if self.filter.admits(
                &event.event_type,
                event.agent_id.as_deref(),
                event.user_id.as_deref(),
            ) {
                chosen.push(self.encoding.frame(frame));
            }
        }
        self.shared
            .metrics
            .events_delivered
            .fetch_add(chosen.len() as u64, Relaxed);
        self.record_position();
        match chosen.len() {
            0 => None,
            1 => chosen.pop(),
            _ => {
                let mut chunk = BytesMut::with_capacity(chosen.iter().map(Bytes::len).sum());
                chosen
                    .iter()
                    .for_each(|frame| chunk.extend_from_slice(frame));
                Some(chunk.freeze())
            }
        }
    }

    /// Whether `event` revokes this connection's subscriber.
    fn revokes_me(&self, event: &StoredEvent) -> bool {
        let subscriber = self
            .registration
            .as_ref()
            .and_then(|registration| registration.entry.subscriber());
        event.event_type.as_str() == "agent.revoked"
            && subscriber.is_some()
            && event.agent_id.as_deref() == subscriber
    }

    /// Why the stream must end now, if it must: the subscriber was revoked or the token expired.
    fn revoked_or_expired(&self) -> Option<(&'static str, &'static str)> {
        let revoked = self
            .registration
            .as_ref()
            .is_some_and(|registration| registration.entry.revoked.is_cancelled());
        if revoked {
            return Some(("REVOKED", "This subscriber was revoked"));
        }
        if self.expires_at.is_some_and(|expiry| expiry <= Utc::now()) {
            return Some(("TOKEN_EXPIRED", "Token expired"));
        }
        None
    }

    fn record_position(&self) {
        if let Some(registration) = &self.registration {
            registration.entry.set_position(self.last_seen.position);
        }
    }

    /// The hub moved on without this connection: read the table from its own cursor instead.
    fn fall_behind(&mut self, missed: u64) {
        debug!(missed, cursor = %self.last_seen, "connection fell behind the hub; reading the table");
        if !self.lagging {
            self.lagging = true;
            self.shared
                .metrics
                .lagging_connections
                .fetch_add(1, Relaxed);
        }
        self.phase = Phase::Replay;
    }

    /// Queues a terminal `error` frame with a long `retry:` and ends the stream.
    fn fail(&mut self, code: &str, message: &str) {
        let retry = Some(self.shared.config.error_retry_hint);
        self.pending.push_back(wire::control_frame(
            ControlEvent::Error,
            &ErrorData { code, message },
            retry,
        ));
        self.phase = Phase::Done;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.lagging {
            self.shared
                .metrics
                .lagging_connections
                .fetch_sub(1, Relaxed);
        }
    }
}

#[derive(Serialize)]
struct Connected<'a> {
    subscriber: Option<&'a str>,
    cursor: String,
    types: Option<Vec<&'a str>>,
}

#[derive(Serialize)]
struct Live {
    cursor: String,
    replayed: u64,
}

/// The data of a `gap` frame: why continuity broke and where the stream resumes.
#[derive(Debug, Serialize)]
pub(crate) struct Gap {
    reason: &'static str,
    message: String,
    requested: String,
    #[serde(rename = "resumeAfter")]
    resume_after: String,
}

impl Gap {
    fn new(reason: &'static str, requested: String, resume_after: Cursor) -> Self {
        let message = match reason {
            "pruned" => "Events after the requested cursor were pruned by retention; resuming with the oldest retained event",
            "unknown" => "The requested cursor or event is not known to this stream; resuming from the point given",
            _ => "Last-Event-ID is not a cursor, an event id or an RFC 3339 time; resuming from the point given",
        };
        Gap {
            reason,
            message: message.to_owned(),
            requested,
            resume_after: resume_after.to_string(),
        }
    }
}

/// Resolves when `token` is cancelled; never without one.
async fn until_cancelled(token: Option<tokio_util::sync::CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Resolves at `moment`; never without one.
async fn until(moment: Option<DateTime<Utc>>) {
    let Some(moment) = moment else {
        return std::future::pending().await;
    };
    let wait = (moment - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
}

/// Reads one page of the table after `after`, oldest first.
async fn read_page(
    pool: deadpool_postgres::Pool,
    after: Cursor,
    filter: EventFilter,
    limit: i64,
) -> Result<Vec<StoredEvent>, crate::Error> {
    let client = pool.get().await?;
    Ok(store::read_page(&**client, after, Direction::Forward, &filter, limit).await?)
}

/// A replay page read ahead on its own task; dropping it abandons the read.
struct PrefetchedPage {
    after: Cursor,
    task: tokio::task::JoinHandle<Result<Vec<StoredEvent>, crate::Error>>,
}

impl PrefetchedPage {
    fn start(shared: &Shared, after: Cursor, filter: &EventFilter, limit: i64) -> Self {
        let read = read_page(shared.pool.clone(), after, filter.clone(), limit);
        PrefetchedPage {
            after,
            task: tokio::spawn(read),
        }
    }

    /// The page, or `None` if the task failed to finish (the caller reads again).
    async fn join(mut self) -> Option<Result<Vec<StoredEvent>, crate::Error>> {
        (&mut self.task).await.ok()
    }
}

impl Drop for PrefetchedPage {
    fn drop(&mut self) {
        self.task.abort();
    }
}
