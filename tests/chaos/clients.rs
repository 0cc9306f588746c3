//! The clients: each reads one SSE stream from a real server and, whenever the stream ends (the
//! server died, an `error` frame, silence, or a random disconnect), reconnects with the
//! `Last-Event-ID` of the last event it received, to the next server if its own refuses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kavach_stream::client::{SseItem, SseRequest};
use kavach_stream::Cursor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{lock, Xorshift, TOKEN};

/// What one client is to do.
pub(crate) struct ClientPlan {
    /// Servers in order of preference; a refused connection moves on to the next.
    pub(crate) servers: Vec<String>,
    pub(crate) filter: Option<&'static str>,
    pub(crate) random_disconnects: bool,
    pub(crate) random: Xorshift,
}

/// What one client received.
#[derive(Debug, Default)]
pub(crate) struct ClientLog {
    /// Event frames in arrival order: cursor and event id.
    pub(crate) received: Vec<(Cursor, String)>,
    /// The highest cursor received.
    pub(crate) highest: Option<Cursor>,
    /// Connections that got a 200.
    pub(crate) connections: usize,
    pub(crate) gaps: usize,
}

/// How long a connection may stay silent (heartbeats come every second) before the client
/// drops it and reconnects.
pub(crate) const SILENCE: Duration = Duration::from_secs(5);

/// One client until `stop`: connect with `Last-Event-ID`, read, and on any end reconnect.
pub(crate) async fn run_client(
    mut plan: ClientPlan,
    log: Arc<Mutex<ClientLog>>,
    stop: CancellationToken,
) {
    let query = plan
        .filter
        .map_or(String::new(), |types| format!("types={types}"));
    let mut server = 0;
    let mut last_event_id = "0-0".to_owned();
    while !stop.is_cancelled() {
        let url = format!("{}/api/kavach/events/stream?{query}", plan.servers[server]);
        let request = SseRequest::new(&url)
            .expect("a valid URL")
            .header("authorization", &format!("Bearer {TOKEN}"))
            .header("last-event-id", &last_event_id)
            .connect_timeout(Duration::from_secs(5));
        let sent = tokio::select! {
            _ = stop.cancelled() => return,
            sent = request.send() => sent,
        };
        match sent {
            Ok(mut response) if response.status() == 200 => {
                lock(&log).connections += 1;
                let disconnect_at = plan
                    .random_disconnects
                    .then(|| Instant::now() + Duration::from_millis(50 + plan.random.next(1000)));
                let read = read_until_end(&mut response, &log, &mut last_event_id, disconnect_at);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = read => {}
                }
            }
            // Refused (the server is gone) or not served: try the next server.
            _ => server = (server + 1) % plan.servers.len(),
        }

        // Do not hammer a server that just ended the stream (it may be restarting its database).
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Reads one connection until it ends, falls silent, or `disconnect_at` comes.
pub(crate) async fn read_until_end(
    response: &mut kavach_stream::client::SseResponse,
    log: &Mutex<ClientLog>,
    last_event_id: &mut String,
    disconnect_at: Option<Instant>,
) {
    let disconnect = async {
        match disconnect_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(disconnect);
    loop {
        let item = tokio::select! {
            _ = &mut disconnect => return,
            item = tokio::time::timeout(SILENCE, response.next()) => item,
        };
        let message = match item {
            Ok(Ok(Some(SseItem::Message(message)))) => message,
            Ok(Ok(Some(SseItem::Comment(_)))) => continue,
            _ => return,
        };
        let Some(id) = message.id else {
            if message.event == "gap" {
                lock(log).gaps += 1;
            }
            continue;
        };
        let cursor: Cursor = id.parse().expect("an event id is a cursor");
        let data: serde_json::Value =
            serde_json::from_str(&message.data).expect("event data is JSON");
        let event_id = data["id"].as_str().expect("an event id").to_owned();

        let mut log = lock(log);
        log.received.push((cursor, event_id));
        log.highest = log.highest.max(Some(cursor));
        *last_event_id = id;
    }
}
