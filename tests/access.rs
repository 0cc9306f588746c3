//! Access over time: token expiry, revocation on every instance, refusing revoked subscribers, and
//! retention with the gap it leaves.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use kavach_stream::{
    EventFilter, NewEvent, Session, SessionFuture, StreamConfig, TokenValidator, ValidationFuture,
};

/// Tokens of the form `<subscriber>:<milliseconds until expiry>`.
struct Expiring;

impl TokenValidator for Expiring {
    fn validate(&self, token: String) -> ValidationFuture {
        Box::pin(async move { Ok(token.split(':').next().map(str::to_owned)) })
    }

    fn validate_session(&self, token: String) -> SessionFuture {
        Box::pin(async move {
            let (subscriber, millis) = token.split_once(':').ok_or("no expiry in the token")?;
            let millis: i64 = millis.parse()?;
            let expires_at = Some(Utc::now() + chrono::Duration::milliseconds(millis));
            Ok(Some(Session {
                subscriber: subscriber.to_owned(),
                expires_at,
            }))
        })
    }
}

#[tokio::test]
async fn a_stream_ends_with_an_error_frame_when_its_token_expires() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, StreamConfig::default().validate_token(Expiring)).await;

    let mut expired = open(&app.url("token=alice:-1000"), &[]).await;
    let mut expiring = open(&app.url("token=bob:400"), &[]).await;

    let refused = next_message(&mut expired).await;
    assert_eq!(json(&refused)["code"], "TOKEN_EXPIRED");
    assert_eq!(next_message(&mut expiring).await.event, "connected");
    let ended = next_message(&mut expiring).await;
    assert_eq!(ended.event, "error");
    assert_eq!(json(&ended)["code"], "TOKEN_EXPIRED");
    until_closed(&mut expiring).await;
    app.stop().await;
}

#[tokio::test]
async fn an_agent_revoked_event_closes_that_subscribers_streams_on_every_instance() {
    let db = TestDb::create().await;
    let first = TestApp::start(&db, config()).await;
    let second = TestApp::start(&db, config()).await;
    let mut on_first = subscribe(&first, "agent-7", "").await;
    let mut on_second = subscribe(&second, "agent-7", "types=audit").await;
    let mut bystander = subscribe(&second, "agent-8", "").await;

    db.client()
        .await
        .batch_execute(
            "INSERT INTO kavach_stream_events (type, agent_id) VALUES ('agent.revoked', 'agent-7')",
        )
        .await
        .expect("revoke by SQL");

    for stream in [&mut on_first, &mut on_second] {
        let closing = loop {
            let message = next_message(stream).await;
            if message.event == "error" {
                break message;
            }
        };
        assert_eq!(json(&closing)["code"], "REVOKED");
        until_closed(stream).await;
    }
    assert_eq!(
        next_event(&mut bystander).await.event,
        "agent.revoked",
        "others keep their stream"
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_revoked_subscriber_cannot_reconnect_when_revocations_are_enforced() {
    let db = TestDb::create().await;
    let app = TestApp::start(
        &db,
        StreamConfig {
            reject_revoked: true,
            ..config()
        },
    )
    .await;
    let revocation = NewEvent::new("agent.revoked")
        .expect("valid")
        .with_agent_id("agent-9");
    app.stream.publish(revocation).await.expect("publish");

    let mut refused = open(&app.url("token=token-agent-9"), &[]).await;
    let mut allowed = open(&app.url("token=token-agent-10"), &[]).await;

    let error = next_message(&mut refused).await;
    assert_eq!(
        json(&error),
        serde_json::json!({ "code": "UNAUTHORIZED", "message": "Subscriber was revoked" })
    );
    assert_eq!(next_message(&mut allowed).await.event, "connected");
    app.stop().await;
}

#[tokio::test]
async fn retention_prunes_old_transactions_and_an_old_cursor_gets_a_gap() {
    let db = TestDb::create().await;
    let config = StreamConfig {
        retention: Some(Duration::from_secs(3600)),
        ..config()
    };
    let app = TestApp::start(&db, config).await;
    let old = app
        .stream
        .publish(NewEvent::new("audit").expect("valid"))
        .await
        .expect("publish");
    let kept = app
        .stream
        .publish(NewEvent::new("audit").expect("valid"))
        .await
        .expect("publish");
    db.client()
        .await
        .execute(
            "UPDATE kavach_stream_commits SET committed_at = now() - interval '2 hours' WHERE position = $1",
            &[&old.position],
        )
        .await
        .expect("age the first transaction");

    let pruned = app.stream.prune_expired().await.expect("prune");

    assert_eq!(
        (pruned.transactions, pruned.events, pruned.through),
        (1, 1, old.position)
    );
    assert_eq!(
        app.stream
            .count(EventFilter::default())
            .await
            .expect("count"),
        1
    );
    let mut client = open(
        &app.url("token=token-a"),
        &[("last-event-id", &old.to_string())],
    )
    .await;
    assert_eq!(next_message(&mut client).await.event, "connected");
    let gap = next_message(&mut client).await;
    assert_eq!(json(&gap)["reason"], "pruned");
    assert_eq!(next_event(&mut client).await.id, Some(kept.to_string()));
    app.stop().await;
}
