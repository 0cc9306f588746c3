//! The server under load: a spawned `kavach-stream serve` on a temporary PostgreSQL, an attached
//! kavach-stream, or an attached nginx + Nchan; and its CPU and RSS, read from `/proc/<pid>`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kavach_stream::embedded::{TempPostgres, TempPostgresOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{Options, TargetKind};

/// How long a spawned server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the spawned server's log goes.
const SERVER_LOG: &str = "target/loadgen-server.log";

/// A server to load.
pub enum Target {
    /// kavach-stream, spawned or attached.
    Kavach {
        /// `http://host:port`.
        base: String,
        /// The database, as a URL or key=value string.
        database: String,
        /// Sampled for CPU and RSS.
        pids: Vec<u32>,
        /// The postmaster; it and its backends are sampled for CPU.
        db_pid: Option<u32>,
        /// What to stop at the end when we started it.
        spawned: Option<Box<Spawned>>,
    },
    /// nginx + Nchan, attached.
    Nchan {
        /// `http://host:port`.
        base: String,
        /// nginx processes, sampled for CPU and RSS.
        pids: Vec<u32>,
    },
}

/// A server and database this run started.
pub struct Spawned {
    server: Child,
    postgres: TempPostgres,
}

/// One reading of the server's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// CPU seconds (user + system) of the server processes.
    pub server_cpu: f64,
    /// Resident bytes of the server processes.
    pub server_rss: u64,
    /// CPU seconds of PostgreSQL (postmaster and backends), when known.
    pub db_cpu: f64,
}

impl Target {
    /// Attaches to `--url`, or spawns kavach-stream on a temporary PostgreSQL.
    pub async fn open(options: &Options) -> anyhow::Result<Target> {
        let base = options
            .url
            .as_ref()
            .map(|url| url.trim_end_matches('/').to_owned());
        match (options.target, base) {
            (TargetKind::Nchan, Some(base)) => Ok(Target::Nchan {
                base,
                pids: options.server_pids.clone(),
            }),
            (TargetKind::Nchan, None) => bail!("--target nchan needs --url"),
            (TargetKind::Kavach, Some(base)) => Ok(Target::Kavach {
                base,
                database: options
                    .database_url
                    .clone()
                    .context("attaching to kavach-stream needs --database-url")?,
                pids: options.server_pids.clone(),
                db_pid: options.db_pid,
                spawned: None,
            }),
            (TargetKind::Kavach, None) => spawn(options).await,
        }
    }

    /// The SSE URL a client subscribes to.
    pub fn subscribe_url(
        &self,
        options: &Options,
        channel: &str,
        filter: Option<&[String]>,
    ) -> String {
        match self {
            Target::Kavach { base, .. } => {
                let types =
                    filter.map_or(String::new(), |types| format!("?types={}", types.join(",")));
                format!("{base}/api/kavach/events/stream{types}")
            }
            Target::Nchan { base, .. } => {
                format!("{base}{}", options.nchan_sub.replace("{channel}", channel))
            }
        }
    }

    /// The Nchan publisher URL.
    pub fn publish_url(&self, options: &Options, channel: &str) -> Option<String> {
        match self {
            Target::Nchan { base, .. } => Some(format!(
                "{base}{}",
                options.nchan_pub.replace("{channel}", channel)
            )),
            Target::Kavach { .. } => None,
        }
    }

    /// Reads the server's CPU and RSS now.
    pub fn sample(&self) -> ProcSample {
        let (pids, db_pid) = match self {
            Target::Kavach { pids, db_pid, .. } => (pids, *db_pid),
            Target::Nchan { pids, .. } => (pids, None),
        };
        let db_cpu = db_pid.map_or(0.0, |pid| {
            let mut tree = children_of(pid);
            tree.push(pid);
            tree.iter().map(|&pid| cpu_seconds(pid)).sum()
        });
        ProcSample {
            at: Instant::now(),
            server_cpu: pids.iter().map(|&pid| cpu_seconds(pid)).sum(),
            server_rss: pids.iter().map(|&pid| rss_bytes(pid)).sum(),
            db_cpu,
        }
    }

    /// Stops what this run started.
    pub async fn close(&self) {
        let Target::Kavach {
            spawned: Some(spawned),
            ..
        } = self
        else {
            return;
        };
        if let Some(pid) = spawned.server.id() {
            // SIGTERM: the server ends its streams and exits by itself.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        let _ = spawned.postgres.stop().await;
    }
}

/// Starts a temporary PostgreSQL and `kavach-stream serve` on it, port chosen by the OS.
async fn spawn(options: &Options) -> anyhow::Result<Target> {
    let settings = options
        .pg_settings
        .iter()
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .context("--pg-setting takes name=value")?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let postgres = TempPostgres::start(TempPostgresOptions { settings })
        .await
        .context("starting a temporary PostgreSQL")?;
    let database = postgres.connection_string();
    let db_pid = postmaster_of(&postgres.socket_dir().to_string_lossy());

    let log = std::fs::File::create(SERVER_LOG).context("creating the server log")?;
    let binary = server_binary(options)?;
    let mut server = Command::new(&binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--token", "bench=bench"])
        .arg("--max-connections")
        .arg((options.connections + 1000).to_string())
        .arg("--database-url")
        .arg(&database)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {} (cargo build first?)", binary.display()))?;

    let stdout = server.stdout.take().expect("stdout is piped");
    let base = tokio::time::timeout(START_TIMEOUT, listening_address(stdout))
        .await
        .context("the server did not print its address within 60 s")??;
    let pid = server.id().context("the server exited at once")?;
    Ok(Target::Kavach {
        base,
        database,
        pids: vec![pid],
        db_pid,
        spawned: Some(Box::new(Spawned { server, postgres })),
    })
}

/// `--server-bin`, or the `kavach-stream` of the same profile as this example.
fn server_binary(options: &Options) -> anyhow::Result<std::path::PathBuf> {
    if let Some(binary) = &options.server_bin {
        return Ok(binary.clone());
    }
    let exe = std::env::current_exe().context("locating the load generator")?;
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .context("the load generator is not in target/<profile>/examples")?;
    Ok(profile_dir.join("kavach-stream"))
}

/// Reads stdout until `kavach-stream listening on http://ADDR`.
async fn listening_address(stdout: tokio::process::ChildStdout) -> anyhow::Result<String> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix("kavach-stream listening on ") {
            return Ok(url.trim().to_owned());
        }
    }
    bail!("the server exited before listening; see {SERVER_LOG}")
}

/// The postmaster whose command line names `dir` (its data directory lies inside it); not the
/// shell that supervises it, whose arguments name it too.
fn postmaster_of(dir: &str) -> Option<u32> {
    all_pids().into_iter().find(|&pid| {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let mut arguments = cmdline.split('\0');
        let program = arguments.next().unwrap_or("");
        program.ends_with("/postgres") && arguments.any(|argument| argument.starts_with(dir))
    })
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

fn children_of(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            stat_fields(pid).and_then(|fields| fields.get(1)?.parse().ok()) == Some(parent)
        })
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU seconds; 0 when the process is gone.
fn cpu_seconds(pid: u32) -> f64 {
    // Linux reports in USER_HZ, which is 100 on every architecture we run on.
    const TICKS_PER_SECOND: f64 = 100.0;
    let Some(fields) = stat_fields(pid) else {
        return 0.0;
    };
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
