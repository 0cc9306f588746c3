//! The writers: transactions through `publish`, `emit_in` and plain SQL, with a `pg_sleep` inside
//! each and about one in five rolled back, each remembering which of its events were
//! acknowledged, rolled back, or left uncertain by a broken connection.

use std::time::Duration;

use kavach_stream::{EventStream, NewEvent};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{connect, Xorshift, TYPES};

/// What one writer did.
#[derive(Debug, Default)]
pub(crate) struct WriterOutcome {
    /// Events whose commit (or `publish`) was acknowledged.
    pub(crate) acknowledged: Vec<Uuid>,
    /// Events whose transaction was rolled back.
    pub(crate) rolled_back: Vec<Uuid>,
    /// Events whose fate the writer cannot know (the connection broke around the commit).
    pub(crate) uncertain: usize,
}

impl WriterOutcome {
    pub(crate) fn absorb(&mut self, other: WriterOutcome) {
        self.acknowledged.extend(other.acknowledged);
        self.rolled_back.extend(other.rolled_back);
        self.uncertain += other.uncertain;
    }
}

/// How a writer's transaction ended.
pub(crate) enum Ended {
    Committed,
    RolledBack,
}

/// One writer until `stop`: transactions of one to three events of random types, through
/// `publish` (writers 0, 4, ...), `emit_in` (1, 5, ...) or plain SQL (the rest).
pub(crate) async fn run_writer(
    index: u64,
    pg_config: tokio_postgres::Config,
    publisher: EventStream,
    mut random: Xorshift,
    stop: CancellationToken,
) -> WriterOutcome {
    let mut outcome = WriterOutcome::default();
    let mut client = None;
    let mut round = 0_u64;
    while !stop.is_cancelled() {
        round += 1;
        let events: Vec<(Uuid, &str)> = (0..=random.next(3))
            .map(|_| {
                (
                    Uuid::new_v4(),
                    TYPES[random.next(TYPES.len() as u64) as usize],
                )
            })
            .collect();
        let ids = events.iter().map(|(id, _)| *id);

        let ended = if index.is_multiple_of(4) {
            publish_all(&publisher, index, round, &events).await
        } else {
            if client.is_none() {
                client = connect(&pg_config).await.ok();
            }
            match client.as_mut() {
                Some(client) => transact(client, index, round, &events, &mut random).await,
                None => Err("cannot connect".into()),
            }
        };
        match ended {
            Ok(Ended::Committed) => outcome.acknowledged.extend(ids),
            Ok(Ended::RolledBack) => outcome.rolled_back.extend(ids),
            Err(_) => {
                outcome.uncertain += events.len();
                client = None;
            }
        }

        // A short random pause between transactions, cut short by `stop`.
        let pause = Duration::from_millis(random.next(20));
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
    outcome
}

pub(crate) type WriteError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) async fn publish_all(
    publisher: &EventStream,
    index: u64,
    round: u64,
    events: &[(Uuid, &str)],
) -> Result<Ended, WriteError> {
    for (id, event_type) in events {
        let event = NewEvent::new(event_type)?
            .with_id(*id)
            .with_data(json!({ "writer": index, "round": round }))?;
        publisher.publish(event).await?;
    }
    Ok(Ended::Committed)
}

/// One transaction: the inserts, a `pg_sleep` of up to 25 ms, then commit or (one in five)
/// rollback.
pub(crate) async fn transact(
    client: &mut tokio_postgres::Client,
    index: u64,
    round: u64,
    events: &[(Uuid, &str)],
    random: &mut Xorshift,
) -> Result<Ended, WriteError> {
    let transaction = client.transaction().await?;
    for (id, event_type) in events {
        let data = json!({ "writer": index, "round": round });
        if index % 4 == 1 {
            let event = NewEvent::new(event_type)?.with_id(*id).with_data(data)?;
            kavach_stream::emit_in(&transaction, &event).await?;
        } else {
            transaction
                .execute(
                    "INSERT INTO kavach_stream_events (id, type, data) VALUES ($1, $2, $3)",
                    &[id, event_type, &data],
                )
                .await?;
        }
    }
    let pause = random.next(26) as f64 / 1000.0;
    transaction
        .execute("SELECT pg_sleep($1)", &[&pause])
        .await?;

    if random.next(5) == 0 {
        transaction.rollback().await?;
        Ok(Ended::RolledBack)
    } else {
        transaction.commit().await?;
        Ok(Ended::Committed)
    }
}
