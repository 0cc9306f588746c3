//! Operations endpoints: `GET /healthz` (is this instance able to deliver?) and `GET /metrics`
//! (Prometheus text). Both read the stream's counters; `/healthz` also asks the database.

use std::fmt::Write;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::stream::EventStream;

/// How long `/healthz` waits for the database.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// When `/healthz` reports trouble.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    /// How long the listener may be disconnected (reconnecting) before the instance is unhealthy.
    pub listener_grace: Duration,
    /// Notification queue usage (0 to 1) above which the instance is unhealthy.
    pub max_queue_usage: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            listener_grace: Duration::from_secs(5),
            max_queue_usage: 0.5,
        }
    }
}

#[derive(Clone)]
struct OpsState {
    stream: EventStream,
    policy: HealthPolicy,
}

/// A router with `/healthz` and `/metrics` for `stream`.
pub fn router(stream: EventStream, policy: HealthPolicy) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(OpsState { stream, policy })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: &'static str,
    reasons: Vec<String>,
    database: String,
    listener: ListenerHealth,
    notification_queue_usage: Option<f64>,
    connections: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListenerHealth {
    connected: bool,
    last_position: i64,
    reconnects: u64,
    down_seconds: Option<f64>,
}

async fn healthz(State(state): State<OpsState>) -> Response {
    let metrics = state.stream.metrics();
    let mut reasons = Vec::new();

    let queue_usage = match tokio::time::timeout(DATABASE_TIMEOUT, queue_usage(&state.stream)).await
    {
        Ok(Ok(usage)) => Some(usage),
        Ok(Err(error)) => {
            reasons.push(format!("database unreachable: {error}"));
            None
        }
        Err(_) => {
            reasons.push("database did not answer within 2 s".to_owned());
            None
        }
    };
    let down_seconds = metrics.listener_down_seconds;
    match down_seconds {
        // A short reconnect is a blip, not an outage.
        Some(down) if down > state.policy.listener_grace.as_secs_f64() => {
            reasons.push(format!("listener disconnected for {down:.1} s"));
        }
        None if !metrics.listener_connected => {
            reasons.push("listener not connected yet".to_owned())
        }
        _ => {}
    }
    if queue_usage.is_some_and(|usage| usage > state.policy.max_queue_usage) {
        reasons.push(
            "notification queue more than half full: a session is LISTENing without reading"
                .to_owned(),
        );
    }

    let health = Health {
        status: if reasons.is_empty() {
            "ok"
        } else {
            "unhealthy"
        },
        database: if queue_usage.is_some() {
            "ok".to_owned()
        } else {
            "unreachable".to_owned()
        },
        reasons,
        listener: ListenerHealth {
            connected: metrics.listener_connected,
            last_position: metrics.listener_last_position,
            reconnects: metrics.listener_reconnects,
            down_seconds,
        },
        notification_queue_usage: queue_usage,
        connections: state.stream.connection_count(),
    };
    let status = if health.reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

async fn queue_usage(stream: &EventStream) -> Result<f64, crate::Error> {
    let client = stream.pool().get().await?;
    let row = client
        .query_one("SELECT pg_notification_queue_usage()", &[])
        .await?;
    Ok(row.get(0))
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let text = prometheus_text(&state.stream);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The counters in the Prometheus text exposition format.
pub fn prometheus_text(stream: &EventStream) -> String {
    let m = stream.metrics();
    let samples: [(&str, &str, &str, f64); 17] = [
        (
            "kavach_stream_connections",
            "gauge",
            "Open SSE connections, including those authenticating.",
            stream.connection_count() as f64,
        ),
        (
            "kavach_stream_connections_opened_total",
            "counter",
            "SSE connections accepted.",
            m.connections_opened as f64,
        ),
        (
            "kavach_stream_connections_refused_total",
            "counter",
            "SSE connections refused by the connection limit.",
            m.connections_refused as f64,
        ),
        (
            "kavach_stream_lagging_connections",
            "gauge",
            "Connections reading the table because they fell behind the hub.",
            m.lagging_connections as f64,
        ),
        (
            "kavach_stream_events_delivered_total",
            "counter",
            "Event frames written to connections.",
            m.events_delivered as f64,
        ),
        (
            "kavach_stream_events_queued_total",
            "counter",
            "Events accepted by emit or publish.",
            m.events_queued as f64,
        ),
        (
            "kavach_stream_events_refused_total",
            "counter",
            "Events emit refused (queue full, closed, malformed).",
            m.events_refused as f64,
        ),
        (
            "kavach_stream_events_stored_total",
            "counter",
            "Events the background writer committed.",
            m.events_stored as f64,
        ),
        (
            "kavach_stream_events_dropped_total",
            "counter",
            "Events the background writer gave up on.",
            m.events_dropped as f64,
        ),
        (
            "kavach_stream_write_retries_total",
            "counter",
            "Batch writes retried after a failure.",
            m.write_retries as f64,
        ),
        (
            "kavach_stream_batch_write_seconds_sum",
            "counter",
            "Time spent writing batches.",
            m.batch_write_micros as f64 / 1e6,
        ),
        (
            "kavach_stream_batch_write_seconds_count",
            "counter",
            "Batches written.",
            m.batches_written as f64,
        ),
        (
            "kavach_stream_listener_connected",
            "gauge",
            "1 when the LISTEN connection is up.",
            f64::from(u8::from(m.listener_connected)),
        ),
        (
            "kavach_stream_listener_reconnects_total",
            "counter",
            "Times the listener reconnected.",
            m.listener_reconnects as f64,
        ),
        (
            "kavach_stream_listener_last_position",
            "gauge",
            "The last position the listener published.",
            m.listener_last_position as f64,
        ),
        (
            "kavach_stream_listener_down_seconds",
            "gauge",
            "Seconds the listener has been disconnected (0 when up).",
            m.listener_down_seconds.unwrap_or(0.0),
        ),
        (
            "kavach_stream_hub_head_position",
            "gauge",
            "The position of the newest event in the hub.",
            stream.head().position as f64,
        ),
    ];

    let mut text = String::new();
    for (name, kind, help, value) in samples {
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    text
}
