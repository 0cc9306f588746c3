//! Retention: a background task that prunes events older than the retention period, oldest
//! transactions first, in small batches, so it never holds long locks or blocks writers. A client
//! whose cursor predates what is retained gets the in-band `gap` event (see `connection`).

use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{self, Pruned};

/// Transactions removed per statement.
const BATCH: i64 = 500;

pub(crate) struct Pruner {
    pub pool: Pool,
    pub retention: Duration,
    pub interval: Duration,
    pub shutdown: CancellationToken,
}

impl Pruner {
    /// Prunes every `interval` until shutdown.
    pub async fn run(self) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            match prune_expired(&self.pool, self.retention).await {
                Ok(pruned) if pruned.events > 0 => {
                    info!(
                        events = pruned.events,
                        through = pruned.through,
                        "pruned events past retention"
                    );
                }
                Ok(_) => {}
                Err(error) => warn!(error = %error, "pruning failed; retrying next interval"),
            }
        }
    }
}

/// Removes everything committed longer than `retention` ago, a batch at a time.
pub(crate) async fn prune_expired(
    pool: &Pool,
    retention: Duration,
) -> Result<Pruned, crate::Error> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let cutoff = Utc::now()
        .checked_sub_signed(retention)
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let mut client = pool.get().await?;

    let mut total = Pruned::default();
    loop {
        let pruned = store::prune(&mut client, cutoff, BATCH).await?;
        total.transactions += pruned.transactions;
        total.events += pruned.events;
        total.through = total.through.max(pruned.through);
        if pruned.transactions < BATCH {
            return Ok(total);
        }
    }
}
