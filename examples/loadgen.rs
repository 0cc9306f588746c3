//! The load generator: N SSE clients and K writers against `kavach-stream serve` (or nginx +
//! Nchan), with end-to-end latency, throughput, server CPU/RSS and a loss/duplicate/order check.
//!
//! ```sh
//! cargo build --release --example loadgen && cargo build --release
//! # spawn target/release/kavach-stream on a temporary PostgreSQL, 100 clients x 100 events/s:
//! target/release/examples/loadgen --connections 100 --rate 100 --duration 20
//! # attach to a running server instead:
//! target/release/examples/loadgen --url http://127.0.0.1:8080 --database-url "$DATABASE_URL" \
//!     --server-pid 1234 --token bench
//! # the CI smoke run: a few seconds, a few hundred clients, fails only on lost/dup/reordered
//! target/release/examples/loadgen --smoke
//! ```
//!
//! Modes (`--mode`): `fanout` (the default: clients subscribe, writers write at a fixed rate),
//! `connect` (open connections at a fixed rate, time to the `connected` frame), `catchup` (seed
//! events, then one client resumes from the start). `--target nchan` publishes by HTTP POST to an
//! Nchan publisher location and subscribes with EventSource to its subscriber location.
//!
//! Each delivered event carries its writer, its sequence number and its write-start time. Latency
//! is measured from the moment the writer's commit returned (`commit`) and from the moment the
//! write started (`start`, the definition of the Nchan anchors), to the moment a client parsed the
//! event. Every connection checks, per writer, that sequence numbers arrive without gaps,
//! duplicates or reordering, and that SSE cursors only grow; any violation exits non-zero.
//!
//! Limitations: writers and clients share one process and one clock (`Instant`), so one process
//! holds at most about 19,900 client sockets (the open-file limit here is 20,000). An event
//! delivered before its writer saw the commit acknowledgement counts as 0 µs commit latency.

#[path = "loadgen/clients.rs"]
mod clients;
#[path = "loadgen/report.rs"]
mod report;
#[path = "loadgen/sse.rs"]
mod sse;
#[path = "loadgen/target.rs"]
mod target;
#[path = "loadgen/writers.rs"]
mod writers;

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;

use clients::{ClientSpec, Stats};
use report::{Report, Summary};
use target::{ProcSample, Target};
use writers::{Ledger, WritePath};

/// Load generator for kavach-stream (and nginx + Nchan, for comparison).
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen")]
pub struct Options {
    /// What to measure.
    #[arg(long, value_enum, default_value = "fanout")]
    mode: Mode,

    /// Which server: kavach-stream, or nginx + Nchan (needs --url; see scripts/bench-vs-nchan.sh).
    #[arg(long, value_enum, default_value = "kavach")]
    target: TargetKind,

    /// Concurrent SSE connections.
    #[arg(long, short = 'n', default_value_t = 100)]
    connections: usize,

    /// Events written per second, all writers together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,

    /// Concurrent writers (each writes in order; each publish/INSERT is awaited).
    #[arg(long, short = 'k', default_value_t = 1)]
    writers: usize,

    /// How events are written: publish (Rust API, awaited), emit (Rust API, queued) or sql.
    #[arg(long, value_enum, default_value = "publish")]
    write_path: WritePath,

    /// Seconds of measured writing (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Seconds of writing before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,

    /// Seconds to wait, after writing stops, for every client to receive every event.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,

    /// Size of each event's `data` JSON object (Nchan: the message body), bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,

    /// Event types the writers use, writer i taking the (i mod len)-th.
    #[arg(long, value_delimiter = ',', default_value = "audit")]
    event_types: Vec<String>,

    /// Type filters for the clients, client i taking the (i mod len)-th; `all` means none.
    /// Separate the types of one filter with `+`, e.g. `--filter all --filter audit+agent.created`.
    #[arg(long = "filter")]
    filters: Vec<String>,

    /// Spread client connections over 127.0.0.1 .. 127.0.0.<sources>.
    #[arg(long, default_value_t = 4)]
    sources: u8,

    /// Clients connecting at once while opening.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,

    /// `connect` mode: new connections per second.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,

    /// `catchup` mode: events to seed before the client resumes.
    #[arg(long, default_value_t = 100_000)]
    catchup_events: u64,

    /// Attach to this server (e.g. http://127.0.0.1:8080) instead of spawning one.
    #[arg(long)]
    url: Option<String>,

    /// The database of the attached server (kavach target).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// PIDs of the attached server, sampled for CPU and RSS (repeatable: nginx workers).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,

    /// PID of the attached server's PostgreSQL postmaster; its backends are sampled too.
    #[arg(long)]
    db_pid: Option<u32>,

    /// Bearer token (spawned servers accept `bench`).
    #[arg(long, default_value = "bench")]
    token: String,

    /// The kavach-stream binary to spawn [default: the one built with this example, e.g.
    /// target/release/kavach-stream beside target/release/examples/loadgen].
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,

    /// Extra PostgreSQL settings for the spawned temporary cluster, `name=value`.
    #[arg(long = "pg-setting")]
    pg_settings: Vec<String>,

    /// Nchan: publisher path (POST), `{channel}` replaced by the run's channel.
    #[arg(long, default_value = "/pub?id={channel}")]
    nchan_pub: String,

    /// Nchan: subscriber path (EventSource).
    #[arg(long, default_value = "/sub/{channel}")]
    nchan_sub: String,

    /// A name for this run in the summary.
    #[arg(long, default_value = "run")]
    label: String,

    /// Print the summary as one JSON object instead of a text line.
    #[arg(long)]
    json: bool,

    /// The CI smoke run: 200 clients over 3 filters, 3 writers, 90 events/s for 3 s, through
    /// publish and SQL alike; fails only on lost, duplicated or reordered events.
    #[arg(long)]
    smoke: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Fanout,
    Connect,
    Catchup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    Kavach,
    Nchan,
}

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");

    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("loadgen: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the requested measurement(s); `Ok(false)` when a check failed.
async fn run(options: Options) -> anyhow::Result<bool> {
    if options.smoke {
        return run_smoke(options).await;
    }
    let target = Target::open(&options).await?;
    let outcome = measure(&options, &target).await;
    target.close().await;

    let report = outcome?;
    report.print(options.json);
    Ok(report.passed())
}

/// Two short fan-out runs (publish, then SQL with two writers) on one spawned server.
async fn run_smoke(mut options: Options) -> anyhow::Result<bool> {
    options.connections = 200;
    options.rate = 90.0;
    options.writers = 3;
    options.duration = 3.0;
    options.warmup = 0.5;
    options.event_types = vec![
        "audit".into(),
        "agent.created".into(),
        "anomaly.detected".into(),
    ];
    options.filters = vec![
        "all".into(),
        "audit".into(),
        "agent.created+anomaly.detected".into(),
    ];
    let target = Target::open(&options).await?;

    let mut passed = true;
    for path in [WritePath::Publish, WritePath::Sql] {
        options.write_path = path;
        options.label = format!("smoke-{path:?}").to_lowercase();
        let report = match measure(&options, &target).await {
            Ok(report) => report,
            Err(error) => {
                target.close().await;
                return Err(error);
            }
        };
        report.print(options.json);
        passed &= report.passed();
    }
    target.close().await;
    Ok(passed)
}

async fn measure(options: &Options, target: &Target) -> anyhow::Result<Report> {
    match options.mode {
        Mode::Fanout => fanout(options, target).await,
        Mode::Connect => connect_burst(options, target).await,
        Mode::Catchup => catchup(options, target).await,
    }
}

/// Clients subscribe, writers write at a fixed rate for warm-up + duration, clients drain.
async fn fanout(options: &Options, target: &Target) -> anyhow::Result<Report> {
    let epoch = Instant::now();
    let channel = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let ledger = Arc::new(Ledger::new(options, epoch));
    let stats = Arc::new(Stats::new(epoch, ledger.clone()));
    let stop = CancellationToken::new();

    // Subscribe everyone before the first write, so every event is owed to every client.
    let specs = client_specs(options, target, &channel)?;
    let before_clients = target.sample();
    let clients = clients::open_all(specs, stats.clone(), stop.clone(), options).await?;
    let after_clients = target.sample();

    let writers = writers::start(options, target, &channel, ledger.clone()).await?;
    let (window, samples) = measure_window(options, target, &stats).await;
    let written = writers.finish().await?;

    // Every client must now receive every event written to its types.
    let expected = clients.expected_total(&written);
    let drain = Duration::from_secs_f64(options.drain);
    let drained = stats.wait_for(expected, drain).await;
    stop.cancel();
    let outcomes = clients::collect(clients, &written).await;

    let summary = Summary {
        written: written.iter().sum(),
        drained,
        window,
        before_clients,
        after_clients,
        samples,
    };
    Ok(Report::fanout(options, &stats, &outcomes, summary))
}

/// Sleeps through warm-up and the measured window, sampling the server at both ends of the
/// window and every half second for peak RSS.
async fn measure_window(
    options: &Options,
    target: &Target,
    stats: &Stats,
) -> (Duration, Vec<ProcSample>) {
    tokio::time::sleep(Duration::from_secs_f64(options.warmup)).await;
    stats.open_window();
    let started = Instant::now();
    let mut samples = vec![target.sample()];

    let length = Duration::from_secs_f64(options.duration);
    while started.elapsed() < length {
        let left = length.saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
        samples.push(target.sample());
    }
    stats.close_window();
    (started.elapsed(), samples)
}

/// Opens `connections` at `connect_rate`, timing each to its `connected` frame.
async fn connect_burst(options: &Options, target: &Target) -> anyhow::Result<Report> {
    let epoch = Instant::now();
    let ledger = Arc::new(Ledger::new(options, epoch));
    let stats = Arc::new(Stats::new(epoch, ledger));
    let stop = CancellationToken::new();
    let specs = client_specs(options, target, "unused")?;

    let before_clients = target.sample();
    let started = Instant::now();
    let clients =
        clients::open_at_rate(specs, stats.clone(), stop.clone(), options.connect_rate).await;
    let window = started.elapsed();
    let after_clients = target.sample();

    stop.cancel();
    let outcomes = clients::collect(clients, &[]).await;
    let summary = Summary {
        written: 0,
        drained: true,
        window,
        before_clients,
        after_clients,
        samples: vec![before_clients, after_clients],
    };
    Ok(Report::connect(options, &stats, &outcomes, summary))
}

/// Seeds `catchup_events` by SQL, then one client resumes from the start and reads them all.
async fn catchup(options: &Options, target: &Target) -> anyhow::Result<Report> {
    let Target::Kavach { database, .. } = target else {
        bail!("catchup mode needs the kavach target");
    };
    let from = writers::seed(database, options).await?;

    let epoch = Instant::now();
    let ledger = Arc::new(Ledger::new(options, epoch));
    let stats = Arc::new(Stats::new(epoch, ledger));
    let mut spec = client_specs(options, target, "unused")?.remove(0);
    spec.last_event_id = Some(from);

    let before = target.sample();
    let started = Instant::now();
    let outcome = clients::read_catchup(spec, options.catchup_events, &stats).await?;
    let elapsed = started.elapsed();
    let after = target.sample();
    Ok(Report::catchup(options, outcome, elapsed, before, after))
}

/// One spec per connection: source address, type filter, URL.
fn client_specs(
    options: &Options,
    target: &Target,
    channel: &str,
) -> anyhow::Result<Vec<ClientSpec>> {
    let filters: Vec<Option<Vec<String>>> = if options.filters.is_empty() {
        vec![None]
    } else {
        options
            .filters
            .iter()
            .map(|filter| parse_filter(filter))
            .collect()
    };
    if options.target == TargetKind::Nchan && filters.iter().any(Option::is_some) {
        bail!("type filters apply to the kavach target only");
    }

    let sources = options.sources.max(1);
    (0..options.connections)
        .map(|index| {
            let source: IpAddr = format!("127.0.0.{}", 1 + (index % sources as usize))
                .parse()
                .context("a loopback source address")?;
            let filter = filters[index % filters.len()].clone();
            let url = target.subscribe_url(options, channel, filter.as_deref());
            Ok(ClientSpec {
                index,
                source,
                filter,
                url,
                last_event_id: None,
            })
        })
        .collect()
}

fn parse_filter(filter: &str) -> Option<Vec<String>> {
    (filter != "all").then(|| filter.split('+').map(str::to_owned).collect())
}
