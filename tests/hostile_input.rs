//! Hostile input: property tests that no request, cursor, type name or event content can make
//! the parsers panic, get past them unchecked, or put a CR, LF or NUL on the wire; and the SQL
//! side, where the table's CHECK constraints refuse malformed types, data shapes and sizes (up to
//! megabytes) at insert, naming the constraint.
//!
//! The cargo-fuzz target `fuzz/fuzz_targets/request_parsing.rs` explores the same request parsers
//! for longer; this file runs in every `cargo test`.

mod common;

use std::collections::BTreeSet;

use common::{config, TestDb};
use http::{HeaderValue, Method, Request};
use kavach_stream::client::{SseItem, SseParser};
use kavach_stream::wire::{self, ControlEvent, ErrorData};
use kavach_stream::{
    is_stream_request, parse_params, Cursor, EventStream, EventType, InvalidEvent, LastEventId,
    NewEvent, StoredEvent, StreamConfig, KNOWN_TYPES,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

const PATH: &str = "/api/kavach/events/stream";

/// The parts of a request the parsers read.
#[derive(Debug, Clone)]
struct RequestParts {
    get: bool,
    on_path: bool,
    query: String,
    accept: Option<Vec<u8>>,
    authorization: Option<Vec<u8>>,
    last_event_id: Option<Vec<u8>>,
}

impl RequestParts {
    /// The request, leaving out headers the HTTP layer itself would refuse (CR, LF, NUL).
    fn build(&self) -> Request<()> {
        let method = if self.get { Method::GET } else { Method::POST };
        let path = if self.on_path { PATH } else { "/other" };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{path}?{}", self.query))
            .body(())
            .expect("a percent-encoded query is a valid URI");

        let headers = request.headers_mut();
        for (name, value) in [
            ("accept", &self.accept),
            ("authorization", &self.authorization),
            ("last-event-id", &self.last_event_id),
        ] {
            if let Some(value) = value
                .as_deref()
                .and_then(|v| HeaderValue::from_bytes(v).ok())
            {
                headers.insert(name, value);
            }
        }
        request
    }
}

/// Values that matter to the parsers, and anything at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("audit,agent.revoked".to_owned()),
        Just(" , ,".to_owned()),
        Just("2026-01-15T10:00:00.123456+02:00".to_owned()),
        Just("12-7".to_owned()),
        Just("x".repeat(5000)),
        "[a-z._, ]{0,40}",
        "[0-9:TZ+.-]{0,30}",
        any::<String>(),
        vec(any::<u8>(), 0..200).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("token".to_owned()),
        Just("types".to_owned()),
        Just("since".to_owned()),
        any::<String>(),
    ];
    let pairs = vec((name, text()), 0..5).prop_map(|pairs| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    });
    // Raw bytes, every one percent-encoded, so the decoded query need not be UTF-8.
    let raw = vec(any::<u8>(), 0..100).prop_map(|bytes| {
        bytes
            .iter()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    });
    prop_oneof![pairs, raw]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        text().prop_map(String::into_bytes),
        text().prop_map(|token| format!("Bearer {token}").into_bytes()),
        Just(b"text/html;q=0.1, TEXT/EVENT-STREAM".to_vec()),
        vec(any::<u8>(), 0..300),
    ]
}

fn request_parts() -> impl Strategy<Value = RequestParts> {
    (
        any::<bool>(),
        any::<bool>(),
        query(),
        proptest::option::of(header_value()),
        proptest::option::of(header_value()),
        proptest::option::of(header_value()),
    )
        .prop_map(
            |(get, on_path, query, accept, authorization, last_event_id)| RequestParts {
                get,
                on_path,
                query,
                accept,
                authorization,
                last_event_id,
            },
        )
}

fn allow_list() -> BTreeSet<EventType> {
    ["audit", "agent.revoked"]
        .iter()
        .map(|name| name.parse().expect("valid"))
        .collect()
}

/// What every `LastEventId` promises: a cursor round-trips, malformed text stays printable.
fn check_last_event_id(last_event_id: &LastEventId) -> Result<(), TestCaseError> {
    match last_event_id {
        LastEventId::Cursor(cursor) => {
            prop_assert_eq!(cursor.to_string().parse::<Cursor>().ok(), Some(*cursor));
        }
        LastEventId::Malformed(text) => {
            prop_assert!(!text.contains(char::is_control), "{:?}", text);
        }
        LastEventId::EventId(_) | LastEventId::Time(_) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 1000, ..Config::default() })]

    #[test]
    fn no_request_makes_the_parsers_panic_and_every_rejection_names_its_parameter(
        parts in request_parts(),
        restricted in any::<bool>(),
    ) {
        let request = parts.build();
        let allowed = allow_list();
        let allowed = restricted.then_some(&allowed);

        let _ = is_stream_request(&request, PATH);
        match parse_params(&request, allowed) {
            Ok(params) => {
                if let Some(token) = &params.token {
                    prop_assert!(!token.is_empty() && token.len() <= 4096);
                }
                if let Some(types) = &params.types {
                    prop_assert!(!types.is_empty());
                    prop_assert!(types.iter().all(|t| allowed.is_none_or(|a| a.contains(t))));
                }
                if let Some(last_event_id) = &params.last_event_id {
                    check_last_event_id(last_event_id)?;
                }
            }
            Err(error) => {
                let message = error.to_string();
                let named = ["`types`", "`since`", "`token`", "`Authorization`", "`Last-Event-ID`"];
                prop_assert!(named.iter().any(|name| message.starts_with(&format!("invalid {name}"))), "{}", message);
                prop_assert!(!message.contains(['\r', '\n', '\0']), "{:?}", message);
            }
        }
    }

    #[test]
    fn cursors_type_names_and_last_event_ids_parse_without_panicking(
        input in prop_oneof![any::<String>(), "[0-9+ -]{0,45}", "[a-z0-9_.A-Z\n-]{0,110}"],
    ) {
        check_last_event_id(&LastEventId::parse(&input))?;
        if let Ok(cursor) = input.parse::<Cursor>() {
            prop_assert_eq!(cursor.to_string().parse::<Cursor>().ok(), Some(cursor));
        }
        if let Ok(event_type) = input.parse::<EventType>() {
            prop_assert!(event_type.as_str().bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.')));
            prop_assert!(event_type.as_str().len() <= 100);
        }
    }

    #[test]
    fn an_event_frame_has_exactly_its_three_lines_whatever_the_event_holds(
        position in 0_i64..=i64::MAX,
        seq in 0_i64..=i64::MAX,
        type_name in prop_oneof![proptest::sample::select(KNOWN_TYPES.to_vec()).prop_map(str::to_owned), "[a-z][a-z0-9_]{0,10}(\\.[a-z][a-z0-9_]{0,10}){0,3}"],
        data in btree_map(any::<String>(), any::<String>(), 0..4),
        agent_id in proptest::option::of(any::<String>()),
        user_id in proptest::option::of(".*[\r\n\0].*"),
    ) {
        let data: Value = json!(data);
        let event = StoredEvent {
            cursor: Cursor::new(position, seq),
            id: uuid::Uuid::new_v4(),
            event_type: type_name.parse().expect("the strategy makes valid names"),
            timestamp: chrono::Utc::now(),
            data: data.clone(),
            agent_id,
            user_id,
        };

        let frame = wire::event_frame(&event);

        prop_assert!(!frame.contains(&b'\r') && !frame.contains(&0));
        prop_assert_eq!(frame.iter().filter(|&&b| b == b'\n').count(), 4);
        let items = SseParser::new().feed(&frame);
        prop_assert_eq!(items.len(), 1);
        let SseItem::Message(message) = &items[0] else {
            return Err(TestCaseError::fail("a message"));
        };
        prop_assert_eq!(message.id.clone(), Some(event.cursor.to_string()));
        prop_assert_eq!(&message.event, &type_name);
        let sent: Value = serde_json::from_str(&message.data).expect("JSON data");
        prop_assert_eq!(&sent["data"], &data);
        prop_assert_eq!(sent["agentId"].as_str(), event.agent_id.as_deref());
        prop_assert_eq!(sent["userId"].as_str(), event.user_id.as_deref());
    }

    #[test]
    fn a_control_frame_is_one_message_without_an_id_whatever_its_text(
        code in any::<String>(),
        message in any::<String>(),
        retry_ms in proptest::option::of(0_u64..1_000_000),
    ) {
        let retry = retry_ms.map(std::time::Duration::from_millis);

        let frame = wire::control_frame(ControlEvent::Error, &ErrorData { code: &code, message: &message }, retry);

        prop_assert!(!frame.contains(&b'\r') && !frame.contains(&0));
        let items = SseParser::new().feed(&frame);
        prop_assert_eq!(items.len(), 1);
        let SseItem::Message(sent) = &items[0] else {
            return Err(TestCaseError::fail("a message"));
        };
        prop_assert_eq!(sent.id.as_ref(), None);
        prop_assert_eq!(sent.retry, retry_ms);
        let data: Value = serde_json::from_str(&sent.data).expect("JSON data");
        prop_assert_eq!(data["message"].as_str(), Some(message.as_str()));
    }
}

/// Through the real handler: a request is either not ours (`None`), opens a stream (200), or is
/// refused with a 4xx and a message (a 503 only for the connection limit, never reached here).
#[test]
fn every_stream_request_is_answered_200_or_4xx_with_a_message() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let stream = runtime.block_on(async {
        let db = TestDb::create().await;
        let config = StreamConfig {
            event_types: Some(allow_list()),
            ..config()
        };
        EventStream::connect(db.pg_config, config)
            .await
            .expect("start the stream")
    });
    let _inside = runtime.enter();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });

    runner
        .run(&request_parts(), |parts| {
            let request = parts.build();
            let Some(response) = stream.handle_request(&request) else {
                prop_assert!(!is_stream_request(&request, PATH));
                return Ok(());
            };
            let status = response.status();
            if status.is_success() {
                prop_assert_eq!(status.as_u16(), 200);
                return Ok(());
            }
            prop_assert!(status.is_client_error(), "{}", status);
            let body = runtime
                .block_on(axum::body::to_bytes(response.into_body(), 64 * 1024))
                .expect("a short body");
            let body = String::from_utf8(body.to_vec()).expect("a text body");
            prop_assert!(body.starts_with("invalid `"), "{}", body);
            Ok(())
        })
        .expect("every request gets a clear answer");
    runtime.block_on(stream.close());
}

/// Every malformed row a plain SQL client could send, and the constraint that refuses it.
#[tokio::test]
async fn malformed_rows_are_refused_at_insert_by_the_constraint_that_names_the_problem() {
    let db = TestDb::create().await;
    let client = db.client().await;
    let long_type = format!("'{}'", "a".repeat(101));
    let long_id = format!("'{}'", "x".repeat(201));

    let cases: Vec<(String, &str)> = vec![
        ("'Audit', '{}', NULL, NULL".into(), "kavach_stream_event_type_format"),
        ("'audit log', '{}', NULL, NULL".into(), "kavach_stream_event_type_format"),
        ("'', '{}', NULL, NULL".into(), "kavach_stream_event_type_format"),
        ("'1audit', '{}', NULL, NULL".into(), "kavach_stream_event_type_format"),
        ("'agent..created', '{}', NULL, NULL".into(), "kavach_stream_event_type_format"),
        ("E'audit\\nid: 9-9', '{}', NULL, NULL".into(), "kavach_stream_event_type_format"),
        ("'audit-log', '{}', NULL, NULL".into(), "kavach_stream_event_type_format"),
        ("'ävent', '{}', NULL, NULL".into(), "kavach_stream_event_type_format"),
        (format!("{long_type}, '{{}}', NULL, NULL"), "kavach_stream_event_type_format"),
        ("'audit', '[1]', NULL, NULL".into(), "kavach_stream_event_data_is_object"),
        ("'audit', '\"text\"', NULL, NULL".into(), "kavach_stream_event_data_is_object"),
        ("'audit', '42', NULL, NULL".into(), "kavach_stream_event_data_is_object"),
        ("'audit', 'null', NULL, NULL".into(), "kavach_stream_event_data_is_object"),
        ("'audit', '{}', '', NULL".into(), "kavach_stream_event_agent_id_length"),
        (format!("'audit', '{{}}', {long_id}, NULL"), "kavach_stream_event_agent_id_length"),
        ("'audit', '{}', NULL, ''".into(), "kavach_stream_event_user_id_length"),
        (format!("'audit', '{{}}', NULL, {long_id}"), "kavach_stream_event_user_id_length"),
        (
            "'audit', jsonb_build_object('blob', repeat('x', 65536)), NULL, NULL".into(),
            "kavach_stream_event_data_at_most_64_kib",
        ),
        (
            "'audit', (SELECT jsonb_object_agg(n::text, n) FROM generate_series(1, 10000) n), NULL, NULL".into(),
            "kavach_stream_event_data_at_most_64_kib",
        ),
    ];

    for (values, constraint) in &cases {
        let sql = format!(
            "INSERT INTO kavach_stream_events (type, data, agent_id, user_id) VALUES ({values})"
        );

        let error = client.execute(&sql, &[]).await.expect_err(values);

        let db_error = error.as_db_error().expect("a database error");
        assert_eq!(db_error.constraint(), Some(*constraint), "{values}");
        assert!(
            db_error.message().contains(constraint),
            "the message names the constraint: {}",
            db_error.message()
        );
    }
    let null_data = client
        .execute(
            "INSERT INTO kavach_stream_events (type, data) VALUES ('audit', NULL)",
            &[],
        )
        .await
        .expect_err("data is required");
    assert_eq!(
        null_data.as_db_error().expect("a database error").column(),
        Some("data")
    );
    let stored: i64 = client
        .query_one("SELECT count(*) FROM kavach_stream_events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 0, "nothing malformed was stored");
}

/// Megabytes of data never reach the table, so they can never reach a client: SQL is refused by
/// the size constraint at insert, the Rust API before it even sends.
#[tokio::test]
async fn an_event_with_megabytes_of_data_is_refused_at_insert() {
    let db = TestDb::create().await;
    let app = common::TestApp::start(&db, config()).await;
    let mut watcher = common::subscribe(&app, "watcher", "").await;
    let client = db.client().await;
    let megabytes = "x".repeat(4 * 1024 * 1024);

    let by_sql = client
        .execute(
            "INSERT INTO kavach_stream_events (type, data) VALUES ('audit', jsonb_build_object('blob', $1::text))",
            &[&megabytes],
        )
        .await
        .expect_err("refused by SQL");
    let by_api = NewEvent::new("audit")
        .expect("valid")
        .with_data(json!({ "blob": megabytes }))
        .expect_err("refused by the API");

    assert_eq!(
        by_sql.as_db_error().and_then(|e| e.constraint()),
        Some("kavach_stream_event_data_at_most_64_kib")
    );
    assert!(
        matches!(by_api, InvalidEvent::DataTooLarge(size) if size > 4_000_000),
        "{by_api}"
    );
    assert!(by_api.to_string().contains("65536 allowed"), "{by_api}");
    app.stream
        .publish(NewEvent::new("audit.after").expect("valid"))
        .await
        .expect("a small event still goes through");
    let next = common::next_event(&mut watcher).await;
    assert_eq!(
        next.event, "audit.after",
        "the refused event was never delivered"
    );
    app.stop().await;
}
