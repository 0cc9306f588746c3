//! Commit order under concurrency and faults: concurrent writers with rollbacks, a long unrelated
//! transaction, a killed listener connection, a restart between two servers; and instances that
//! migrate the same empty database at once.

mod common;

use std::collections::HashSet;

use common::*;
use kavach_stream::client::SseMessage;
use kavach_stream::{EventStream, NewEvent};
use serde_json::json;
use uuid::Uuid;

/// A small deterministic generator, so a failing run can be replayed.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn event_ids(messages: &[SseMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| json(m)["id"].as_str().expect("an event id").to_owned())
        .collect()
}

/// One writer's share: transactions of one to three events through the API, plain SQL or
/// `emit_in`, with a random pause inside each and about one in five rolled back. Returns the ids of
/// the events it committed.
async fn run_writer(
    index: u64,
    stream: EventStream,
    db_config: tokio_postgres::Config,
) -> Vec<Uuid> {
    let mut random = Xorshift(0x9e37_79b9_7f4a_7c15 ^ (index + 1));
    let (mut client, connection) = db_config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect a writer");
    tokio::spawn(connection);
    let mut committed = Vec::new();

    for round in 0..12 {
        let events: Vec<NewEvent> = (0..=random.next(3))
            .map(|n| {
                NewEvent::new("audit")
                    .expect("valid")
                    .with_data(json!({ "writer": index, "round": round, "n": n }))
                    .expect("data")
            })
            .collect();
        let ids: Vec<Uuid> = events.iter().map(NewEvent::id).collect();

        if index.is_multiple_of(3) {
            for event in events {
                stream.publish(event).await.expect("publish");
            }
            committed.extend(ids);
            continue;
        }

        let transaction = client.transaction().await.expect("begin");
        for event in &events {
            if index % 3 == 1 {
                stream.emit_in(&transaction, event).await.expect("emit_in");
            } else {
                transaction
                    .execute("INSERT INTO kavach_stream_events (id, type, data) VALUES ($1, 'audit', $2)", &[&event.id(), &json!({ "writer": index })])
                    .await
                    .expect("insert by SQL");
            }
        }
        let pause = random.next(30) as f64 / 1000.0;
        transaction
            .execute("SELECT pg_sleep($1)", &[&pause])
            .await
            .expect("pause inside the transaction");
        if random.next(5) == 0 {
            transaction.rollback().await.expect("rollback");
        } else {
            transaction.commit().await.expect("commit");
            committed.extend(ids);
        }
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_with_rollbacks_are_seen_once_in_one_order_everywhere() {
    let db = TestDb::create().await;
    let first = TestApp::start(&db, config()).await;
    let second = TestApp::start(&db, config()).await;
    let mut clients = vec![
        subscribe(&first, "a", "").await,
        subscribe(&first, "b", "").await,
        subscribe(&second, "c", "").await,
    ];

    let writers: Vec<_> = (0..16)
        .map(|index| {
            let stream = if index % 2 == 0 {
                first.stream.clone()
            } else {
                second.stream.clone()
            };
            tokio::spawn(run_writer(index, stream, db.pg_config.clone()))
        })
        .collect();
    let mut committed = HashSet::new();
    for writer in writers {
        committed.extend(
            writer
                .await
                .expect("a writer finishes")
                .into_iter()
                .map(|id| id.to_string()),
        );
    }

    let mut orders = Vec::new();
    for client in &mut clients {
        orders.push(event_ids(&events(client, committed.len()).await));
    }
    let mut replaying = open(&first.url("token=token-r"), &[("last-event-id", "0-0")]).await;
    orders.push(event_ids(&events(&mut replaying, committed.len()).await));

    for order in &orders {
        assert_eq!(
            order.iter().cloned().collect::<HashSet<_>>(),
            committed,
            "exactly the committed events"
        );
        assert_eq!(order.len(), committed.len(), "each once");
        assert_eq!(order, &orders[0], "one order everywhere");
    }
    println!(
        "{} committed events seen identically by {} readers",
        committed.len(),
        orders.len()
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_long_unrelated_transaction_does_not_delay_delivery() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut client = subscribe(&app, "a", "").await;
    let mut other = db.client().await;
    other
        .batch_execute("CREATE TABLE business (n int)")
        .await
        .expect("create a table");

    // An unrelated write transaction that stays open for 10 s unless the test ends first.
    let open_transaction = tokio::spawn(async move {
        let transaction = other.transaction().await.expect("begin");
        transaction
            .execute("INSERT INTO business VALUES (1)", &[])
            .await
            .expect("insert");
        transaction
            .execute("SELECT pg_sleep(10)", &[])
            .await
            .expect("stay open");
        transaction.commit().await.expect("commit");
    });
    app.stream
        .publish(NewEvent::new("anomaly.detected").expect("valid"))
        .await
        .expect("publish");
    let received = next_event(&mut client).await;

    assert_eq!(received.event, "anomaly.detected");
    assert!(
        !open_transaction.is_finished(),
        "delivered while the other transaction was still open"
    );
    open_transaction.abort();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_listener_connection_while_writing_loses_nothing() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut client = subscribe(&app, "a", "").await;

    let stream = app.stream.clone();
    let writer = tokio::spawn(async move {
        for n in 0..600 {
            let event = NewEvent::new("audit")
                .expect("valid")
                .with_data(json!({ "n": n }))
                .expect("data");
            stream.publish(event).await.expect("publish");
        }
    });
    let admin = db.client().await;
    for kill in 1..=3 {
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'kavach-stream-listener'",
                &[],
            )
            .await
            .expect("terminate the listener")
            .get(0);
        assert_eq!(killed, 1, "one listener connection to kill");
        wait_until("the listener reconnects", || {
            let metrics = app.stream.metrics();
            metrics.listener_reconnects >= kill && metrics.listener_connected
        })
        .await;
    }
    writer.await.expect("the writer finishes");

    let numbers: Vec<i64> = events(&mut client, 600)
        .await
        .iter()
        .map(|m| json(m)["data"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(numbers, (0..600).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_after_that_event_across_a_server_restart() {
    let db = TestDb::create().await;
    let before = TestApp::start(&db, config()).await;
    let mut client = subscribe(&before, "a", "").await;
    for n in 0..3 {
        before
            .stream
            .emit(
                NewEvent::new("audit")
                    .expect("valid")
                    .with_data(json!({ "n": n }))
                    .expect("data"),
            )
            .expect("emit");
    }
    let last_seen = events(&mut client, 3)
        .await
        .pop()
        .expect("three events")
        .id
        .expect("an id");
    before.stop().await;
    until_closed(&mut client).await;

    // Written while no server runs.
    db.client()
        .await
        .batch_execute("INSERT INTO kavach_stream_events (type, data) VALUES ('audit', '{\"n\": 3}'), ('audit', '{\"n\": 4}')")
        .await
        .expect("insert while down");
    let after = TestApp::start(&db, config()).await;
    let mut resumed = open(
        &after.url("token=token-a"),
        &[("last-event-id", &last_seen)],
    )
    .await;
    after
        .stream
        .emit(
            NewEvent::new("audit")
                .expect("valid")
                .with_data(json!({ "n": 5 }))
                .expect("data"),
        )
        .expect("emit");

    let numbers: Vec<i64> = events(&mut resumed, 3)
        .await
        .iter()
        .map(|m| json(m)["data"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(numbers, [3, 4, 5]);
    after.stop().await;
}

#[tokio::test]
async fn instances_migrating_an_empty_database_at_once_apply_each_migration_once() {
    let db = TestDb::create_empty().await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(db.client().await);
    }

    let runs = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|client| async move { kavach_stream::migrate(client).await }),
    )
    .await;

    let mut applied: Vec<String> = Vec::new();
    for run in runs {
        let run = run.expect("every instance migrates without an error");
        applied.extend(run.into_iter().map(|migration| migration.name));
    }
    applied.sort();
    let expected: Vec<String> = kavach_stream::migrations()
        .into_iter()
        .map(|migration| migration.name)
        .collect();
    assert_eq!(
        applied, expected,
        "each migration applied by exactly one instance"
    );

    let recorded: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM kavach_stream_migrations", &[])
        .await
        .expect("the migrations table")
        .get(0);
    assert_eq!(recorded, expected.len() as i64);
}
