//! Slow and greedy clients against the real `kavach-stream serve` binary.
//!
//! - One client reads one event per second while 200 fast clients receive 200 events/s for 5 s
//!   (the CI size; the long mode is 1,000 clients × 1,000 events/s, see
//!   `KAVACH_GREEDY_CLIENTS` and `KAVACH_GREEDY_RATE`): the server's resident memory stays within
//!   [`MEMORY_BOUND_MIB`] of what it was before the flow, the fast clients get every event with a
//!   bounded delay, and the slow client, once it reads at full speed again (or reconnects with
//!   `Last-Event-ID` if the server closed it), has every event in order.
//! - 2,000 simultaneous connection attempts against `--max-connections 100`: exactly 100 are
//!   served, the other 1,900 get 503 with `Retry-After`, and `/metrics` counts the connections
//!   back to 0 once they leave.

mod common;
mod serve_process;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDb;
use kavach_stream::client::{SseItem, SseParser, SseRequest, SseResponse};
use serve_process::ServeProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;

const TOKEN: &str = "greedy-token";

/// How much the server's resident memory may grow while one client reads one event per second
/// and the others take everything. What it holds by design: the hub ring (4,096 frames of about
/// 1.3 KiB here, some 5 MiB), one chunk per connection (at most 256 frames, shared `Bytes`), one
/// table page per lagging connection, and allocator slack. Unbounded buffering for the slow
/// client would instead grow with every event it has not read.
const MEMORY_BOUND_MIB: u64 = 32;

/// How late a fast client may get an event (from its commit to its arrival) on a loaded
/// two-core machine.
const FAST_LATENCY_BOUND: Duration = Duration::from_secs(5);

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The tests of this file measure latency and memory: they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Source addresses 127.0.0.1 to 127.0.0.8, so many sockets never exhaust one address's ports.
fn source_address(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % 8) as u8))
}

fn request(url: &str, index: usize) -> SseRequest {
    SseRequest::new(url)
        .expect("a valid URL")
        .header("authorization", &format!("Bearer {TOKEN}"))
        .bind(source_address(index))
        .connect_timeout(Duration::from_secs(20))
}

/// What one fast client saw.
#[derive(Debug, Default)]
struct FastLog {
    received: usize,
    in_order: bool,
    latencies: Vec<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_costs_bounded_memory_while_fast_clients_get_every_event() {
    let clients = env_number("KAVACH_GREEDY_CLIENTS", 200);
    let rate = env_number("KAVACH_GREEDY_RATE", 200);
    let seconds = env_number("KAVACH_GREEDY_SECONDS", 5);
    // KAVACH_GREEDY_SLOW=0 runs the same flow without the slow client: the baseline for the fast
    // clients' latency (BENCHMARKS.md compares the two).
    let with_slow = env_number("KAVACH_GREEDY_SLOW", 1) > 0;
    let total = rate * seconds;
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = TestDb::create().await;
    let token_pair = format!("{TOKEN}=greedy");
    let max_connections = (clients + 10).to_string();
    let server = ServeProcess::start(
        &db.url(),
        &[
            "--token",
            &token_pair,
            "--max-connections",
            &max_connections,
        ],
    )
    .await;
    let url = server.stream_url("");

    let mut slow = if with_slow {
        Some(SlowClient::connect(&server.base_url, None).await)
    } else {
        None
    };
    let logs: Vec<Arc<Mutex<FastLog>>> = (0..clients)
        .map(|_| Arc::new(Mutex::new(FastLog::default())))
        .collect();
    let connected = Arc::new(AtomicUsize::new(0));
    let fast: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(index, log)| {
            tokio::spawn(run_fast_client(
                url.clone(),
                index + 1,
                total,
                log.clone(),
                connected.clone(),
            ))
        })
        .collect();
    common::wait_until("every fast client is connected", || {
        connected.load(Relaxed) == clients
    })
    .await;
    let rss_before = server.rss_kib();

    // The flow, while the slow client reads one event per second.
    let writer = tokio::spawn(write_steadily(db.pg_config.clone(), rate, seconds));
    let mut slow_ids = Vec::new();
    let mut rss_peak = rss_before;
    let mut pace = tokio::time::interval(Duration::from_secs(1));
    while !writer.is_finished() {
        pace.tick().await;
        rss_peak = rss_peak.max(server.rss_kib());
        if let Some(slow) = &mut slow {
            if let Some(id) = slow.next_event_id().await {
                slow_ids.push(id);
            }
        }
    }
    writer.await.expect("the writer finishes");
    for client in fast {
        tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("fast clients finish in time")
            .expect("a fast client does not panic");
    }
    rss_peak = rss_peak.max(server.rss_kib());
    let slow_while_flowing = slow_ids.len();

    // Now the slow client reads at full speed; if the server closed it, it resumes.
    let deadline = Instant::now() + Duration::from_secs(60);
    if let Some(client) = &mut slow {
        while slow_ids.len() < total && Instant::now() < deadline {
            match client.next_event_id().await {
                Some(id) => slow_ids.push(id),
                None => {
                    let last = slow_ids.last().cloned().unwrap_or_else(|| "0-0".to_owned());
                    *client = SlowClient::connect(&server.base_url, Some(&last)).await;
                }
            }
        }
    }

    let growth_mib = rss_peak.saturating_sub(rss_before) / 1024;
    let mut latencies: Vec<Duration> = logs
        .iter()
        .flat_map(|log| log.lock().expect("unpoisoned").latencies.clone())
        .collect();
    latencies.sort();
    let percentile = |p: usize| latencies[(latencies.len() - 1) * p / 100];
    println!(
        "{clients} fast clients x {total} events ({rate}/s), slow client {}: server RSS {} -> peak {} KiB (+{growth_mib} MiB, bound {MEMORY_BOUND_MIB}); fast latency p50 {:?} p99 {:?} max {:?}; slow client read {slow_while_flowing} while flowing, {} in all",
        if with_slow { "on" } else { "off" },
        rss_before,
        rss_peak,
        percentile(50),
        percentile(99),
        percentile(100),
        slow_ids.len()
    );
    for log in &logs {
        let log = log.lock().expect("unpoisoned");
        assert_eq!(log.received, total, "a fast client got every event");
        assert!(log.in_order, "a fast client got them in order");
    }
    assert!(
        percentile(99) <= FAST_LATENCY_BOUND,
        "fast clients kept up: p99 {:?}",
        percentile(99)
    );
    assert!(growth_mib <= MEMORY_BOUND_MIB, "RSS grew {growth_mib} MiB");
    if !with_slow {
        return;
    }
    assert!(
        slow_while_flowing < total / 2,
        "the slow client really was slow"
    );
    let expected = stored_cursors(&db).await;
    assert_eq!(
        slow_ids, expected,
        "the slow client has every event once, in order"
    );
}

/// Opens a stream and expects a 200 and its `connected` frame.
async fn open_ok(url: &str, index: usize, last_event_id: Option<&str>) -> SseResponse {
    let mut request = request(url, index);
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last);
    }
    let mut response = request.send().await.expect("connect");
    assert_eq!(response.status(), 200);
    let connected = common::next_message(&mut response).await;
    assert_eq!(connected.event, "connected");
    response
}

/// A client that reads as little as it can: a raw socket with a 4 KiB receive buffer, so the
/// server, not the kernel, must hold (or drop) what it has not read. It speaks HTTP/1.0, so the
/// body is the bare event stream, ended by the server closing the connection.
struct SlowClient {
    socket: tokio::net::TcpStream,
    parser: SseParser,
    ready: VecDeque<SseItem>,
}

impl SlowClient {
    async fn connect(base_url: &str, last_event_id: Option<&str>) -> SlowClient {
        let address: SocketAddr = base_url
            .trim_start_matches("http://")
            .parse()
            .expect("an IP address and port");
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(4096).expect("a small buffer");
        socket
            .bind(SocketAddr::new(source_address(8), 0))
            .expect("bind");
        let mut socket = socket.connect(address).await.expect("connect");
        let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let head = format!(
            "GET /api/kavach/events/stream HTTP/1.0\r\nHost: {address}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {TOKEN}\r\n{resume}\r\n"
        );
        socket
            .write_all(head.as_bytes())
            .await
            .expect("send the request");

        // The response head, byte by byte so no body byte is consumed with it.
        let mut response_head = Vec::new();
        while !response_head.ends_with(b"\r\n\r\n") {
            let byte = tokio::time::timeout(common::WAIT, socket.read_u8())
                .await
                .expect("a response in time")
                .expect("a response head");
            response_head.push(byte);
        }
        let response_head = String::from_utf8_lossy(&response_head);
        assert!(
            response_head.starts_with("HTTP/1.0 200") || response_head.starts_with("HTTP/1.1 200"),
            "{response_head}"
        );
        assert!(
            !response_head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{response_head}"
        );
        SlowClient {
            socket,
            parser: SseParser::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next event's cursor, reading at most 512 bytes at a time; `None` when the server
    /// closed the stream.
    async fn next_event_id(&mut self) -> Option<String> {
        loop {
            while let Some(item) = self.ready.pop_front() {
                if let SseItem::Message(message) = item {
                    if message.id.is_some() {
                        return message.id;
                    }
                }
            }
            let mut buffer = [0_u8; 512];
            let read = tokio::time::timeout(common::WAIT, self.socket.read(&mut buffer))
                .await
                .expect("bytes in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(count) => self.ready.extend(self.parser.feed(&buffer[..count])),
            }
        }
    }
}

/// One fast client: reads `total` events, noting order and each one's delay since commit.
async fn run_fast_client(
    url: String,
    index: usize,
    total: usize,
    log: Arc<Mutex<FastLog>>,
    connected: Arc<AtomicUsize>,
) {
    let mut response = open_ok(&url, index, None).await;
    connected.fetch_add(1, Relaxed);
    let mut last = None;
    let mut in_order = true;
    let mut latencies = Vec::with_capacity(total);
    let mut received = 0;
    while received < total {
        let message = common::next_event(&mut response).await;
        let cursor: kavach_stream::Cursor = message
            .id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .expect("an event id is a cursor");
        in_order &= last.is_none_or(|last| last < cursor);
        last = Some(cursor);
        let data: serde_json::Value = serde_json::from_str(&message.data).expect("JSON");
        let committed: chrono::DateTime<chrono::Utc> = data["data"]["committed"]
            .as_str()
            .and_then(|time| time.parse().ok())
            .unwrap_or_else(chrono::Utc::now);
        latencies.push(
            (chrono::Utc::now() - committed)
                .to_std()
                .unwrap_or_default(),
        );
        received += 1;
    }
    *log.lock().expect("unpoisoned") = FastLog {
        received,
        in_order,
        latencies,
    };
}

/// Inserts `rate` events per second for `seconds`, ten per transaction, each about 1 KiB with
/// its insert time (the delay clients measure starts there).
async fn write_steadily(pg_config: tokio_postgres::Config, rate: usize, seconds: usize) {
    let (client, connection) = pg_config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect the writer");
    tokio::spawn(connection);
    let batches = rate * seconds / 10;
    let mut pace = tokio::time::interval(Duration::from_secs(1) * 10 / rate as u32);
    for _ in 0..batches {
        pace.tick().await;
        client
            .execute(
                "INSERT INTO kavach_stream_events (type, data) \
                 SELECT 'audit', jsonb_build_object('n', n, 'pad', repeat('x', 900), \
                        'committed', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) \
                 FROM generate_series(1, 10) n",
                &[],
            )
            .await
            .expect("insert a batch");
    }
}

async fn stored_cursors(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT c.position || '-' || e.seq FROM kavach_stream_commits c \
             JOIN kavach_stream_events e ON e.xid = c.xid ORDER BY c.position, e.seq",
            &[],
        )
        .await
        .expect("read the cursors")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_simultaneous_attempts_get_exactly_100_streams_and_1900_retry_afters() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = TestDb::create().await;
    let token_pair = format!("{TOKEN}=greedy");
    let server = ServeProcess::start(
        &db.url(),
        &["--token", &token_pair, "--max-connections", "100"],
    )
    .await;
    let url = server.stream_url("");

    let attempts: Vec<_> = (0..2000)
        .map(|index| {
            let request = request(&url, index);
            tokio::spawn(async move { request.send().await.expect("an answer") })
        })
        .collect();
    let mut served = Vec::new();
    let mut refused = 0;
    let mut with_retry_after = 0;
    for attempt in attempts {
        let response = attempt.await.expect("an attempt does not panic");
        match response.status() {
            200 => served.push(response),
            503 => {
                refused += 1;
                with_retry_after += usize::from(response.header("retry-after").is_some());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let open_while_held = server.metric("kavach_stream_connections").await;

    assert_eq!(served.len(), 100);
    assert_eq!(refused, 1900);
    assert_eq!(with_retry_after, 1900);
    assert_eq!(open_while_held, 100.0);
    for response in &mut served {
        assert_eq!(common::next_message(response).await.event, "connected");
    }
    drop(served);
    let deadline = Instant::now() + common::WAIT;
    loop {
        let open = server.metric("kavach_stream_connections").await;
        if open == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "still {open} connections");
        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(50))).await;
    }
}
