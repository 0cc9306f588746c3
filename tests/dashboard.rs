//! The admin dashboard over real HTTP against the real server and PostgreSQL: sign-in and the
//! session cookie, guards, cross-site refusal, the rendered pages and fragments (filters, paging,
//! escaping), the live row stream, static files and security headers.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kavach_stream::dashboard::{self, DashboardConfig};
use kavach_stream::{EventStream, StreamConfig};

/// An HTTP answer, body as text.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }
}

/// The stream and the dashboard (admin `root`) on a free port.
async fn start(db: &TestDb, config: StreamConfig) -> TestApp {
    let stream = EventStream::connect(db.pg_config.clone(), config)
        .await
        .expect("start the stream");
    serve(stream, "127.0.0.1:0").await
}

async fn serve(stream: EventStream, address: &str) -> TestApp {
    let dashboard_config = DashboardConfig {
        admins: HashSet::from(["root".to_owned()]),
        ..DashboardConfig::default()
    };
    let app = stream
        .router()
        .merge(dashboard::router(stream.clone(), dashboard_config));
    TestApp::serve_app(stream, address, app).await
}

/// Sends one request on a fresh connection.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let address = app.base_url.trim_start_matches("http://");
    let socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
        .await
        .expect("an HTTP/1.1 handshake");
    tokio::spawn(connection);

    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", address);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an answer");

    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the body in time")
        .expect("a readable body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> Reply {
    match cookie {
        Some(cookie) => send(app, Method::GET, path, &[("cookie", cookie)], "").await,
        None => send(app, Method::GET, path, &[], "").await,
    }
}

/// A same-origin form POST, as the dashboard's own forms send it.
async fn post_form(app: &TestApp, path: &str, form: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![
        ("content-type", "application/x-www-form-urlencoded"),
        ("sec-fetch-site", "same-origin"),
    ];
    headers.extend_from_slice(extra);
    send(app, Method::POST, path, &headers, form).await
}

/// Signs in with `token` and returns the `name=value` of the session cookie.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let reply = post_form(app, "/admin/signin", &format!("token={token}"), &[]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    session_cookie(&reply)
}

fn session_cookie(reply: &Reply) -> String {
    let set_cookie = reply.header("set-cookie");
    assert!(!set_cookie.is_empty(), "a session cookie is set");
    set_cookie
        .split(';')
        .next()
        .expect("a name=value pair")
        .to_owned()
}

/// Inserts events by plain SQL, one transaction.
async fn insert(db: &TestDb, values: &str) {
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO kavach_stream_events (type, timestamp, data, agent_id, user_id) VALUES {values}"
        ))
        .await
        .expect("insert events");
}

#[tokio::test]
async fn signin_sets_a_strict_httponly_session_cookie_and_returns_to_the_page_asked_for() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;

    let reply = post_form(
        &app,
        "/admin/signin",
        "token=token-root&next=%2Fadmin%2Fhistory%3Ftypes%3Daudit",
        &[],
    )
    .await;

    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.header("location"), "/admin/history?types=audit");
    let set_cookie = reply.header("set-cookie");
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=43200",
    ] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = session_cookie(&reply);
    let page = get(&app, "/admin", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Live feed") && page.body.contains("root"));

    let elsewhere = post_form(
        &app,
        "/admin/signin",
        "token=token-root&next=//evil.example",
        &[],
    );
    assert_eq!(elsewhere.await.header("location"), "/admin");
    app.stop().await;
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_signin_and_fragments_answer_401() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    let forged = "kavach_dashboard_session=00000000000040008000000000000000";

    for cookie in [None, Some(forged)] {
        let page = get(&app, "/admin/history?types=audit", cookie).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert_eq!(
            page.header("location"),
            "/admin/signin?next=%2Fadmin%2Fhistory%3Ftypes%3Daudit"
        );
        for fragment in [
            "/admin/stream",
            "/admin/session",
            "/admin/fragments/history",
            "/admin/fragments/operations",
            "/admin/fragments/events/00000000-0000-4000-8000-000000000000",
        ] {
            let reply = get(&app, fragment, cookie).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{fragment}");
        }
    }

    let signin = get(&app, "/admin/signin", None).await;
    assert_eq!(signin.status, StatusCode::OK);
    assert!(signin.body.contains("name=\"token\""));
    app.stop().await;
}

#[tokio::test]
async fn a_valid_token_of_a_non_admin_and_an_invalid_token_are_refused_clearly() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;

    let not_admin = post_form(&app, "/admin/signin", "token=token-alice", &[]).await;
    let invalid = post_form(&app, "/admin/signin", "token=guess", &[]).await;

    assert_eq!(not_admin.status, StatusCode::FORBIDDEN);
    assert!(
        not_admin.body.contains("alice") && not_admin.body.contains("not a dashboard admin"),
        "{}",
        not_admin.body
    );
    assert_eq!(invalid.status, StatusCode::UNAUTHORIZED);
    assert!(invalid.body.contains("That token is not valid."));
    for reply in [&not_admin, &invalid] {
        assert!(reply.headers.get("set-cookie").is_none());
    }
    app.stop().await;
}

#[tokio::test]
async fn cross_site_signin_and_signout_are_refused() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    let cookie = sign_in(&app, "token-root").await;

    let cross_site = [("sec-fetch-site", "cross-site")];
    let form_headers = [("content-type", "application/x-www-form-urlencoded")];
    let foreign_origin = [form_headers[0], ("origin", "http://evil.example")];
    let signin = send(
        &app,
        Method::POST,
        "/admin/signin",
        &[cross_site[0], form_headers[0]],
        "token=token-root",
    )
    .await;
    let signin_by_origin = send(
        &app,
        Method::POST,
        "/admin/signin",
        &foreign_origin,
        "token=token-root",
    )
    .await;
    let signout = send(
        &app,
        Method::POST,
        "/admin/signout",
        &[cross_site[0], ("cookie", &cookie)],
        "",
    )
    .await;

    for reply in [&signin, &signin_by_origin, &signout] {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
        assert!(reply.headers.get("set-cookie").is_none());
    }
    let still_signed_in = get(&app, "/admin/session", Some(&cookie)).await;
    assert_eq!(still_signed_in.status, StatusCode::NO_CONTENT);
    app.stop().await;
}

#[tokio::test]
async fn signout_ends_the_session_and_clears_the_cookie() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    let cookie = sign_in(&app, "token-root").await;

    let reply = post_form(&app, "/admin/signout", "", &[("cookie", &cookie)]).await;

    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.header("location"), "/admin/signin");
    assert!(reply.header("set-cookie").contains("Max-Age=0"));
    let after = get(&app, "/admin", Some(&cookie)).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test]
async fn sessions_hold_on_another_instance_and_after_a_restart() {
    let db = TestDb::create().await;
    let first = start(&db, config()).await;
    let second = start(&db, config()).await;
    let cookie = sign_in(&first, "token-root").await;

    let on_second = get(&second, "/admin", Some(&cookie)).await;
    first.stop().await;
    second.stop().await;
    let restarted = start(&db, config()).await;
    let after_restart = get(&restarted, "/admin/operations", Some(&cookie)).await;

    assert_eq!(on_second.status, StatusCode::OK);
    assert_eq!(after_restart.status, StatusCode::OK);
    restarted.stop().await;
}

#[tokio::test]
async fn without_a_validator_the_dashboard_refuses_every_signin_and_says_why() {
    let db = TestDb::create().await;
    let open_stream = StreamConfig {
        require_auth: false,
        ..StreamConfig::default()
    };
    let app = start(&db, open_stream).await;

    let page = get(&app, "/admin/signin", None).await;
    let attempt = post_form(&app, "/admin/signin", "token=anything", &[]).await;

    assert!(page.body.contains("require_auth = false"), "{}", page.body);
    assert!(!page.body.contains("name=\"token\""), "no form to fill in");
    assert_eq!(attempt.status, StatusCode::FORBIDDEN);
    assert!(attempt.headers.get("set-cookie").is_none());
    app.stop().await;
}

#[tokio::test]
async fn history_applies_type_and_time_filters_newest_first_with_a_count() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    insert(
        &db,
        "('auth.signin', '2026-01-15T10:00:00Z', '{\"n\": 1}', 'a-early', NULL), \
         ('auth.signin', '2026-01-15T11:00:00Z', '{\"n\": 2}', 'a-inside-1', NULL), \
         ('auth.failed', '2026-01-15T11:10:00Z', '{\"n\": 3}', 'a-other-type', NULL), \
         ('auth.signin', '2026-01-15T11:20:00Z', '{\"n\": 4}', 'a-inside-2', NULL), \
         ('auth.signin', '2026-01-15T13:00:00Z', '{\"n\": 5}', 'a-late', NULL)",
    )
    .await;
    let cookie = sign_in(&app, "token-root").await;

    let page = get(
        &app,
        "/admin/history?types=auth.signin&from=2026-01-15T10%3A30&to=2026-01-15T12%3A00%3A00",
        Some(&cookie),
    )
    .await;

    assert_eq!(page.status, StatusCode::OK);
    let body = &page.body;
    assert!(
        body.contains("<strong>2</strong> matching events"),
        "{body}"
    );
    let newer = body.find("a-inside-2").expect("the newer event is listed");
    let older = body.find("a-inside-1").expect("the older event is listed");
    assert!(newer < older, "newest first");
    for excluded in ["a-early", "a-late", "a-other-type"] {
        assert!(!body.contains(excluded), "{excluded} is filtered out");
    }
    assert!(body.contains("value=\"auth.signin\" data-family=\"auth\" checked"));
    assert!(body.contains("value=\"auth.failed\" data-family=\"auth\">"));
    assert!(
        body.contains("value=\"2026-01-15T10:30:00\""),
        "the window is kept"
    );
    app.stop().await;
}

#[tokio::test]
async fn history_pages_past_a_thousand_events_by_cursor() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO kavach_stream_events (type, agent_id) \
             SELECT 'audit', 'agent-' || n FROM generate_series(1, 1050) AS n",
        )
        .await
        .expect("insert events");
    let cookie = sign_in(&app, "token-root").await;

    let first = get(&app, "/admin/history", Some(&cookie)).await;
    let mut seen = rows_of(&first.body);
    let mut next = older_link(&first.body);
    while let Some(fragment) = next {
        let page = get(&app, &fragment, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK);
        seen.extend(rows_of(&page.body));
        next = older_link(&page.body);
    }

    assert!(first.body.contains("<strong>1050</strong> matching events"));
    assert_eq!(seen.len(), 1050);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        1050,
        "no repeats"
    );
    assert_eq!(seen.first().map(String::as_str), Some("agent-1050"));
    assert_eq!(seen.last().map(String::as_str), Some("agent-1"));
    app.stop().await;
}

/// The text an HTML fragment shows, for the character references askama writes.
fn unescape(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find("&#") {
        text.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find(';').unwrap_or(0);
        match after[..end].parse::<u32>().ok().and_then(char::from_u32) {
            Some(decoded) => {
                text.push(decoded);
                rest = &after[end + 1..];
            }
            None => {
                text.push_str("&#");
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text
}

/// The agents of the rows in a page, in order.
fn rows_of(html: &str) -> Vec<String> {
    html.split("<td class=\"agent\">")
        .skip(1)
        .map(|rest| rest.split('<').next().unwrap_or_default().to_owned())
        .collect()
}

/// The "load older" fragment URL, if there is one.
fn older_link(html: &str) -> Option<String> {
    let start = html.find("hx-get=\"")? + "hx-get=\"".len();
    let end = html[start..].find('"')? + start;
    Some(unescape(&html[start..end]))
}

#[tokio::test]
async fn hostile_event_data_shows_as_text_in_pages_fragments_and_the_live_stream() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    let cookie = sign_in(&app, "token-root").await;
    let mut live = open(
        &format!("{}/admin/stream", app.base_url),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(next_message(&mut live).await.event, "connected");

    insert(
        &db,
        "('audit', now(), '{\"note\": \"<script>alert(1)</script>\"}', '<img src=x onerror=alert(2)>', '\"><b>u</b>')",
    )
    .await;
    let row = next_event(&mut live).await;
    let history = get(&app, "/admin/history", Some(&cookie)).await;
    let id = history
        .body
        .split("/admin/events/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a detail link")
        .to_owned();
    let detail = get(
        &app,
        &format!("/admin/fragments/events/{id}"),
        Some(&cookie),
    )
    .await;
    let detail_page = get(&app, &format!("/admin/events/{id}"), Some(&cookie)).await;

    for (what, html) in [
        ("live row", row.data.as_str()),
        ("history", history.body.as_str()),
        ("detail", detail.body.as_str()),
        ("detail page", detail_page.body.as_str()),
    ] {
        // askama writes `<` as `&#60;`; a browser shows either form as the text `<`.
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{what}: {html}"
        );
        assert!(
            unescape(html).contains("<script>alert(1)</script>"),
            "{what}"
        );
        assert!(!html.contains("<script>alert"), "{what}");
        assert!(!html.contains("<img"), "{what}");
        assert!(!html.contains("<b>u</b>"), "{what}");
    }
    app.stop().await;
}

#[tokio::test]
async fn live_stream_sends_rows_with_cursor_ids_and_resumes_after_last_event_id() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    let cookie = sign_in(&app, "token-root").await;
    let url = format!("{}/admin/stream?types=audit", app.base_url);
    let mut live = open(&url, &[("cookie", &cookie)]).await;
    let connected = next_message(&mut live).await;

    insert(&db, "('auth.signin', now(), '{}', 'skipped', NULL)").await;
    insert(&db, "('audit', now(), '{\"step\": 1}', 'first', NULL)").await;
    let first = next_event(&mut live).await;
    drop(live);
    insert(&db, "('audit', now(), '{\"step\": 2}', 'second', NULL)").await;
    let cursor = first.id.clone().expect("an id");
    let mut resumed = open(&url, &[("cookie", &cookie), ("last-event-id", &cursor)]).await;
    let second = next_event(&mut resumed).await;

    assert_eq!(connected.event, "connected");
    assert_eq!(connected.retry, Some(2000), "the browser retries after 2 s");
    assert_eq!(first.event, "row");
    assert!(
        first.data.starts_with("<tr class=\"event family-audit\""),
        "{}",
        first.data
    );
    assert!(first.data.contains("data-cursor=\"") && first.data.contains(&cursor));
    assert!(first.data.contains(">first<"));
    assert!(second.data.contains(">second<"), "{}", second.data);
    assert!(
        app.stream
            .connections()
            .iter()
            .any(|connection| connection.dashboard
                && connection.subscriber.as_deref() == Some("root"))
    );
    app.stop().await;
}

#[tokio::test]
async fn the_live_page_reflects_the_filter_in_the_url_and_starts_after_its_newest_row() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    insert(
        &db,
        "('audit', now(), '{}', 'shown', NULL), ('agent.created', now(), '{}', 'hidden', NULL)",
    )
    .await;
    let cookie = sign_in(&app, "token-root").await;

    let page = get(&app, "/admin?types=audit", Some(&cookie)).await;
    let nothing = get(&app, "/admin?types=", Some(&cookie)).await;
    let bad = get(&app, "/admin?types=Not%20A%20Type", Some(&cookie)).await;

    let body = &page.body;
    assert!(body.contains("value=\"audit\" data-family=\"audit\" checked"));
    assert!(body.contains("value=\"agent.created\" data-family=\"agent\">"));
    assert!(
        body.contains("sse-connect=\"/admin/stream?types=audit&#38;after="),
        "{body}"
    );
    assert!(body.contains(">shown<") && !body.contains(">hidden<"));
    assert!(
        body.contains("href=\"/admin/history?types=audit\""),
        "navigation keeps the filter"
    );
    assert!(!nothing.body.contains("sse-connect"), "no type, no stream");
    assert!(nothing.body.contains("No event type selected"));
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("`types`") && bad.body.contains("Not A Type"));
    app.stop().await;
}

#[tokio::test]
async fn operations_panel_shows_connections_listener_types_and_storage() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    insert(&db, "('anomaly.detected', now(), '{}', NULL, NULL), ('anomaly.detected', now(), '{}', NULL, NULL)").await;
    let subscriber = subscribe(&app, "watcher", "types=audit").await;
    let cookie = sign_in(&app, "token-root").await;
    wait_until("the listener is connected", || {
        app.stream.metrics().listener_connected
    })
    .await;

    let panel = get(&app, "/admin/fragments/operations", Some(&cookie)).await;
    let page = get(&app, "/admin/operations", Some(&cookie)).await;

    let body = &panel.body;
    assert!(body.contains("connected"), "{body}");
    assert!(
        body.contains("<td>watcher</td>") && body.contains("<td>audit</td>"),
        "{body}"
    );
    assert!(
        body.contains("anomaly.detected</span></td><td>2</td>"),
        "{body}"
    );
    assert!(
        body.contains(" KiB") || body.contains(" MiB"),
        "storage size: {body}"
    );
    assert!(page.body.contains("hx-trigger=\"every 5s\""));
    drop(subscriber);
    app.stop().await;
}

#[tokio::test]
async fn static_files_carry_an_etag_and_answer_304_when_unchanged() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;

    let first = get(&app, "/admin/static/htmx.min.js", None).await;
    let etag = first.header("etag").to_owned();
    let again = send(
        &app,
        Method::GET,
        "/admin/static/htmx.min.js",
        &[("if-none-match", &etag)],
        "",
    )
    .await;
    let licence = get(&app, "/admin/static/htmx.LICENSE.txt", None).await;
    let missing = get(&app, "/admin/static/nope.js", None).await;

    assert_eq!(first.status, StatusCode::OK);
    assert!(first.header("content-type").starts_with("text/javascript"));
    assert!(etag.starts_with('"') && etag.len() > 20, "{etag}");
    assert!(
        first.header("cache-control").contains("no-cache"),
        "unversioned: revalidate"
    );
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(licence.status, StatusCode::OK);
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let signin = get(&app, "/admin/signin", None).await;
    let versioned = signin
        .body
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a script link")
        .to_owned();
    let cached = get(&app, &versioned, None).await;
    assert!(
        cached.header("cache-control").contains("immutable"),
        "{versioned}"
    );
    app.stop().await;
}

#[tokio::test]
async fn pages_send_a_strict_csp_and_hold_no_inline_script_or_style() {
    let db = TestDb::create().await;
    let app = start(&db, config()).await;
    insert(&db, "('audit', now(), '{}', NULL, NULL)").await;
    let cookie = sign_in(&app, "token-root").await;

    for path in [
        "/admin/signin",
        "/admin",
        "/admin/history",
        "/admin/operations",
    ] {
        let page = get(&app, path, Some(&cookie)).await;

        assert_eq!(page.status, StatusCode::OK, "{path}");
        let policy = page.header("content-security-policy");
        assert!(policy.contains("default-src 'none'"), "{path}: {policy}");
        assert!(policy.contains("script-src 'self'") && policy.contains("style-src 'self'"));
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(page.header("x-content-type-options"), "nosniff");
        assert_eq!(page.header("cache-control"), "no-store");
        let scripts = page.body.matches("<script").count();
        assert_eq!(
            scripts,
            page.body.matches("<script src=\"/admin/static/").count(),
            "{path}"
        );
        assert!(
            !page.body.contains("<style") && !page.body.contains(" style="),
            "{path}"
        );
        for inline in [
            "onclick=",
            "onload=",
            "onchange=",
            "onsubmit=",
            "javascript:",
        ] {
            assert!(!page.body.contains(inline), "{path}: {inline}");
        }
        assert!(
            page.body.contains("\"includeIndicatorStyles\":false"),
            "{path}"
        );
    }
    app.stop().await;
}
