//! The SSE clients of the load generator: opening them (all at once, or at a fixed rate), reading
//! and checking every event, and the shared latency histograms.
//!
//! Each client checks its own stream: SSE cursors must only grow (an equal one is a duplicate, a
//! smaller one a reordering), and per writer the sequence numbers must arrive without gaps. A gap
//! still open when the run ends is a lost event.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kavach_stream::Cursor;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::sse::{number_field, Block, SseStream};
use crate::writers::Ledger;
use crate::{Options, TargetKind};

/// Histogram shards; a client locks the shard of its index for each event.
const SHARDS: usize = 32;

/// Longest latency a histogram holds, in microseconds (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;

/// How long opening all clients may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(300);

/// One client to open.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub index: usize,
    pub source: IpAddr,
    /// The types it asks for; `None` for all.
    pub filter: Option<Vec<String>>,
    pub url: String,
    pub last_event_id: Option<String>,
}

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub lost: u64,
    pub error: Option<String>,
}

/// Latency histograms in microseconds.
pub struct Histograms {
    /// From the writer's commit returning to the client parsing the event.
    pub commit: Histogram<u64>,
    /// From the writer starting its write to the client parsing the event.
    pub start: Histogram<u64>,
    /// From sending the request to the `connected` frame.
    pub connect: Histogram<u64>,
}

impl Histograms {
    pub fn new() -> Self {
        let histogram =
            || Histogram::new_with_max(MAX_LATENCY_US, 3).expect("valid histogram bounds");
        Histograms {
            commit: histogram(),
            start: histogram(),
            connect: histogram(),
        }
    }

    fn add(&mut self, other: &Histograms) {
        let add = |into: &mut Histogram<u64>, from: &Histogram<u64>| {
            into.add(from).expect("histograms share bounds");
        };
        add(&mut self.commit, &other.commit);
        add(&mut self.start, &other.start);
        add(&mut self.connect, &other.connect);
    }
}

/// What every client shares: the clock, the ledger of commits, histograms and counters.
pub struct Stats {
    pub epoch: Instant,
    ledger: Arc<Ledger>,
    shards: Vec<Mutex<Histograms>>,
    /// Events written from here (ns since epoch) are measured...
    window_start: AtomicU64,
    /// ...until here.
    window_end: AtomicU64,
    /// Deliveries of events written inside the window.
    pub in_window: AtomicU64,
    /// In-order deliveries, for the drain.
    received: AtomicU64,
}

impl Stats {
    pub fn new(epoch: Instant, ledger: Arc<Ledger>) -> Self {
        Stats {
            epoch,
            ledger,
            shards: (0..SHARDS).map(|_| Mutex::new(Histograms::new())).collect(),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            in_window: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn open_window(&self) {
        self.window_start.store(self.now_ns(), Relaxed);
    }

    pub fn close_window(&self) {
        self.window_end.store(self.now_ns(), Relaxed);
    }

    /// All shards merged.
    pub fn histograms(&self) -> Histograms {
        let mut merged = Histograms::new();
        for shard in &self.shards {
            merged.add(&shard.lock().expect("no panics while held"));
        }
        merged
    }

    fn record_delivery(&self, shard: usize, payload: &Payload, now: u64) {
        self.received.fetch_add(1, Relaxed);
        let start = self.window_start.load(Relaxed);
        let end = self.window_end.load(Relaxed);
        if payload.t < start || payload.t >= end {
            return;
        }
        self.in_window.fetch_add(1, Relaxed);

        let commit = self.ledger.commit_latency_ns(payload.w, payload.s, now);
        let mut histograms = self.shards[shard % SHARDS]
            .lock()
            .expect("no panics while held");
        histograms
            .start
            .saturating_record(now.saturating_sub(payload.t) / 1000);
        if let Some(commit) = commit {
            histograms.commit.saturating_record(commit / 1000);
        }
    }

    fn record_connect(&self, shard: usize, elapsed: Duration) {
        let mut histograms = self.shards[shard % SHARDS]
            .lock()
            .expect("no panics while held");
        histograms
            .connect
            .saturating_record(elapsed.as_micros() as u64);
    }

    /// Waits until `expected` in-order deliveries have happened, or `timeout`; true if they did.
    pub async fn wait_for(&self, expected: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.received.load(Relaxed) < expected {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// The event fields the load generator writes into `data`.
#[derive(Debug)]
struct Payload {
    /// Writer.
    w: usize,
    /// Sequence number of this writer's event.
    s: u64,
    /// Write start, ns since the epoch.
    t: u64,
}

impl Payload {
    /// Finds `w`, `s` and `t` in an event's JSON (kavach-stream nests them in `data`; none of the
    /// envelope's keys is one letter long).
    fn parse(json: &[u8]) -> Option<Payload> {
        Some(Payload {
            w: usize::try_from(number_field(json, b"\"w\":")?).ok()?,
            s: number_field(json, b"\"s\":")?,
            t: number_field(json, b"\"t\":")?,
        })
    }
}

/// The running clients.
pub struct Clients {
    handles: Vec<(Option<Vec<String>>, JoinHandle<Checker>)>,
    ledger: Arc<Ledger>,
}

impl Clients {
    /// In-order deliveries owed once each writer wrote `written[w]` events.
    pub fn expected_total(&self, written: &[u64]) -> u64 {
        self.handles
            .iter()
            .map(|(filter, _)| {
                (0..written.len())
                    .filter(|&writer| self.ledger.matches(writer, filter.as_deref()))
                    .map(|writer| written[writer])
                    .sum::<u64>()
            })
            .sum()
    }
}

/// Opens every client, at most `connect_concurrency` at a time, and returns once all are
/// subscribed (or failed).
pub async fn open_all(
    specs: Vec<ClientSpec>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    options: &Options,
) -> anyhow::Result<Clients> {
    let gate = Arc::new(Semaphore::new(options.connect_concurrency.max(1)));
    let mut opened = Vec::with_capacity(specs.len());
    let mut handles = Vec::with_capacity(specs.len());

    for spec in specs {
        let permit = gate.clone().acquire_owned().await?;
        let (opened_tx, opened_rx) = oneshot::channel();
        let filter = spec.filter.clone();
        let opening = Opening {
            opened: opened_tx,
            permit: Some(permit),
        };
        let client = run_client(spec, stats.clone(), stop.clone(), options.target, opening);
        handles.push((filter, tokio::spawn(client)));
        opened.push(opened_rx);
    }

    let all_opened = futures_util::future::join_all(opened);
    if tokio::time::timeout(OPEN_TIMEOUT, all_opened)
        .await
        .is_err()
    {
        anyhow::bail!("clients did not all connect within {OPEN_TIMEOUT:?}");
    }
    Ok(Clients {
        handles,
        ledger: stats.ledger.clone(),
    })
}

/// Opens the clients one every `1/rate` seconds without waiting for each, then waits for all.
pub async fn open_at_rate(
    specs: Vec<ClientSpec>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    rate: f64,
) -> Clients {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut opened = Vec::with_capacity(specs.len());
    let mut handles = Vec::with_capacity(specs.len());

    for spec in specs {
        ticker.tick().await;
        let (opened_tx, opened_rx) = oneshot::channel();
        let filter = spec.filter.clone();
        let opening = Opening {
            opened: opened_tx,
            permit: None,
        };
        let client = run_client(
            spec,
            stats.clone(),
            stop.clone(),
            TargetKind::Kavach,
            opening,
        );
        handles.push((filter, tokio::spawn(client)));
        opened.push(opened_rx);
    }
    let _ = tokio::time::timeout(OPEN_TIMEOUT, futures_util::future::join_all(opened)).await;
    Clients {
        handles,
        ledger: stats.ledger.clone(),
    }
}

/// Stops nothing: the caller cancels `stop` first. Collects each client's checks, counting events
/// still missing after `written` as lost.
pub async fn collect(clients: Clients, written: &[u64]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(clients.handles.len());
    for (filter, handle) in clients.handles {
        let mut checker = match handle.await {
            Ok(checker) => checker,
            Err(error) => Checker::failed(format!("client task failed: {error}")),
        };
        for (writer, &count) in written.iter().enumerate() {
            let next = checker.next.get(writer).copied().unwrap_or(0);
            if clients.ledger.matches(writer, filter.as_deref()) && next < count {
                checker.outcome.lost += count - next;
            }
        }
        outcomes.push(checker.outcome);
    }
    outcomes
}

/// `catchup` mode: one client reads `count` stored events after its `Last-Event-ID`.
pub async fn read_catchup(
    spec: ClientSpec,
    count: u64,
    stats: &Arc<Stats>,
) -> anyhow::Result<Outcome> {
    stats.open_window();
    let mut stream = connect(&spec, TargetKind::Kavach).await?;
    let mut checker = Checker::new(stats.ledger.writers(), spec.index);

    while checker.outcome.received < count {
        let read = stream.read(|block| checker.on_block(block, stats, TargetKind::Kavach));
        match tokio::time::timeout(Duration::from_secs(60), read).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                anyhow::bail!("the stream ended after {} events", checker.outcome.received)
            }
            Ok(Err(error)) => anyhow::bail!("reading the stream: {error}"),
            Err(_) => anyhow::bail!(
                "no event for 60 s after {} events",
                checker.outcome.received
            ),
        }
        if let Some(error) = &checker.outcome.error {
            anyhow::bail!("{error}");
        }
    }
    stats.close_window();
    Ok(checker.outcome)
}

async fn connect(spec: &ClientSpec, target: TargetKind) -> anyhow::Result<SseStream> {
    let mut headers = Vec::new();
    if target == TargetKind::Kavach {
        headers.push(("authorization", "Bearer bench"));
    }
    if let Some(cursor) = &spec.last_event_id {
        headers.push(("last-event-id", cursor.as_str()));
    }
    SseStream::open(&spec.url, spec.source, &headers, Duration::from_secs(60)).await
}

/// How a client reports that it subscribed, and its place among those connecting at once.
struct Opening {
    opened: oneshot::Sender<()>,
    permit: Option<OwnedSemaphorePermit>,
}

/// One client's life: connect, signal `opened` once subscribed, read until `stop`.
async fn run_client(
    spec: ClientSpec,
    stats: Arc<Stats>,
    stop: CancellationToken,
    target: TargetKind,
    opening: Opening,
) -> Checker {
    let started = Instant::now();
    let mut checker = Checker::new(stats.ledger.writers(), spec.index);
    let mut stream = match subscribe(&spec, target).await {
        Ok(stream) => stream,
        Err(error) => return Checker::failed(format!("client {}: {error:#}", spec.index)),
    };
    stats.record_connect(spec.index, started.elapsed());
    let _ = opening.opened.send(());
    drop(opening.permit);

    loop {
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => return checker,
            read = stream.read(|block| checker.on_block(block, &stats, target)) => read,
        };
        match read {
            Ok(true) => {}
            Ok(false) => checker.fail("the server ended the stream".to_owned()),
            Err(error) => checker.fail(format!("reading the stream: {error}")),
        }
        if checker.outcome.error.is_some() {
            return checker;
        }
    }
}

/// Connects and, on kavach-stream, waits for the `connected` frame (subscribed from then on);
/// Nchan has subscribed once it answers.
async fn subscribe(spec: &ClientSpec, target: TargetKind) -> anyhow::Result<SseStream> {
    let mut stream = connect(spec, target).await?;
    if target == TargetKind::Nchan {
        return Ok(stream);
    }
    let mut connected = false;
    let mut failure = None;
    while !connected {
        let open = stream
            .read(|block| match block.event {
                b"connected" => connected = true,
                b"error" => failure = Some(String::from_utf8_lossy(block.data).into_owned()),
                _ => {}
            })
            .await?;
        if let Some(failure) = failure.take() {
            anyhow::bail!("error frame: {failure}");
        }
        if !open {
            anyhow::bail!("the stream ended before `connected`");
        }
    }
    Ok(stream)
}

/// One connection's checks.
struct Checker {
    shard: usize,
    last_cursor: Cursor,
    /// Per writer, the sequence number expected next.
    next: Vec<u64>,
    outcome: Outcome,
}

impl Checker {
    fn new(writers: usize, shard: usize) -> Self {
        Checker {
            shard,
            last_cursor: Cursor::START,
            next: vec![0; writers],
            outcome: Outcome::default(),
        }
    }

    fn failed(error: String) -> Self {
        let mut checker = Checker::new(0, 0);
        checker.fail(error);
        checker
    }

    fn fail(&mut self, error: String) {
        self.outcome.error.get_or_insert(error);
    }

    fn on_block(&mut self, block: Block<'_>, stats: &Stats, target: TargetKind) {
        if self.outcome.error.is_some() {
            return;
        }
        let now = stats.now_ns();
        match block.event {
            b"connected" | b"live" => return,
            b"gap" | b"error" => {
                let event = String::from_utf8_lossy(block.event);
                let data = String::from_utf8_lossy(block.data);
                return self.fail(format!("`{event}` frame: {data}"));
            }
            _ => {}
        }
        if target == TargetKind::Kavach && !self.cursor_advances(block.id) {
            return;
        }
        match Payload::parse(block.data) {
            Some(payload) => self.on_payload(payload, stats, now),
            None => {
                let data = String::from_utf8_lossy(block.data);
                self.fail(format!("event data without w/s/t: {data}"));
            }
        }
    }

    /// False (and counted) when the cursor repeats or goes back.
    fn cursor_advances(&mut self, id: Option<&[u8]>) -> bool {
        let text = id.and_then(|id| std::str::from_utf8(id).ok());
        let Some(cursor) = text.and_then(|id| id.parse::<Cursor>().ok()) else {
            self.fail(format!("an event without a valid cursor: {text:?}"));
            return false;
        };
        if cursor == self.last_cursor {
            self.outcome.duplicates += 1;
            return false;
        }
        if cursor < self.last_cursor {
            self.outcome.reordered += 1;
            return false;
        }
        self.last_cursor = cursor;
        true
    }

    fn on_payload(&mut self, payload: Payload, stats: &Stats, now: u64) {
        let Some(expected) = self.next.get(payload.w).copied() else {
            return self.fail(format!("an event from unknown writer {}", payload.w));
        };
        if payload.s < expected {
            self.outcome.reordered += 1;
            return;
        }
        self.outcome.lost += payload.s - expected;
        self.next[payload.w] = payload.s + 1;
        self.outcome.received += 1;
        stats.record_delivery(self.shard, &payload, now);
    }
}
