//! The chaos suite: nothing lost, duplicated or reordered under faults.
//!
//! Each phase runs 32 writers for a while (8 through `publish`, 8 through `emit_in` inside their
//! own transactions, 16 through plain SQL `INSERT`s; every transaction pauses with `pg_sleep`
//! before it ends and about one in five is rolled back) while 8 clients, some with a `types=`
//! filter, stay connected to two real `kavach-stream serve` processes, and one fault strikes:
//!
//! - `listener killed`: both servers' LISTEN connections are ended with `pg_terminate_backend`
//!   every 1.5 s;
//! - `postgres restarted`: PostgreSQL (a temporary cluster of this test's own, never the shared
//!   one) is restarted twice mid-stream;
//! - `serve SIGKILLed`: one of the two servers is killed with SIGKILL; its clients resume on the
//!   other with `Last-Event-ID`;
//! - `random reconnects`: every client drops its connection at random moments and resumes with
//!   `Last-Event-ID`.
//!
//! Clients start with `Last-Event-ID: 0-0`, so each one must end up with exactly the committed
//! events matching its filter, in commit order. The truth is the table once the writers stop; the
//! writers also check that every acknowledged event is in it and no rolled-back one is. The suite
//! prints one row per fault (run with `--nocapture` to see it), then fails unless `lost`,
//! `duplicated`, `reordered`, `unexpected` and `gaps` are all zero in every row. `unexpected` also
//! counts acknowledged events missing from the table and rolled-back events found in it.
//!
//! Writing lasts `KAVACH_CHAOS_SECONDS` per phase (default 6, about 45 s in all on two cores);
//! `scripts/chaos.sh` runs the long mode. `KAVACH_CHAOS_SEED` replays a run's random choices
//! (timing, and so the interleaving, still differs).

mod clients;
#[path = "../common/mod.rs"]
mod common;
#[path = "../serve_process/mod.rs"]
mod serve_process;
mod verdict;
mod writers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDb;
use kavach_stream::embedded::{TempPostgres, TempPostgresOptions};
use kavach_stream::{EventStream, StreamConfig};
use serve_process::ServeProcess;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use clients::{run_client, ClientLog, ClientPlan};
use verdict::{committed_events, compare, writer_mismatches, Committed, Report};
use writers::{run_writer, WriterOutcome};

/// The bearer token both servers accept, for subscriber `chaos`.
pub(crate) const TOKEN: &str = "chaos-token";

/// The types writers pick from; the filtered clients ask for some of them.
pub(crate) const TYPES: [&str; 5] = [
    "audit",
    "agent.created",
    "auth.signin",
    "anomaly.detected",
    "cost.recorded",
];

/// Each client's `types=` filter; `None` receives everything.
pub(crate) const CLIENT_FILTERS: [Option<&str>; 8] = [
    None,
    None,
    None,
    Some("audit"),
    Some("auth.signin,anomaly.detected"),
    Some("agent.created"),
    Some("cost.recorded,audit,agent.created"),
    None,
];

pub(crate) const WRITERS: u64 = 32;

/// How long clients may take to catch up once the writers have stopped, beyond the time spent
/// writing.
pub(crate) const CATCH_UP: Duration = Duration::from_secs(60);

/// One fault per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    KillListener,
    RestartPostgres,
    KillServe,
    RandomReconnects,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillListener => "listener killed",
            Fault::RestartPostgres => "postgres restarted",
            Fault::KillServe => "serve SIGKILLed",
            Fault::RandomReconnects => "random reconnects",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_every_committed_event_once_in_order_under_each_fault() {
    let seconds: u64 = std::env::var("KAVACH_CHAOS_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("KAVACH_CHAOS_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 0x9e37_79b9);
    let writing = Duration::from_secs(seconds);

    let mut reports = Vec::new();
    for fault in [
        Fault::KillListener,
        Fault::RestartPostgres,
        Fault::KillServe,
        Fault::RandomReconnects,
    ] {
        reports.push(run_phase(fault, writing, seed).await);
    }

    println!(
        "chaos suite: seed {seed}, {seconds} s of writing per fault, {WRITERS} writers, {} clients on 2 serve processes",
        CLIENT_FILTERS.len()
    );
    println!("{}", Report::header());
    for report in &reports {
        println!("{}", report.row());
    }
    for report in &reports {
        assert!(report.is_clean(), "{}: {report:?}", report.name());
        assert!(report.written > 0, "{}: nothing was written", report.name());
    }
}

/// The database of one phase: a fresh one on the shared test server, or a cluster of its own.
pub(crate) struct Target {
    pg_config: tokio_postgres::Config,
    url: String,
    cluster: Option<TempPostgres>,
}

impl Target {
    async fn shared() -> Target {
        let db = TestDb::create().await;
        Target {
            url: db.url(),
            pg_config: db.pg_config,
            cluster: None,
        }
    }

    /// A temporary cluster of this test's own, which the phase may restart.
    async fn own_cluster() -> Target {
        let options = TempPostgresOptions {
            settings: vec![
                ("fsync".into(), "off".into()),
                ("full_page_writes".into(), "off".into()),
                ("max_connections".into(), "300".into()),
            ],
        };
        let cluster = TempPostgres::start(options)
            .await
            .expect("start a temporary PostgreSQL");
        let pg_config = cluster.config_for("postgres");
        let mut client = connect(&pg_config).await.expect("connect to the cluster");
        kavach_stream::migrate(&mut client)
            .await
            .expect("migrate the cluster");
        Target {
            url: cluster.connection_string(),
            pg_config,
            cluster: Some(cluster),
        }
    }
}

/// A connection whose attempt is bounded, so a writer notices a stopped server quickly.
pub(crate) async fn connect(
    pg_config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut pg_config = pg_config.clone();
    pg_config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = pg_config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A small deterministic generator, so a run's choices can be replayed from its seed.
pub(crate) struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u64) -> Self {
        Xorshift(seed | 1)
    }

    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Runs one phase: servers, clients and writers up, the fault for `writing`, then the count.
pub(crate) async fn run_phase(fault: Fault, writing: Duration, seed: u64) -> Report {
    let target = match fault {
        Fault::RestartPostgres => Target::own_cluster().await,
        _ => Target::shared().await,
    };
    let token_pair = format!("{TOKEN}=chaos");
    let args = [
        "--token",
        &token_pair,
        "--heartbeat-ms",
        "1000",
        "--max-connections",
        "1000",
    ];
    let mut servers = vec![
        ServeProcess::start(&target.url, &args).await,
        ServeProcess::start(&target.url, &args).await,
    ];
    let addresses: Vec<String> = servers.iter().map(|s| s.base_url.clone()).collect();

    // Clients first, so they see the events live; each starts from the beginning of the feed.
    let stop_clients = CancellationToken::new();
    let mut logs = Vec::new();
    let mut clients = Vec::new();
    for (index, filter) in CLIENT_FILTERS.iter().enumerate() {
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let plan = ClientPlan {
            servers: vec![
                addresses[index % 2].clone(),
                addresses[(index + 1) % 2].clone(),
            ],
            filter: *filter,
            random_disconnects: fault == Fault::RandomReconnects,
            random: Xorshift::new(seed ^ ((index as u64 + 1) * 0x51_7cc1)),
        };
        clients.push(tokio::spawn(run_client(
            plan,
            log.clone(),
            stop_clients.clone(),
        )));
        logs.push(log);
    }
    wait_for(
        "every client has connected",
        Duration::from_secs(15),
        || logs.iter().all(|log| lock(log).connections > 0),
    )
    .await;

    let publisher = EventStream::connect(
        target.pg_config.clone(),
        StreamConfig {
            require_auth: false,
            ..StreamConfig::default()
        },
    )
    .await
    .expect("start the publishing stream");
    let stop_writers = CancellationToken::new();
    let writers: Vec<_> = (0..WRITERS)
        .map(|index| {
            tokio::spawn(run_writer(
                index,
                target.pg_config.clone(),
                publisher.clone(),
                Xorshift::new(seed ^ ((index + 1) * 0x2545_f491)),
                stop_writers.clone(),
            ))
        })
        .collect();

    let faults = strike(fault, &target, &mut servers, writing).await;
    stop_writers.cancel();
    let mut outcome = WriterOutcome::default();
    for writer in writers {
        let finished = tokio::time::timeout(Duration::from_secs(90), writer)
            .await
            .expect("a writer stops in time")
            .expect("a writer does not panic");
        outcome.absorb(finished);
    }
    publisher.close().await;

    let truth = committed_events(&target.pg_config).await;
    let mut report = Report {
        fault: Some(fault),
        written: truth.events.len(),
        rolled_back: outcome.rolled_back.len(),
        uncertain: outcome.uncertain,
        faults,
        ..Report::default()
    };
    report.writer_mismatches = writer_mismatches(&truth, &outcome);

    // Wait until every client has the newest event it should see, or give up and count.
    let expectations: Vec<Vec<&Committed>> = CLIENT_FILTERS
        .iter()
        .map(|filter| truth.matching(*filter))
        .collect();
    wait_for("every client has caught up", CATCH_UP + writing, || {
        logs.iter().zip(&expectations).all(|(log, expected)| {
            expected
                .last()
                .is_none_or(|last| lock(log).highest >= Some(last.cursor))
        })
    })
    .await;
    stop_clients.cancel();
    for client in clients {
        tokio::time::timeout(Duration::from_secs(15), client)
            .await
            .expect("a client stops in time")
            .expect("a client does not panic");
    }

    for (log, expected) in logs.iter().zip(&expectations) {
        compare(expected, &lock(log), &truth, &mut report);
    }
    drop(servers);
    if let Some(cluster) = target.cluster {
        cluster.shutdown().await.expect("remove the cluster");
    }
    report
}

/// Lets the fault strike while the writers write; returns how many times it struck.
pub(crate) async fn strike(
    fault: Fault,
    target: &Target,
    servers: &mut Vec<ServeProcess>,
    writing: Duration,
) -> usize {
    let start = Instant::now();
    let end = start + writing;
    let mut struck = 0;
    match fault {
        Fault::KillListener => {
            let admin = connect(&target.pg_config)
                .await
                .expect("an admin connection");
            let mut next = start + Duration::from_millis(1500);
            while next < end {
                tokio::time::sleep_until(next).await;
                let killed: i64 = admin
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE datname = current_database() \
                           AND application_name = 'kavach-stream-listener'",
                        &[],
                    )
                    .await
                    .expect("terminate the listeners")
                    .get(0);
                struck += killed as usize;
                next += Duration::from_millis(1500);
            }
        }
        Fault::RestartPostgres => {
            let cluster = target.cluster.as_ref().expect("a cluster of its own");
            for third in 1..=2 {
                tokio::time::sleep_until(start + writing * third / 3).await;
                cluster.restart().await.expect("restart PostgreSQL");
                struck += 1;
            }
        }
        Fault::KillServe => {
            tokio::time::sleep_until(start + writing / 2).await;
            servers.remove(0).kill().await;
            struck += 1;
        }
        Fault::RandomReconnects => {}
    }
    tokio::time::sleep_until(end).await;
    struck
}

/// Polls `condition` every 20 ms until it holds or `limit` has passed; the caller counts what
/// is missing, so running out of time is not a panic here.
pub(crate) async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        if Instant::now() >= deadline {
            eprintln!("chaos: gave up waiting until {what} after {limit:?}");
            return;
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(20))).await;
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("no task panics while holding a log")
}
