//! The SSE endpoint against a real PostgreSQL and real sockets: the reference module's own checks
//! and every fix of DESIGN.md section 3.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use kavach_stream::client::SseItem;
use kavach_stream::{
    Direction, EmitError, EventFilter, EventType, NewEvent, PageRequest, StreamConfig, KNOWN_TYPES,
};
use serde_json::json;

fn event(event_type: &str) -> NewEvent {
    NewEvent::new(event_type).expect("a valid type")
}

fn event_types(names: &[&str]) -> Vec<EventType> {
    names
        .iter()
        .map(|name| name.parse().expect("a valid type"))
        .collect()
}

#[tokio::test]
async fn stream_response_has_sse_headers_retry_hint_and_connected_frame() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;

    let mut response = open(&app.url("token=token-u1"), &[]).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert_eq!(response.header("x-accel-buffering"), Some("no"));
    let connected = next_message(&mut response).await;
    assert_eq!(
        connected.retry,
        Some(2000),
        "a reconnect hint comes with the first frame"
    );
    assert_eq!(connected.event, "connected");
    assert_eq!(connected.id, None, "control frames carry no id");
    assert_eq!(json(&connected)["subscriber"], "u1");
    app.stop().await;
}

#[tokio::test]
async fn handle_request_answers_only_sse_requests() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let path = "/api/kavach/events/stream";
    let build = |method: &str, uri: &str, accept: Option<&str>| {
        let mut builder = http::Request::builder().method(method).uri(uri);
        if let Some(accept) = accept {
            builder = builder.header("accept", accept);
        }
        builder.body(()).expect("a valid request")
    };

    assert!(
        app.stream
            .handle_request(&build("GET", path, None))
            .is_none(),
        "missing Accept"
    );
    assert!(app
        .stream
        .handle_request(&build("GET", "/elsewhere", Some("text/event-stream")))
        .is_none());
    assert!(app
        .stream
        .handle_request(&build("POST", path, Some("text/event-stream")))
        .is_none());
    let answered = app
        .stream
        .handle_request(&build("GET", path, Some("text/event-stream")));
    assert_eq!(answered.expect("an SSE request is answered").status(), 200);

    let not_sse = raw_get(&app.base_url, path).await;
    assert!(not_sse.starts_with("HTTP/1.1 406"), "{not_sse}");
    assert!(
        not_sse.contains("text/event-stream"),
        "the router explains that the endpoint serves text/event-stream"
    );
    app.stop().await;
}

#[tokio::test]
async fn token_is_accepted_from_header_or_query_and_header_wins() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;

    let mut by_header = open(&app.url(""), &[("authorization", "Bearer token-h")]).await;
    let mut by_query = open(&app.url("token=token-q"), &[]).await;
    let mut both = open(
        &app.url("token=bad"),
        &[("authorization", "Bearer token-h2")],
    )
    .await;

    assert_eq!(json(&next_message(&mut by_header).await)["subscriber"], "h");
    assert_eq!(json(&next_message(&mut by_query).await)["subscriber"], "q");
    assert_eq!(json(&next_message(&mut both).await)["subscriber"], "h2");
    app.stop().await;
}

#[tokio::test]
async fn missing_and_invalid_tokens_get_one_error_frame_then_close() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;

    for (query, message) in [
        ("", "Bearer token required"),
        ("token=wrong", "Invalid token"),
    ] {
        let mut response = open(&app.url(query), &[]).await;

        let error = next_message(&mut response).await;
        assert_eq!(error.event, "error");
        assert_eq!(
            error.retry,
            Some(60_000),
            "a long retry so browsers do not hammer"
        );
        assert_eq!(
            json(&error),
            json!({ "code": "UNAUTHORIZED", "message": message })
        );
        assert!(
            until_closed(&mut response).await.is_empty(),
            "nothing follows the error"
        );
    }
    wait_until("rejected connections are released", || {
        app.stream.connection_count() == 0
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn auth_can_be_disabled() {
    let db = TestDb::create().await;
    let config = StreamConfig {
        require_auth: false,
        ..StreamConfig::default()
    };
    let app = TestApp::start(&db, config).await;

    let mut response = open(&app.url(""), &[]).await;
    let connected = next_message(&mut response).await;
    app.stream.emit(event("audit")).expect("emit");

    assert_eq!(connected.event, "connected");
    assert_eq!(next_event(&mut response).await.event, "audit");
    app.stop().await;
}

#[tokio::test]
async fn failing_panicking_and_slow_validators_end_the_connection_with_an_error_frame() {
    let db = TestDb::create().await;
    let mut config = StreamConfig::default().validate_token(|token: String| async move {
        match token.as_str() {
            "fail" => Err(std::io::Error::other("directory unreachable")),
            "panic" => panic!("validator bug"),
            "slow" => std::future::pending().await,
            _ => Ok(Some(token)),
        }
    });
    config.validator_timeout = Duration::from_millis(300);
    let app = TestApp::start(&db, config).await;

    for (token, code) in [
        ("fail", "AUTH_ERROR"),
        ("panic", "AUTH_ERROR"),
        ("slow", "AUTH_TIMEOUT"),
    ] {
        let mut response = open(&app.url(&format!("token={token}")), &[]).await;

        let error = next_message(&mut response).await;
        assert_eq!(error.event, "error", "{token}");
        assert_eq!(json(&error)["code"], code, "{token}");
        until_closed(&mut response).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn connection_count_follows_clients_and_the_limit_answers_503_with_retry_after() {
    let db = TestDb::create().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let waiting = release.clone();
    let mut config = StreamConfig::default().validate_token(move |token: String| {
        let waiting = waiting.clone();
        async move {
            if token == "held" {
                waiting.notified().await;
            }
            Ok::<_, std::io::Error>(Some(token))
        }
    });
    config.max_connections = 2;
    let app = TestApp::start(&db, config).await;

    let first = subscribe(&app, "one", "").await;
    let _authenticating = open(&app.url("token=held"), &[]).await;
    wait_until("two connections are counted", || {
        app.stream.connection_count() == 2
    })
    .await;
    let refused = open(&app.url("token=token-three"), &[]).await;

    assert_eq!(refused.status(), 503);
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(
        refused.text().await.expect("a body"),
        "Too many connections"
    );
    drop(first);
    wait_until("a closed client is no longer counted", || {
        app.stream.connection_count() == 1
    })
    .await;
    release.notify_waiters();
    app.stop().await;
}

#[tokio::test]
async fn an_emitted_event_reaches_every_client_with_the_reference_json_keys() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut clients = Vec::new();
    for subscriber in ["a", "b", "c"] {
        clients.push(subscribe(&app, subscriber, "").await);
    }

    let sent = event("agent.revoked")
        .with_data(json!({ "reason": "manual-revocation" }))
        .expect("object data")
        .with_agent_id("agent-7")
        .with_user_id("user-1");
    let id = sent.id();
    app.stream.emit(sent).expect("emit");

    for client in &mut clients {
        let received = next_event(client).await;
        assert_eq!(received.event, "agent.revoked");
        let body = json(&received);
        assert_eq!(body["id"], id.to_string());
        assert_eq!(body["type"], "agent.revoked");
        assert_eq!(body["data"], json!({ "reason": "manual-revocation" }));
        assert_eq!(body["agentId"], "agent-7");
        assert_eq!(body["userId"], "user-1");
        let timestamp = body["timestamp"].as_str().expect("a timestamp");
        assert_eq!(
            timestamp.len(),
            "2026-01-15T10:00:00.000000Z".len(),
            "microseconds are kept: {timestamp}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn all_twelve_reference_types_are_delivered_in_order() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut client = subscribe(&app, "a", "").await;

    for name in KNOWN_TYPES {
        app.stream.emit(event(name)).expect("emit");
    }

    let received: Vec<String> = events(&mut client, 12)
        .await
        .into_iter()
        .map(|message| message.event)
        .collect();
    assert_eq!(received, KNOWN_TYPES);
    app.stop().await;
}

#[tokio::test]
async fn type_filters_select_single_and_multiple_types_within_the_allow_list() {
    let db = TestDb::create().await;
    let config = config().allow_types(event_types(&[
        "audit",
        "anomaly.detected",
        "budget.exceeded",
    ]));
    let app = TestApp::start(&db, config).await;
    let mut single = subscribe(&app, "a", "types=anomaly.detected").await;
    let mut multiple = subscribe(
        &app,
        "b",
        "types=anomaly.detected,budget.exceeded,agent.created",
    )
    .await;
    let mut unfiltered = subscribe(&app, "c", "").await;

    for name in [
        "agent.created",
        "audit",
        "budget.exceeded",
        "anomaly.detected",
    ] {
        app.stream.publish(event(name)).await.expect("publish");
    }

    assert_eq!(next_event(&mut single).await.event, "anomaly.detected");
    let two: Vec<String> = events(&mut multiple, 2)
        .await
        .into_iter()
        .map(|m| m.event)
        .collect();
    assert_eq!(
        two,
        ["budget.exceeded", "anomaly.detected"],
        "agent.created is outside the allow-list"
    );
    let three: Vec<String> = events(&mut unfiltered, 3)
        .await
        .into_iter()
        .map(|m| m.event)
        .collect();
    assert_eq!(three, ["audit", "budget.exceeded", "anomaly.detected"]);
    app.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config().allow_types(event_types(&["audit"]))).await;

    for (query, named) in [
        ("types=Agent.Created", "Agent.Created"),
        ("types=", "`types`"),
        ("types=agent.created", "none of agent.created"),
        ("since=yesterday", "`since`"),
    ] {
        let response = open(&app.url(&format!("token=token-a&{query}")), &[]).await;

        assert_eq!(response.status(), 400, "{query}");
        let body = response.text().await.expect("a body");
        assert!(body.contains(named), "{query}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn heartbeat_comments_arrive_on_the_interval() {
    let db = TestDb::create().await;
    let config = StreamConfig {
        heartbeat_interval: Duration::from_millis(100),
        ..config()
    };
    let app = TestApp::start(&db, config).await;
    let mut client = subscribe(&app, "a", "").await;

    let mut heartbeats = 0;
    while heartbeats < 2 {
        if next_item(&mut client).await == SseItem::Comment("heartbeat".into()) {
            heartbeats += 1;
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_plain_sql_insert_reaches_a_connected_client() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut client = subscribe(&app, "a", "").await;

    db.client()
        .await
        .execute(
            "INSERT INTO kavach_stream_events (type, data, agent_id, user_id) VALUES ('agent.created', '{\"agentId\":\"a1\"}', 'a1', 'u1')",
            &[],
        )
        .await
        .expect("insert by SQL");

    let received = next_event(&mut client).await;
    assert_eq!(received.event, "agent.created");
    assert_eq!(json(&received)["data"], json!({ "agentId": "a1" }));
    assert_eq!(json(&received)["agentId"], "a1");
    app.stop().await;
}

#[tokio::test]
async fn malformed_sql_inserts_are_refused_by_named_constraints() {
    let db = TestDb::create().await;
    let client = db.client().await;

    for (values, constraint) in [
        ("'Not A Type', '{}'", "kavach_stream_event_type_format"),
        ("'audit', '[1,2]'", "kavach_stream_event_data_is_object"),
        (
            "'audit', jsonb_build_object('blob', repeat('x', 70000))",
            "kavach_stream_event_data_at_most_64_kib",
        ),
    ] {
        let sql = format!("INSERT INTO kavach_stream_events (type, data) VALUES ({values})");

        let error = client.execute(&sql, &[]).await.expect_err("refused");

        let db_error = error.as_db_error().expect("a database error");
        assert_eq!(db_error.constraint(), Some(constraint), "{values}");
    }
}

#[tokio::test]
async fn replay_returns_newest_first_within_the_allow_list_and_history_pages_past_1000() {
    let db = TestDb::create().await;
    let app = TestApp::start(
        &db,
        config().allow_types(event_types(&["audit", "auth.failed"])),
    )
    .await;
    let before = Utc::now();
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO kavach_stream_events (type, data) \
             SELECT CASE WHEN n % 2 = 0 THEN 'audit' ELSE 'agent.created' END, jsonb_build_object('n', n) \
             FROM generate_series(1, 2400) AS n",
            &[],
        )
        .await
        .expect("insert 2400 events");

    let replayed = app.stream.replay(before, None).await.expect("replay");
    let audit_only = app
        .stream
        .replay(before, Some(&event_types(&["audit", "agent.created"])))
        .await
        .expect("replay");

    assert_eq!(
        replayed.len(),
        1000,
        "replay stops at 1000 like the reference"
    );
    assert!(
        replayed
            .iter()
            .all(|event| event.event_type.as_str() == "audit"),
        "never beyond the allow-list"
    );
    assert_eq!(replayed[0].data["n"], 2400, "newest first");
    assert!(replayed
        .windows(2)
        .all(|pair| pair[0].cursor > pair[1].cursor));
    assert_eq!(audit_only, replayed);

    let mut cursor = None;
    let mut paged = Vec::new();
    loop {
        let page = PageRequest {
            direction: Direction::Forward,
            cursor,
            limit: 500,
        };
        let page = app
            .stream
            .history(EventFilter::default(), page)
            .await
            .expect("history");
        paged.extend(page.events);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(
        paged.len(),
        1200,
        "every allowed event, oldest first, past 1000"
    );
    assert_eq!(paged[0].data["n"], 2);
    assert_eq!(
        app.stream
            .count(EventFilter::default())
            .await
            .expect("count"),
        1200
    );
    app.stop().await;
}

#[tokio::test]
async fn since_replays_matching_history_then_goes_live() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    app.stream
        .publish(event("audit").with_timestamp(ts("2026-01-01T00:00:00Z")))
        .await
        .expect("publish");
    app.stream
        .publish(event("auth.failed").with_timestamp(ts("2026-01-15T10:00:00Z")))
        .await
        .expect("publish");
    app.stream
        .publish(event("audit").with_timestamp(ts("2026-01-16T10:00:00Z")))
        .await
        .expect("publish");

    let mut client = subscribe(
        &app,
        "a",
        "since=2026-01-15T10:00:00Z&types=audit,auth.failed",
    )
    .await;
    let replayed = events(&mut client, 2).await;
    let live_marker = next_message(&mut client).await;
    app.stream.emit(event("audit")).expect("emit");
    let live = next_event(&mut client).await;

    assert_eq!(
        json(&replayed[0])["timestamp"],
        "2026-01-15T10:00:00.000000Z"
    );
    assert_eq!(replayed[1].event, "audit");
    assert_eq!(live_marker.event, "live");
    assert_eq!(json(&live_marker)["replayed"], 2);
    assert!(live.id > replayed[1].id);
    app.stop().await;
}

fn ts(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("a valid time")
        .into()
}

#[tokio::test]
async fn last_event_id_resumes_exactly_after_that_event_and_wins_over_since() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut first = subscribe(&app, "a", "").await;
    for n in 0..5 {
        app.stream
            .emit(event("audit").with_data(json!({ "n": n })).expect("data"))
            .expect("emit");
    }
    let seen = events(&mut first, 5).await;
    drop(first);

    let cursor = seen[1].id.clone().expect("an id");
    let url = app.url("token=token-a&since=2000-01-01T00:00:00Z");
    let mut resumed = open(&url, &[("last-event-id", &cursor)]).await;
    let resumed_events = events(&mut resumed, 3).await;

    let by_uuid = json(&seen[2])["id"]
        .as_str()
        .expect("an event id")
        .to_owned();
    let mut resumed_by_uuid = open(&app.url("token=token-a"), &[("last-event-id", &by_uuid)]).await;
    let uuid_events = events(&mut resumed_by_uuid, 2).await;

    assert_eq!(
        resumed_events
            .iter()
            .map(|m| json(m)["data"]["n"].clone())
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(
        uuid_events
            .iter()
            .map(|m| json(m)["data"]["n"].clone())
            .collect::<Vec<_>>(),
        [3, 4]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_timestamp_last_event_id_resumes_after_that_time() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    app.stream
        .publish(event("audit").with_timestamp(ts("2026-01-15T10:00:00Z")))
        .await
        .expect("publish");
    app.stream
        .publish(event("audit").with_timestamp(ts("2026-01-15T10:00:00.000001Z")))
        .await
        .expect("publish");

    let mut client = open(
        &app.url("token=token-a"),
        &[("last-event-id", "2026-01-15T10:00:00Z")],
    )
    .await;

    let only = next_event(&mut client).await;
    assert_eq!(json(&only)["timestamp"], "2026-01-15T10:00:00.000001Z");
    app.stop().await;
}

#[tokio::test]
async fn unknown_malformed_and_pruned_cursors_get_an_in_band_gap_event() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let first = app.stream.publish(event("audit")).await.expect("publish");
    let second = app.stream.publish(event("audit")).await.expect("publish");
    wait_until("the hub has published both", || app.stream.head() == second).await;

    let cases = [
        ("999999-1", "unknown"),
        ("not a cursor", "malformed"),
        ("0b7e4e1c-8a47-4c0e-9d55-6b8f2a8d4f10", "unknown"),
    ];
    for (last_event_id, reason) in cases {
        let mut client = open(
            &app.url("token=token-a"),
            &[("last-event-id", last_event_id)],
        )
        .await;

        assert_eq!(next_message(&mut client).await.event, "connected");
        let gap = next_message(&mut client).await;
        assert_eq!(gap.event, "gap", "{last_event_id}");
        assert_eq!(gap.id, None);
        assert_eq!(json(&gap)["reason"], reason, "{last_event_id}");
        assert_eq!(
            json(&gap)["resumeAfter"],
            second.to_string(),
            "resumes live at the head"
        );
    }

    // Retention pruned the first event's transaction.
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "DELETE FROM kavach_stream_events WHERE xid = (SELECT xid FROM kavach_stream_commits WHERE position = {0}); \
             UPDATE kavach_stream_state SET pruned_through = {0}",
            first.position
        ))
        .await
        .expect("prune");
    let mut client = open(&app.url("token=token-a"), &[("last-event-id", "0-0")]).await;
    assert_eq!(next_message(&mut client).await.event, "connected");
    let gap = next_message(&mut client).await;
    assert_eq!(json(&gap)["reason"], "pruned");
    assert_eq!(
        next_event(&mut client).await.id,
        Some(second.to_string()),
        "the oldest retained event follows"
    );
    app.stop().await;
}

#[tokio::test]
async fn publish_returns_the_cursor_clients_see_as_id() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut client = subscribe(&app, "a", "").await;

    let cursor = app
        .stream
        .publish(event("cost.recorded"))
        .await
        .expect("publish");

    assert_eq!(next_event(&mut client).await.id, Some(cursor.to_string()));
    app.stop().await;
}

#[tokio::test]
async fn emit_in_follows_the_callers_transaction() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut client = subscribe(&app, "a", "").await;
    let mut business = db.client().await;

    let rolled_back = business.transaction().await.expect("begin");
    app.stream
        .emit_in(&rolled_back, &event("agent.created"))
        .await
        .expect("insert");
    rolled_back.rollback().await.expect("rollback");
    let committed = business.transaction().await.expect("begin");
    app.stream
        .emit_in(&committed, &event("agent.rotated"))
        .await
        .expect("insert");
    committed.commit().await.expect("commit");

    assert_eq!(
        next_event(&mut client).await.event,
        "agent.rotated",
        "the rolled-back event never arrives"
    );
    let count = app
        .stream
        .count(EventFilter::default())
        .await
        .expect("count");
    assert_eq!(count, 1);
    app.stop().await;
}

#[tokio::test]
async fn emit_refuses_observably_when_its_queue_is_full() {
    let db = TestDb::create().await;
    let config = StreamConfig {
        emit_queue_capacity: 2,
        write_batch_size: 1,
        ..config()
    };
    let app = TestApp::start(&db, config).await;
    let mut client = subscribe(&app, "a", "").await;
    // Block the writer on a table lock so the queue cannot drain.
    let mut blocker = db.client().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE kavach_stream_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let outcomes: Vec<Result<(), EmitError>> =
        (0..10).map(|_| app.stream.emit(event("audit"))).collect();
    let accepted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    lock.rollback().await.expect("release the lock");

    assert!(
        accepted <= 3,
        "one in flight and two queued at most, got {accepted}"
    );
    assert!(outcomes.contains(&Err(EmitError::QueueFull)));
    assert_eq!(app.stream.metrics().events_refused as usize, 10 - accepted);
    assert_eq!(
        events(&mut client, accepted).await.len(),
        accepted,
        "accepted events are all delivered"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failed_batch_write_is_retried_until_stored() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut client = subscribe(&app, "a", "").await;
    let mut blocker = db.client().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE kavach_stream_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    app.stream.emit(event("budget.exceeded")).expect("emit");
    // Kill the writer's connection while it waits for the lock.
    let admin = db.client().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let killed = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO kavach_stream_events%'",
                &[],
            )
            .await
            .expect("terminate the writer")
            .get::<_, i64>(0);
        if killed > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never waited on the lock"
        );
        tokio::task::yield_now().await;
    }
    lock.rollback().await.expect("release the lock");

    assert_eq!(next_event(&mut client).await.event, "budget.exceeded");
    assert!(app.stream.metrics().write_retries >= 1);
    assert_eq!(app.stream.metrics().events_dropped, 0);
    app.stop().await;
}

#[tokio::test]
async fn close_ends_connections_flushes_emits_and_refuses_what_comes_after() {
    let db = TestDb::create().await;
    let app = TestApp::start(&db, config()).await;
    let mut client = subscribe(&app, "a", "").await;
    let stream = app.stream.clone();

    for _ in 0..200 {
        stream.emit(event("audit")).expect("emit");
    }
    stream.close().await;

    until_closed(&mut client).await;
    assert_eq!(stream.connection_count(), 0);
    assert_eq!(stream.metrics().events_stored, 200, "the queue was flushed");
    assert_eq!(stream.emit(event("audit")), Err(EmitError::Closed));
    let refused = open(&app.url("token=token-a"), &[]).await;
    assert_eq!(refused.status(), 503);
    app.stop().await;
}

#[tokio::test]
async fn two_instances_on_one_database_deliver_the_same_events_in_the_same_order() {
    let db = TestDb::create().await;
    let first = TestApp::start(&db, config()).await;
    let second = TestApp::start(&db, config()).await;
    let mut on_first = subscribe(&first, "a", "").await;
    let mut on_second = subscribe(&second, "b", "").await;

    for n in 0..50 {
        let instance = if n % 2 == 0 {
            &first.stream
        } else {
            &second.stream
        };
        instance
            .emit(event("audit").with_data(json!({ "n": n })).expect("data"))
            .expect("emit");
    }

    let seen_first: Vec<_> = events(&mut on_first, 50)
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    let seen_second: Vec<_> = events(&mut on_second, 50)
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(seen_first, seen_second);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_slow_reader_that_falls_out_of_the_hub_window_still_gets_every_event() {
    let db = TestDb::create().await;
    let config = StreamConfig {
        hub_capacity: 16,
        read_batch_size: 100,
        ..config()
    };
    let app = TestApp::start(&db, config).await;
    let mut slow = subscribe(&app, "slow", "").await;

    let mut last = None;
    for chunk in 0..10 {
        let batch: Vec<_> = (0..100)
            .map(|n| {
                event("audit")
                    .with_data(json!({ "n": chunk * 100 + n }))
                    .expect("data")
            })
            .collect();
        for event in batch {
            last = Some(app.stream.publish(event).await.expect("publish"));
        }
    }
    let last = last.expect("published");
    wait_until("the hub has moved past the slow reader", || {
        app.stream.head() >= last
    })
    .await;

    let received = events(&mut slow, 1000).await;
    let numbers: Vec<i64> = received
        .iter()
        .map(|m| json(m)["data"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(numbers, (0..1000).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn scoped_subscribers_see_only_their_own_events_and_admins_see_all() {
    let db = TestDb::create().await;
    let scope = kavach_stream::Scope::OwnEvents {
        admins: ["root".to_owned()].into(),
    };
    let app = TestApp::start(&db, StreamConfig { scope, ..config() }).await;
    let mut user = subscribe(&app, "u1", "").await;
    let mut admin = subscribe(&app, "root", "").await;

    app.stream
        .emit(event("auth.signin").with_user_id("u2"))
        .expect("emit");
    app.stream
        .emit(event("auth.signin").with_user_id("u1"))
        .expect("emit");

    assert_eq!(json(&next_event(&mut user).await)["userId"], "u1");
    let both: Vec<_> = events(&mut admin, 2)
        .await
        .iter()
        .map(|m| json(m)["userId"].clone())
        .collect();
    assert_eq!(both, ["u2", "u1"]);
    app.stop().await;
}
