//! The listener: one dedicated connection per instance that LISTENs for the commit doorbell, reads
//! the new rows by position and publishes them to the hub.
//!
//! The connection lives outside the pool (pooled connections discard notifications) and runs in
//! autocommit, so it is never idle in a transaction. A doorbell carries no event: it only says
//! "something committed", so a lost doorbell costs nothing. After every (re)connect the listener
//! LISTENs first and then catches up from its last position, and a slow safety timer reads the
//! table even when no doorbell rings.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::event::Cursor;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store;

/// The NOTIFY channel the commit trigger rings.
pub const CHANNEL: &str = "kavach_stream";

/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the listener needs, bundled so the loop reads plainly.
pub(crate) struct Listener {
    pub pg_config: tokio_postgres::Config,
    pub hub: Arc<Hub>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub read_batch_size: i64,
    pub safety_poll_interval: Duration,
    pub shutdown: CancellationToken,
}

impl Listener {
    /// Runs until shutdown, publishing every event committed after `after`.
    pub async fn run(self, mut after: Cursor) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let outcome = self.listen_once(&mut after, &mut backoff).await;
            if self.shutdown.is_cancelled() {
                return;
            }
            let error = match outcome {
                Ok(()) => return,
                Err(error) => error,
            };

            self.metrics.listener.set_disconnected();
            self.metrics.listener.reconnects.fetch_add(1, Relaxed);
            warn!(error = %format!("{error:#}"), position = after.position, retry_in_ms = backoff.as_millis() as u64, "listener connection lost; reconnecting");

            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: connect, LISTEN, catch up, then read on every doorbell until the
    /// connection fails (an error) or shutdown (`Ok`).
    async fn listen_once(&self, after: &mut Cursor, backoff: &mut Duration) -> anyhow::Result<()> {
        let (client, mut connection) = self.pg_config.connect(NoTls).await?;

        // Drive the connection on its own task, turning each notification into a doorbell ring.
        let doorbell = Arc::new(Notify::new());
        let ring = doorbell.clone();
        let mut driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => ring.notify_one(),
                    Ok(_) => {}
                    Err(error) => return anyhow::Error::new(error),
                }
            }
            anyhow::anyhow!("the server closed the listener connection")
        });
        let _abort_driver = AbortOnDrop(driver.abort_handle());

        // LISTEN before reading, so a commit between the two still rings.
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        let read_after = client.prepare(store::READ_AFTER).await?;
        self.metrics.listener.set_connected();
        *backoff = Duration::from_millis(50);
        info!(position = after.position, "listener connected");

        loop {
            self.catch_up(&client, &read_after, after).await?;

            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = doorbell.notified() => {}
                _ = tokio::time::sleep(self.safety_poll_interval) => {}
                ended = &mut driver => {
                    return Err(ended.unwrap_or_else(|_| anyhow::anyhow!("the listener connection task ended")));
                }
            }
        }
    }

    /// Reads and publishes everything committed after `after`, a batch at a time.
    async fn catch_up(
        &self,
        client: &tokio_postgres::Client,
        read_after: &tokio_postgres::Statement,
        after: &mut Cursor,
    ) -> Result<(), tokio_postgres::Error> {
        loop {
            let events =
                store::read_after(client, read_after, *after, self.read_batch_size).await?;
            let Some(last) = events.last() else {
                return Ok(());
            };

            let full_batch = events.len() as i64 == self.read_batch_size;
            *after = last.cursor;
            self.metrics
                .listener
                .last_position
                .store(after.position, Relaxed);
            debug!(
                count = events.len(),
                position = after.position,
                "listener read events"
            );
            // Revoked subscribers lose their streams on every instance, since every instance reads
            // the same rows.
            let revoked: Vec<String> = events
                .iter()
                .filter(|event| event.event_type.as_str() == "agent.revoked")
                .filter_map(|event| event.agent_id.clone())
                .collect();
            self.hub.publish(events);
            for subscriber in revoked {
                let closed = self.registry.revoke(&subscriber);
                if closed > 0 {
                    info!(subscriber = %subscriber, connections = closed, "closed the streams of a revoked subscriber");
                }
            }

            if !full_batch {
                return Ok(());
            }
        }
    }
}

/// Aborts a task when dropped, so the connection driver never outlives its listener cycle.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
