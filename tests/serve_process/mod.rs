//! The real `kavach-stream serve` binary as a child process, for the fault and load tests: start
//! it on a free port of 127.0.0.1 against a given database, read its `/metrics` and its resident
//! memory, and stop it gracefully or with SIGKILL.

#![allow(dead_code)] // Each test binary uses a different part of this helper.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_kavach-stream");

/// How long the server may take to print where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `serve` process.
pub struct ServeProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The process id, for `/proc/<pid>/status`.
    pub pid: u32,
}

impl ServeProcess {
    /// Starts `serve --listen 127.0.0.1:0` on `database_url` with `args`, and waits for its
    /// "listening on" line. Logs go to stderr of the test only when `KAVACH_TEST_LOGS` is set.
    pub async fn start(database_url: &str, args: &[&str]) -> ServeProcess {
        let mut command = Command::new(BINARY);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("DATABASE_URL", database_url)
            .env_remove("KAVACH_TOKENS")
            .env_remove("KAVACH_MAX_CONNECTIONS")
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("KAVACH_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn kavach-stream serve");
        let pid = child.id().expect("a running child has an id");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();

        let base_url = loop {
            let line = tokio::time::timeout(START_TIMEOUT, stdout.next_line())
                .await
                .expect("serve starts in time")
                .expect("readable stdout")
                .expect("serve prints where it listens");
            if let Some(address) = line.strip_prefix("kavach-stream listening on ") {
                break address.to_owned();
            }
        };
        // Keep draining stdout so the child can never block on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

        ServeProcess {
            child,
            base_url,
            pid,
        }
    }

    /// The stream URL with a query string (without the `?`).
    pub fn stream_url(&self, query: &str) -> String {
        format!("{}/api/kavach/events/stream?{query}", self.base_url)
    }

    /// The value of one sample of `/metrics`, e.g. `kavach_stream_connections`.
    pub async fn metric(&self, name: &str) -> f64 {
        let answer = crate::common::raw_get(&self.base_url, "/metrics").await;
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (sample, value) = line.split_once(' ')?;
                (sample == name)
                    .then(|| value.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("/metrics has no sample {name}: {body}"))
    }

    /// Resident memory of the process in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("the process is alive");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Kills the process with SIGKILL (no shutdown, no flush) and reaps it.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("send SIGKILL");
        tokio::time::timeout(START_TIMEOUT, self.child.wait())
            .await
            .expect("a killed process exits at once")
            .expect("wait for the killed process");
    }
}
