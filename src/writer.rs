//! The background writer behind `emit` and `publish`: it takes events from a bounded queue and
//! stores them many rows per INSERT, one transaction per batch.
//!
//! Persisting is never fire-and-forget. A failed batch is retried with capped backoff; a batch the
//! database refuses (a constraint) is retried one event at a time so only the bad event is dropped;
//! every drop is counted and logged. An event whose id is already stored (a retry after a commit
//! whose acknowledgement was lost) counts as stored, so a retry never duplicates. Delivery is not
//! the writer's concern: clients get an event from the listener once it is committed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::error::PublishError;
use crate::event::{Cursor, NewEvent};
use crate::metrics::Metrics;
use crate::store;

/// Attempts at one batch before the writer gives up on it (about a minute with the backoff cap).
const MAX_ATTEMPTS: u32 = 16;

/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One queued event, and who waits for it.
pub(crate) struct Job {
    pub event: NewEvent,
    /// Set by `publish`, which waits for the event's cursor; `emit` does not wait.
    pub reply: Option<oneshot::Sender<Result<Cursor, PublishError>>>,
}

/// Why one attempt at a batch failed.
enum Failure {
    /// The database refused the data; retrying the same batch cannot help.
    Rejected(String),
    /// Anything else: a broken connection, a restart, a pool timeout.
    Transient(String),
}

pub(crate) struct Writer {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    pub batch_size: usize,
    pub shutdown: CancellationToken,
}

impl Writer {
    /// Stores queued events until shutdown, then flushes what is queued and returns.
    pub async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let received = tokio::select! {
                received = jobs.recv_many(&mut batch, self.batch_size) => received,
                _ = self.shutdown.cancelled() => {
                    // Refuse new events, then drain the queue below until it is empty.
                    jobs.close();
                    jobs.recv_many(&mut batch, self.batch_size).await
                }
            };
            if received == 0 {
                return;
            }
            self.store_batch(std::mem::take(&mut batch)).await;
        }
    }

    /// Stores one batch, retrying as the failure allows, and answers every publisher in it.
    async fn store_batch(&self, batch: Vec<Job>) {
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=MAX_ATTEMPTS {
            let failure = match self.try_store(&batch).await {
                Ok(cursors) => return self.finish(batch, cursors),
                Err(failure) => failure,
            };

            match failure {
                Failure::Rejected(_) if batch.len() > 1 => {
                    return self.store_one_by_one(batch).await
                }
                Failure::Rejected(reason) => {
                    return self.give_up(batch, PublishError::Rejected(reason))
                }
                Failure::Transient(reason) if attempt == MAX_ATTEMPTS => {
                    return self.give_up(batch, PublishError::Failed(reason));
                }
                Failure::Transient(reason) => {
                    self.metrics.write_retries.fetch_add(1, Relaxed);
                    warn!(events = batch.len(), attempt, error = %reason, "storing a batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Stores each event of a refused batch on its own, so only the bad ones are dropped.
    async fn store_one_by_one(&self, batch: Vec<Job>) {
        for job in batch {
            Box::pin(self.store_batch(vec![job])).await;
        }
    }

    /// One attempt: insert the batch in a transaction, commit, and learn the cursors.
    async fn try_store(&self, batch: &[Job]) -> Result<Vec<Cursor>, Failure> {
        let started = Instant::now();
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|error| Failure::Transient(error.to_string()))?;
        let events: Vec<&NewEvent> = batch.iter().map(|job| &job.event).collect();

        let transaction = client.transaction().await.map_err(classify)?;
        let statement = transaction
            .prepare_cached(store::INSERT_EVENTS)
            .await
            .map_err(classify)?;
        let inserted = store::insert_events(&*transaction, &statement, &events).await;
        let inserted = match inserted {
            Err(error) if is_duplicate_id(&error) && batch.len() == 1 => {
                drop(transaction);
                return self.already_stored(&client, &batch[0].event).await;
            }
            other => other.map_err(classify)?,
        };
        transaction.commit().await.map_err(classify)?;

        self.metrics.batches_written.fetch_add(1, Relaxed);
        self.metrics
            .batch_write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);

        // Positions exist only after commit; look one up only when somebody waits for it.
        let position = match (
            batch.iter().any(|job| job.reply.is_some()),
            inserted.first(),
        ) {
            (true, Some(row)) => store::position_of_transaction(&**client, &row.xid)
                .await
                .map_err(classify)?
                .unwrap_or(0),
            _ => 0,
        };
        Ok(inserted
            .iter()
            .map(|row| Cursor::new(position, row.seq))
            .collect())
    }

    /// The cursor of an event a previous attempt stored after all.
    async fn already_stored(
        &self,
        client: &deadpool_postgres::Client,
        event: &NewEvent,
    ) -> Result<Vec<Cursor>, Failure> {
        let cursor = store::cursor_of(&***client, event.id)
            .await
            .map_err(classify)?;
        debug!(event_id = %event.id, "event was already stored by an earlier attempt");
        match cursor {
            Some(cursor) => Ok(vec![cursor]),
            None => Err(Failure::Rejected(format!(
                "an event with id {} exists but is not committed",
                event.id
            ))),
        }
    }

    fn finish(&self, batch: Vec<Job>, cursors: Vec<Cursor>) {
        self.metrics
            .events_stored
            .fetch_add(batch.len() as u64, Relaxed);
        for (job, cursor) in batch.into_iter().zip(cursors) {
            if let Some(reply) = job.reply {
                // The publisher may have stopped waiting; the event is stored either way.
                let _ = reply.send(Ok(cursor));
            }
        }
    }

    fn give_up(&self, batch: Vec<Job>, reason: PublishError) {
        self.metrics
            .events_dropped
            .fetch_add(batch.len() as u64, Relaxed);
        for job in batch {
            error!(event_id = %job.event.id, event_type = %job.event.event_type, error = %reason, "event dropped: it could not be stored");
            if let Some(reply) = job.reply {
                let _ = reply.send(Err(reason.clone()));
            }
        }
    }
}

/// Data errors (class 22) and constraint violations (class 23) are the batch's fault; anything
/// else may heal.
fn classify(error: tokio_postgres::Error) -> Failure {
    let refused = error
        .code()
        .is_some_and(|code| code.code().starts_with("22") || code.code().starts_with("23"));
    let reason = error
        .as_db_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_owned());
    if refused {
        Failure::Rejected(reason)
    } else {
        Failure::Transient(reason)
    }
}

fn is_duplicate_id(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && error
            .as_db_error()
            .and_then(|db| db.constraint())
            .is_some_and(|constraint| constraint == "kavach_stream_events_id_unique")
}
