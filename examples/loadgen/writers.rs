//! The writers of the load generator: K tasks writing at a fixed total rate through `publish`,
//! `emit`, plain SQL `INSERT`s, or an Nchan publisher, and the ledger of when each commit returned.
//!
//! Writer `w` writes events `s = 0, 1, 2, ...` in order, each carrying `{w, s, t}` (`t`: write start
//! in ns since the run's epoch) padded to the payload size. `publish`, SQL and Nchan writes are
//! awaited one at a time, so each writer's events commit in sequence order.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::ValueEnum;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kavach_stream::{EmitError, EventStream, NewEvent, StreamConfig};
use tokio::task::JoinHandle;

use crate::target::Target;
use crate::{Mode, Options};

/// Seeded events per transaction in `catchup` mode.
const SEED_BATCH: u64 = 1000;

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WritePath {
    /// `EventStream::publish`, awaited: latency from the returned commit.
    Publish,
    /// `EventStream::emit`: queued and batched; no commit time is known.
    Emit,
    /// `INSERT INTO kavach_stream_events (type, data) VALUES (...)`, autocommit.
    Sql,
}

/// When each write's commit returned, per writer and sequence number.
pub struct Ledger {
    epoch: Instant,
    /// ns since the epoch, plus one; 0 while unknown.
    commits: Vec<Box<[AtomicU64]>>,
    /// The type writer `w` writes.
    types: Vec<String>,
    /// Most events one writer writes (the ledger's size).
    pub capacity: u64,
    records_commits: bool,
}

impl Ledger {
    pub fn new(options: &Options, epoch: Instant) -> Self {
        let writers = options.writers.max(1);
        let seconds = options.warmup + options.duration + 1.0;
        let capacity = match options.mode {
            Mode::Fanout => (options.rate / writers as f64 * seconds).ceil() as u64 + 64,
            Mode::Connect | Mode::Catchup => 0,
        };
        let commits = (0..writers)
            .map(|_| (0..capacity).map(|_| AtomicU64::new(0)).collect())
            .collect();
        let types = (0..writers)
            .map(|writer| options.event_types[writer % options.event_types.len()].clone())
            .collect();
        Ledger {
            epoch,
            commits,
            types,
            capacity,
            records_commits: options.write_path != WritePath::Emit,
        }
    }

    pub fn writers(&self) -> usize {
        self.types.len()
    }

    /// Whether a client with `filter` receives writer `writer`'s events.
    pub fn matches(&self, writer: usize, filter: Option<&[String]>) -> bool {
        filter.is_none_or(|types| types.contains(&self.types[writer]))
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn record_commit(&self, writer: usize, seq: u64) {
        self.commits[writer][seq as usize].store(self.now_ns() + 1, Relaxed);
    }

    /// Commit latency of `(writer, seq)` delivered at `now`: `None` on paths without a commit
    /// time (emit, seeding), 0 when the event arrived before its writer saw the commit return.
    pub fn commit_latency_ns(&self, writer: usize, seq: u64, now: u64) -> Option<u64> {
        if !self.records_commits {
            return None;
        }
        let slot = self.commits.get(writer)?.get(seq as usize)?;
        match slot.load(Relaxed) {
            0 => Some(0),
            committed => Some(now.saturating_sub(committed - 1)),
        }
    }
}

/// The running writers.
pub struct Writers {
    handles: Vec<JoinHandle<anyhow::Result<u64>>>,
    stream: Option<EventStream>,
}

impl Writers {
    /// Waits for every writer to stop (at the end of the window), flushes `emit`'s queue, and
    /// returns how many events each wrote. An emit refused because the queue was full is retried
    /// by the writer, so refusals are back-pressure, not loss; the clients' checks count loss.
    pub async fn finish(self) -> anyhow::Result<Vec<u64>> {
        let mut written = Vec::with_capacity(self.handles.len());
        for handle in self.handles {
            written.push(handle.await.context("a writer panicked")??);
        }
        if let Some(stream) = self.stream {
            stream.close().await;
        }
        Ok(written)
    }
}

/// Starts the writers; they stop by themselves after warm-up + duration.
pub async fn start(
    options: &Options,
    target: &Target,
    channel: &str,
    ledger: Arc<Ledger>,
) -> anyhow::Result<Writers> {
    let stream = match (target, options.write_path) {
        (Target::Kavach { database, .. }, WritePath::Publish | WritePath::Emit) => {
            Some(api_stream(database).await?)
        }
        _ => None,
    };
    let stop_at = Instant::now() + Duration::from_secs_f64(options.warmup + options.duration);
    let rate = options.rate / options.writers.max(1) as f64;

    let mut handles = Vec::new();
    for writer in 0..ledger.writers() {
        if options.rate <= 0.0 {
            break;
        }
        let sink = Sink::open(options, target, channel, stream.as_ref()).await?;
        let ledger = ledger.clone();
        let payload_bytes = options.payload_bytes;
        // Stagger the writers across one period, so K writers make a steady stream rather than
        // K events at once (which the server could deliver in one write per connection).
        let offset = writer as f64 / ledger.writers() as f64 / rate;
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(offset)).await;
            run_writer(writer, sink, ledger, rate, stop_at, payload_bytes).await
        }));
    }
    Ok(Writers { handles, stream })
}

/// A library instance on the benchmark database, for the Rust API paths.
async fn api_stream(database: &str) -> anyhow::Result<EventStream> {
    let pg_config = database.parse().context("parsing the database URL")?;
    let config = StreamConfig {
        require_auth: false,
        ..StreamConfig::default()
    };
    EventStream::connect(pg_config, config)
        .await
        .context("connecting the writer's EventStream")
}

/// Writes at `rate` events/s until `stop_at`; returns how many it wrote.
async fn run_writer(
    writer: usize,
    mut sink: Sink,
    ledger: Arc<Ledger>,
    rate: f64,
    stop_at: Instant,
    payload_bytes: usize,
) -> anyhow::Result<u64> {
    let period = Duration::from_secs_f64((1.0 / rate).max(0.001));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut next = 0;

    loop {
        ticker.tick().await;
        let now = Instant::now();
        if now >= stop_at {
            return Ok(next);
        }
        // Catch up on what is due, so the average rate holds even when a write ran long.
        let due = ((now - started).as_secs_f64() * rate) as u64 + 1;
        while next < due.min(ledger.capacity) && Instant::now() < stop_at {
            let payload = payload(writer, next, ledger.now_ns(), payload_bytes);
            sink.write(&ledger.types[writer], payload).await?;
            ledger.record_commit(writer, next);
            next += 1;
        }
    }
}

/// `{"w":..,"s":..,"t":..,"p":"xx.."}`, padded to `size` bytes.
fn payload(writer: usize, seq: u64, start_ns: u64, size: usize) -> String {
    let head = format!("{{\"w\":{writer},\"s\":{seq},\"t\":{start_ns},\"p\":\"");
    let padding = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(padding))
}

/// Where one writer writes.
enum Sink {
    Publish(EventStream),
    Emit(EventStream),
    Sql(tokio_postgres::Client, tokio_postgres::Statement),
    Nchan {
        sender: SendRequest<Full<Bytes>>,
        uri: String,
    },
}

impl Sink {
    async fn open(
        options: &Options,
        target: &Target,
        channel: &str,
        stream: Option<&EventStream>,
    ) -> anyhow::Result<Sink> {
        if let Some(url) = target.publish_url(options, channel) {
            return nchan_sink(&url).await;
        }
        let Target::Kavach { database, .. } = target else {
            bail!("no publisher for this target");
        };
        Ok(match (options.write_path, stream) {
            (WritePath::Publish, Some(stream)) => Sink::Publish(stream.clone()),
            (WritePath::Emit, Some(stream)) => Sink::Emit(stream.clone()),
            _ => {
                let client = connect_db(database).await?;
                let insert =
                    "INSERT INTO kavach_stream_events (type, data) VALUES ($1, $2::text::jsonb)";
                let statement = client.prepare(insert).await?;
                Sink::Sql(client, statement)
            }
        })
    }

    async fn write(&mut self, event_type: &str, payload: String) -> anyhow::Result<()> {
        match self {
            Sink::Publish(stream) => {
                stream.publish(new_event(event_type, &payload)?).await?;
            }
            Sink::Emit(stream) => emit(stream, new_event(event_type, &payload)?).await?,
            Sink::Sql(client, statement) => {
                client
                    .execute(&*statement, &[&event_type, &payload])
                    .await?;
            }
            Sink::Nchan { sender, uri } => nchan_post(sender, uri, payload).await?,
        }
        Ok(())
    }
}

fn new_event(event_type: &str, payload: &str) -> anyhow::Result<NewEvent> {
    let data = serde_json::from_str(payload).expect("the payload is a JSON object");
    Ok(NewEvent::new(event_type)?.with_data(data)?)
}

/// Emits, waiting while the queue is full (a refused event would be a gap, not load).
async fn emit(stream: &EventStream, event: NewEvent) -> anyhow::Result<()> {
    loop {
        match stream.emit(event.clone()) {
            Ok(()) => return Ok(()),
            Err(EmitError::QueueFull) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(error) => return Err(error.into()),
        }
    }
}

/// One database connection, driven on its own task.
pub async fn connect_db(database: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .context("connecting to the benchmark database")?;
    tokio::spawn(connection);
    Ok(client)
}

async fn nchan_sink(url: &str) -> anyhow::Result<Sink> {
    let uri: hyper::Uri = url.parse().context("the Nchan publisher URL")?;
    let authority = uri
        .authority()
        .context("a host in the publisher URL")?
        .to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(Sink::Nchan {
        sender,
        uri: url.to_owned(),
    })
}

async fn nchan_post(
    sender: &mut SendRequest<Full<Bytes>>,
    uri: &str,
    payload: String,
) -> anyhow::Result<()> {
    let parsed: hyper::Uri = uri.parse()?;
    let request = hyper::Request::post(parsed.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", parsed.authority().map_or("", |a| a.as_str()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload)))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    if !status.is_success() {
        bail!("the Nchan publisher answered {status}");
    }
    Ok(())
}

/// `catchup` mode: stores `catchup_events` events of writer 0 in transactions of 1000 and returns
/// the cursor just before them.
pub async fn seed(database: &str, options: &Options) -> anyhow::Result<String> {
    let client = connect_db(database).await?;
    let head =
        "SELECT c.position, (SELECT max(e.seq) FROM kavach_stream_events e WHERE e.xid = c.xid) \
         FROM kavach_stream_commits c ORDER BY c.position DESC LIMIT 1";
    let from = match client.query_opt(head, &[]).await? {
        Some(row) => format!(
            "{}-{}",
            row.get::<_, i64>(0),
            row.get::<_, Option<i64>>(1).unwrap_or(0)
        ),
        None => "0-0".to_owned(),
    };

    let padding = payload(0, 0, 0, options.payload_bytes).len() - payload(0, 0, 0, 0).len();
    let insert = "INSERT INTO kavach_stream_events (type, data) \
        SELECT $1, jsonb_build_object('w', 0, 's', g, 't', 0, 'p', repeat('x', $2::int)) \
        FROM generate_series($3::bigint, $4::bigint) g ORDER BY g";
    let event_type = options.event_types[0].as_str();
    let mut first = 0;
    while first < options.catchup_events {
        let last = (first + SEED_BATCH).min(options.catchup_events) - 1;
        let padding = padding as i32;
        client
            .execute(
                insert,
                &[&event_type, &padding, &(first as i64), &(last as i64)],
            )
            .await?;
        first = last + 1;
    }
    Ok(from)
}
