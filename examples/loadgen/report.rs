//! The load generator's results: one summary line per run (or one JSON object with `--json`),
//! and whether the run passed its checks.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::clients::{Outcome, Stats};
use crate::target::ProcSample;
use crate::{Mode, Options};

const MIB: f64 = 1024.0 * 1024.0;

/// What a fan-out or connect run measured besides the clients' own counts.
pub struct Summary {
    /// Events written, all writers.
    pub written: u64,
    /// Whether every client received every event before the drain timeout.
    pub drained: bool,
    /// Length of the measured window.
    pub window: Duration,
    /// The server before any client connected.
    pub before_clients: ProcSample,
    /// The server once every client was connected.
    pub after_clients: ProcSample,
    /// The server during the window, first and last at its ends.
    pub samples: Vec<ProcSample>,
}

/// A finished run.
pub struct Report {
    fields: Map<String, Value>,
    failures: Vec<String>,
}

impl Report {
    pub fn fanout(
        options: &Options,
        stats: &Stats,
        outcomes: &[Outcome],
        summary: Summary,
    ) -> Self {
        let mut report = Report::new(options, outcomes);
        let histograms = stats.histograms();
        let delivered = stats.in_window.load(std::sync::atomic::Ordering::Relaxed);
        let seconds = summary.window.as_secs_f64();

        report.set("written", json!(summary.written));
        let writing = options.warmup + options.duration;
        report.set(
            "written_per_s",
            json!(round(summary.written as f64 / writing, 0)),
        );
        report.set("deliveries", json!(delivered));
        report.set(
            "deliveries_per_s",
            json!(round(delivered as f64 / seconds, 0)),
        );
        report.latencies("commit", &histograms.commit);
        report.latencies("start", &histograms.start);
        report.server(&summary, delivered, options.connections);
        if !summary.drained {
            report
                .failures
                .push("not every event reached every client before the drain timeout".into());
        }
        report
    }

    pub fn connect(
        options: &Options,
        stats: &Stats,
        outcomes: &[Outcome],
        summary: Summary,
    ) -> Self {
        let mut report = Report::new(options, outcomes);
        let histograms = stats.histograms();
        let seconds = summary.window.as_secs_f64();

        report.set(
            "connects_per_s",
            json!(round(options.connections as f64 / seconds, 0)),
        );
        report.latencies("connect", &histograms.connect);
        report.server(&summary, 0, options.connections);
        report
    }

    pub fn catchup(
        options: &Options,
        outcome: Outcome,
        elapsed: Duration,
        before: ProcSample,
        after: ProcSample,
    ) -> Self {
        let received = outcome.received;
        let mut report = Report::new(options, &[outcome]);
        let seconds = elapsed.as_secs_f64();

        report.set("received", json!(received));
        report.set("seconds", json!(round(seconds, 3)));
        report.set("events_per_s", json!(round(received as f64 / seconds, 0)));
        let cpu = after.server_cpu - before.server_cpu;
        report.set(
            "server_cpu_us_per_event",
            json!(round(cpu * 1e6 / received.max(1) as f64, 2)),
        );
        report.set("db_cpu_s", json!(round(after.db_cpu - before.db_cpu, 2)));
        report
    }

    fn new(options: &Options, outcomes: &[Outcome]) -> Self {
        let mut report = Report {
            fields: Map::new(),
            failures: Vec::new(),
        };
        report.set("label", json!(options.label));
        report.set(
            "target",
            json!(format!("{:?}", options.target).to_lowercase()),
        );
        report.set("mode", json!(format!("{:?}", options.mode).to_lowercase()));
        if options.mode == Mode::Fanout {
            report.set(
                "write_path",
                json!(format!("{:?}", options.write_path).to_lowercase()),
            );
            report.set("writers", json!(options.writers));
            report.set("rate", json!(options.rate));
        }
        report.set("connections", json!(options.connections));
        report.checks(outcomes);
        report
    }

    fn set(&mut self, key: &str, value: Value) {
        self.fields.insert(key.to_owned(), value);
    }

    /// Sums the clients' checks; any loss, duplicate, reordering or error fails the run.
    fn checks(&mut self, outcomes: &[Outcome]) {
        let sum = |count: fn(&Outcome) -> u64| outcomes.iter().map(count).sum::<u64>();
        let (lost, duplicates, reordered) =
            (sum(|o| o.lost), sum(|o| o.duplicates), sum(|o| o.reordered));
        let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();

        self.set("lost", json!(lost));
        self.set("duplicated", json!(duplicates));
        self.set("reordered", json!(reordered));
        self.set("client_errors", json!(errors.len()));
        for (count, what) in [
            (lost, "lost"),
            (duplicates, "duplicated"),
            (reordered, "reordered"),
        ] {
            if count > 0 {
                self.failures.push(format!("{count} events {what}"));
            }
        }
        if let Some(first) = errors.first() {
            self.failures
                .push(format!("{} clients failed, first: {first}", errors.len()));
        }
    }

    /// p50/p99/p99.9/max in milliseconds.
    fn latencies(&mut self, name: &str, histogram: &Histogram<u64>) {
        if histogram.is_empty() {
            return;
        }
        let ms = |us: u64| round(us as f64 / 1000.0, 3);
        self.set(
            &format!("{name}_p50_ms"),
            json!(ms(histogram.value_at_quantile(0.5))),
        );
        self.set(
            &format!("{name}_p99_ms"),
            json!(ms(histogram.value_at_quantile(0.99))),
        );
        self.set(
            &format!("{name}_p999_ms"),
            json!(ms(histogram.value_at_quantile(0.999))),
        );
        self.set(&format!("{name}_max_ms"), json!(ms(histogram.max())));
    }

    /// Server and database CPU over the window, per delivery, and RSS.
    fn server(&mut self, summary: &Summary, delivered: u64, connections: usize) {
        let (Some(first), Some(last)) = (summary.samples.first(), summary.samples.last()) else {
            return;
        };
        let seconds = last.at.duration_since(first.at).as_secs_f64().max(1e-9);
        let cpu = last.server_cpu - first.server_cpu;
        let db_cpu = last.db_cpu - first.db_cpu;
        let peak = summary
            .samples
            .iter()
            .map(|s| s.server_rss)
            .max()
            .unwrap_or(0);
        let per_connection =
            summary.after_clients.server_rss as f64 - summary.before_clients.server_rss as f64;

        self.set("server_cpu_pct", json!(round(cpu * 100.0 / seconds, 1)));
        self.set("db_cpu_pct", json!(round(db_cpu * 100.0 / seconds, 1)));
        if delivered > 0 {
            let us = |cpu: f64| round(cpu * 1e6 / delivered as f64, 2);
            self.set("server_cpu_us_per_delivery", json!(us(cpu)));
            self.set("db_cpu_us_per_delivery", json!(us(db_cpu)));
        }
        self.set(
            "rss_idle_mib",
            json!(round(summary.before_clients.server_rss as f64 / MIB, 1)),
        );
        self.set("rss_peak_mib", json!(round(peak as f64 / MIB, 1)));
        self.set(
            "rss_kib_per_connection",
            json!(round(
                per_connection / 1024.0 / connections.max(1) as f64,
                2
            )),
        );
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Prints the summary: `key=value ...` or JSON, then the verdict.
    pub fn print(&self, as_json: bool) {
        let mut fields = self.fields.clone();
        fields.insert("passed".into(), json!(self.passed()));
        fields.insert("failures".into(), json!(self.failures));
        if as_json {
            println!("{}", Value::Object(fields));
            return;
        }
        let line: Vec<String> = self
            .fields
            .iter()
            .map(|(key, value)| format!("{key}={}", value.to_string().trim_matches('"')))
            .collect();
        let verdict = if self.passed() {
            "PASS".to_owned()
        } else {
            format!("FAIL: {}", self.failures.join("; "))
        };
        println!("{} {verdict}", line.join(" "));
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}
