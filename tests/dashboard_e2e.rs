//! The dashboard end to end: headless Chromium, driven over WebDriver (chromedriver), against the
//! real server and a real PostgreSQL. Events are written by plain SQL, as any client would.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`);
//! without them the test fails and says so. Screenshots land in `target/dashboard-live.png` and
//! `target/dashboard-history.png`.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use kavach_stream::dashboard::{self, DashboardConfig};
use kavach_stream::EventStream;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How soon a committed event must show in the live feed.
const LIVE_WITHIN: Duration = Duration::from_secs(2);

/// Events written before the page opens: more than one history page.
const EARLIER_EVENTS: usize = 130;

#[tokio::test]
async fn dashboard_end_to_end_in_headless_chromium() {
    let db = TestDb::create().await;
    write_earlier_events(&db).await;
    let app = serve(connect(&db).await, "127.0.0.1:0").await;
    let address = app.base_url.trim_start_matches("http://").to_owned();
    let driver = Driver::start().await;
    let browser = driver.browser().await;

    sign_in(&browser, &app.base_url).await;
    live_feed_shows_new_events_within_two_seconds(&browser, &db).await;
    pausing_holds_new_rows_until_resumed(&browser, &db).await;
    unchecking_a_type_hides_its_new_events_and_survives_a_reload(&browser, &db).await;
    history_shows_earlier_events_and_pages_older(&browser).await;
    detail_shows_the_whole_event_and_hostile_data_as_text(&browser).await;
    let app = feed_continues_across_a_server_restart(&browser, &db, app, &address).await;
    signed_out_the_pages_are_unreachable(&browser, &app.base_url).await;

    browser.close().await.expect("end the browser session");
    driver.stop().await;
    app.stop().await;
}

async fn sign_in(browser: &Client, base_url: &str) {
    browser
        .goto(&format!("{base_url}/admin"))
        .await
        .expect("open the dashboard");
    assert_eq!(path_of(browser).await, "/admin/signin", "sent to sign in");

    let token = browser
        .find(Locator::Id("token"))
        .await
        .expect("a token field");
    token.send_keys("token-root").await.expect("type the token");
    click(
        browser,
        "form[action='/admin/signin'] button[type='submit']",
    )
    .await;

    eventually("the live feed opens", WAIT, move || async move {
        path_of(browser).await == "/admin"
    })
    .await;
    wait_until_live(browser).await;
}

async fn live_feed_shows_new_events_within_two_seconds(browser: &Client, db: &TestDb) {
    let written = Instant::now();
    insert(
        db,
        "auth.signin",
        "live-1",
        json!({ "ip": "10.0.0.7", "method": "token" }),
    )
    .await;

    eventually("the new event shows", LIVE_WITHIN, move || async move {
        live_agents(browser).await.contains(&"live-1".to_owned())
    })
    .await;
    println!(
        "a new event showed {:?} after its commit",
        written.elapsed()
    );

    write_one_of_each_family(db).await;
    eventually("every family shows", WAIT, move || async move {
        live_agents(browser)
            .await
            .iter()
            .filter(|agent| agent.starts_with("svc-"))
            .count()
            == 10
    })
    .await;
    save_screenshot(browser, "dashboard-live.png").await;
}

async fn pausing_holds_new_rows_until_resumed(browser: &Client, db: &TestDb) {
    click(browser, "#pause").await;
    insert(db, "audit", "while-paused", json!({})).await;

    eventually("the held row is counted", WAIT, move || async move {
        text_of(browser, "#feed-status").await == "Paused: 1 new event waiting"
    })
    .await;
    assert!(!live_agents(browser)
        .await
        .contains(&"while-paused".to_owned()));
    click(browser, "#pause").await;
    eventually("the held row shows on resume", WAIT, move || async move {
        live_agents(browser).await.first().map(String::as_str) == Some("while-paused")
    })
    .await;
}

async fn unchecking_a_type_hides_its_new_events_and_survives_a_reload(
    browser: &Client,
    db: &TestDb,
) {
    click(browser, "input[name='types'][value='auth.signin']").await;
    wait_until_live(browser).await;
    insert(db, "auth.signin", "hidden-1", json!({})).await;
    insert(db, "audit", "visible-1", json!({})).await;

    eventually(
        "an event of a checked type shows",
        WAIT,
        move || async move { live_agents(browser).await.contains(&"visible-1".to_owned()) },
    )
    .await;
    let agents = live_agents(browser).await;
    assert!(!agents.contains(&"hidden-1".to_owned()), "{agents:?}");
    assert!(
        !agents.contains(&"live-1".to_owned()),
        "shown rows of that type hide too"
    );
    let url = browser.current_url().await.expect("the URL");
    let types = url
        .query_pairs()
        .find(|(name, _)| name == "types")
        .map(|(_, value)| value.into_owned())
        .expect("the filter is in the URL");
    assert!(
        types.contains("audit") && !types.contains("auth.signin"),
        "{types}"
    );

    browser.refresh().await.expect("reload");
    wait_until_live(browser).await;
    assert!(
        !checkbox(browser, "auth.signin").await,
        "the filter survives a reload"
    );
    assert!(checkbox(browser, "audit").await);
    let agents = live_agents(browser).await;
    assert!(agents.contains(&"visible-1".to_owned()) && !agents.contains(&"hidden-1".to_owned()));
}

async fn history_shows_earlier_events_and_pages_older(browser: &Client) {
    click(browser, "nav a[data-path='/admin/history']").await;
    eventually("history opens", WAIT, move || async move {
        path_of(browser).await == "/admin/history"
    })
    .await;

    let first_page = history_agents(browser).await;
    assert_eq!(first_page.len(), 100, "one page of 100");
    assert!(first_page.contains(&format!("before-{EARLIER_EVENTS}")));
    assert!(
        !first_page.contains(&"hidden-1".to_owned()),
        "the type filter applies"
    );
    let count = text_of(browser, "#history-count").await;
    assert!(count.contains("matching events"), "{count}");
    save_screenshot(browser, "dashboard-history.png").await;

    click(browser, "#load-older a").await;
    eventually("older events load", WAIT, move || async move {
        history_agents(browser)
            .await
            .contains(&"before-1".to_owned())
    })
    .await;
    let all = history_agents(browser).await;
    assert_eq!(
        all.len(),
        all.iter().collect::<HashSet<_>>().len(),
        "no repeats"
    );
    assert_eq!(&all[..100], &first_page[..], "older rows go below");
}

async fn detail_shows_the_whole_event_and_hostile_data_as_text(browser: &Client) {
    let needle = "//tr[td[@class='agent' and text()='needle']]//a[@class='event-link']";
    browser
        .find(Locator::XPath(needle))
        .await
        .expect("the needle's row")
        .click()
        .await
        .expect("open its detail");

    eventually("the detail dialog opens", WAIT, move || async move {
        script(browser, "return document.getElementById('detail').open").await == json!(true)
    })
    .await;
    let data = text_of(browser, "#detail pre.data").await;
    assert!(data.contains("\"detail_marker\": \"needle-42\""), "{data}");
    assert!(data.contains('\n'), "pretty-printed: {data}");
    let detail = text_of(browser, "#detail dl").await;
    assert!(
        detail.contains("Cursor") && detail.contains("needle-user"),
        "{detail}"
    );
    click(browser, "#detail button.close").await;

    let hostile = "//tr[td[@class='agent' and text()='hostile']]/td[@class='summary']";
    let summary = browser
        .find(Locator::XPath(hostile))
        .await
        .expect("the hostile row");
    let text = summary.text().await.expect("its text");
    assert_eq!(text, "note: <script>alert(1)</script>");
    let scripts = script(
        browser,
        "return document.querySelectorAll('main script').length",
    )
    .await;
    assert_eq!(scripts, json!(0), "no script element came from event data");
}

async fn feed_continues_across_a_server_restart(
    browser: &Client,
    db: &TestDb,
    app: TestApp,
    address: &str,
) -> TestApp {
    click(browser, "nav a[data-path='/admin']").await;
    wait_until_live(browser).await;
    insert(db, "audit", "restart-1", json!({})).await;
    eventually("restart-1 shows", WAIT, move || async move {
        live_agents(browser).await.contains(&"restart-1".to_owned())
    })
    .await;

    app.stop().await;
    insert(db, "audit", "restart-2", json!({})).await;
    insert(db, "audit", "restart-3", json!({})).await;
    let app = serve(connect(db).await, address).await;

    eventually("events written while down show", WAIT, move || async move {
        let agents = live_agents(browser).await;
        agents.contains(&"restart-2".to_owned()) && agents.contains(&"restart-3".to_owned())
    })
    .await;
    insert(db, "audit", "restart-4", json!({})).await;
    eventually("restart-4 shows", WAIT, move || async move {
        live_agents(browser).await.contains(&"restart-4".to_owned())
    })
    .await;

    let agents = live_agents(browser).await;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    agents
        .iter()
        .for_each(|agent| *seen.entry(agent).or_default() += 1);
    for name in ["restart-1", "restart-2", "restart-3", "restart-4"] {
        assert_eq!(seen.get(name), Some(&1), "{name} shows once: {agents:?}");
    }
    let cursors = script(
        browser,
        "return Array.from(document.querySelectorAll('#live-rows tr.event')).map(r => r.dataset.cursor)",
    )
    .await;
    let cursors: Vec<&str> = cursors
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        cursors.len(),
        cursors.iter().collect::<HashSet<_>>().len(),
        "no row twice"
    );
    let newest_first = cursors
        .iter()
        .map(|cursor| position(cursor))
        .collect::<Vec<_>>();
    assert!(
        newest_first.windows(2).all(|pair| pair[0] >= pair[1]),
        "{cursors:?}"
    );
    app
}

async fn signed_out_the_pages_are_unreachable(browser: &Client, base_url: &str) {
    click(browser, "form.signout button").await;
    eventually("signed out", WAIT, move || async move {
        path_of(browser).await == "/admin/signin"
    })
    .await;

    for page in ["/admin", "/admin/history", "/admin/operations"] {
        browser
            .goto(&format!("{base_url}{page}"))
            .await
            .expect("open a page");
        assert_eq!(path_of(browser).await, "/admin/signin", "{page}");
    }
    let status = script(
        browser,
        "const request = new XMLHttpRequest(); \
         request.open('GET', '/admin/fragments/operations', false); request.send(); \
         return request.status;",
    )
    .await;
    assert_eq!(status, json!(401));
}

// ---- The application -------------------------------------------------------------------------

async fn connect(db: &TestDb) -> EventStream {
    EventStream::connect(db.pg_config.clone(), config())
        .await
        .expect("start the stream")
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

async fn insert(db: &TestDb, event_type: &str, agent: &str, data: Value) {
    db.client()
        .await
        .execute(
            "INSERT INTO kavach_stream_events (type, agent_id, data) VALUES ($1, $2, $3)",
            &[&event_type, &agent, &data],
        )
        .await
        .expect("insert an event");
}

async fn write_earlier_events(db: &TestDb) {
    let client = db.client().await;
    let sql = format!(
        "INSERT INTO kavach_stream_events (type, agent_id, timestamp, data) \
         SELECT 'audit', 'before-' || n, now() - interval '1 hour' + n * interval '1 second', \
                jsonb_build_object('action', 'policy.read', 'n', n) \
         FROM generate_series(1, {EARLIER_EVENTS}) AS n"
    );
    client
        .batch_execute(&sql)
        .await
        .expect("write earlier events");
    client
        .batch_execute(
            "INSERT INTO kavach_stream_events (type, agent_id, user_id, data) VALUES \
             ('audit', 'needle', 'needle-user', \
              '{\"detail_marker\": \"needle-42\", \"scopes\": [\"read\", \"write\"]}'); \
             INSERT INTO kavach_stream_events (type, agent_id, data) VALUES \
             ('audit', 'hostile', '{\"note\": \"<script>alert(1)</script>\"}')",
        )
        .await
        .expect("write the needle and the hostile event");
}

async fn write_one_of_each_family(db: &TestDb) {
    let events = [
        (
            "agent.created",
            json!({ "name": "billing-bot", "scopes": ["invoices:read"] }),
        ),
        ("agent.rotated", json!({ "keyId": "k-19" })),
        (
            "auth.failed",
            json!({ "reason": "expired token", "ip": "203.0.113.9" }),
        ),
        ("auth.signout", json!({ "session": "s-77" })),
        (
            "delegation.created",
            json!({ "from": "alice", "to": "billing-bot" }),
        ),
        (
            "budget.exceeded",
            json!({ "limit": 100, "spent": 112.5, "currency": "EUR" }),
        ),
        ("cost.recorded", json!({ "amount": 0.42, "model": "small" })),
        (
            "anomaly.detected",
            json!({ "score": 0.97, "rule": "burst" }),
        ),
        (
            "audit",
            json!({ "action": "policy.update", "policy": "default" }),
        ),
        ("plugin.webhook_sent", json!({ "status": 202 })),
    ];
    for (index, (event_type, data)) in events.into_iter().enumerate() {
        insert(db, event_type, &format!("svc-{index}"), data).await;
    }
}

// ---- The browser ------------------------------------------------------------------------------

/// A chromedriver on a free local port, and a fresh Chromium profile; both go away on drop.
struct Driver {
    process: Child,
    url: String,
    profile: PathBuf,
}

impl Driver {
    async fn start() -> Driver {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install Chromium and its WebDriver to run the dashboard's \
                 end-to-end test (Debian: `apt-get install chromium chromium-driver`)"
            );
        }
        let port = free_port().await;
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browsers it starts can be ended with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let profile =
            std::env::temp_dir().join(format!("kavach-e2e-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&profile).expect("a Chromium profile directory");

        let driver = Driver {
            process,
            url: format!("http://127.0.0.1:{port}"),
            profile,
        };
        driver.wait_until_ready(port).await;
        driver
    }

    /// Polls chromedriver's `/status` until it answers ready.
    async fn wait_until_ready(&self, port: u16) {
        eventually("chromedriver is ready", WAIT, move || async move {
            let attempt = tokio::time::timeout(Duration::from_secs(1), status_of(port));
            attempt
                .await
                .ok()
                .flatten()
                .is_some_and(|status| status["value"]["ready"] == true)
        })
        .await;
    }

    async fn browser(&self) -> Client {
        let arguments = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--window-size=1280,900",
        ];
        let mut arguments: Vec<String> = arguments.iter().map(|a| a.to_string()).collect();
        arguments.push(format!("--user-data-dir={}", self.profile.display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": CHROMIUM, "args": arguments }),
        );

        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        tokio::time::timeout(WAIT * 2, builder.connect(&self.url))
            .await
            .expect("Chromium starts in time")
            .expect("a Chromium session")
    }

    async fn stop(mut self) {
        self.end_process_group();
        let _ = self.process.wait().await;
    }

    fn end_process_group(&mut self) {
        if let Some(id) = self.process.id() {
            // The group of the chromedriver this test started, by its id (see `process_group`).
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{id}")])
                .status();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.end_process_group();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// chromedriver's `/status` answer, or `None` while it is not listening yet.
async fn status_of(port: u16) -> Option<Value> {
    let socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = http::Request::get("/status")
        .header("host", format!("127.0.0.1:{port}"))
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    listener.local_addr().expect("an address").port()
}

async fn script(browser: &Client, source: &str) -> Value {
    browser
        .execute(source, Vec::new())
        .await
        .expect("run a script")
}

async fn click(browser: &Client, selector: &str) {
    browser
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|error| panic!("find {selector}: {error}"))
        .click()
        .await
        .unwrap_or_else(|error| panic!("click {selector}: {error}"));
}

async fn text_of(browser: &Client, selector: &str) -> String {
    browser
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|error| panic!("find {selector}: {error}"))
        .text()
        .await
        .expect("its text")
}

async fn checkbox(browser: &Client, event_type: &str) -> bool {
    let selector = format!("input[name='types'][value='{event_type}']");
    browser
        .find(Locator::Css(&selector))
        .await
        .expect("the type's checkbox")
        .is_selected()
        .await
        .expect("its state")
}

async fn path_of(browser: &Client) -> String {
    browser
        .current_url()
        .await
        .expect("the URL")
        .path()
        .to_owned()
}

async fn wait_until_live(browser: &Client) {
    eventually("the feed is live", WAIT, move || async move {
        let state = "return document.getElementById('feed-status').dataset.state";
        script(browser, state).await == json!("live")
    })
    .await;
}

/// The agents of the visible live rows, newest first.
async fn live_agents(browser: &Client) -> Vec<String> {
    agents_in(browser, "#live-rows tr.event:not([hidden]) td.agent").await
}

async fn history_agents(browser: &Client) -> Vec<String> {
    agents_in(browser, "#history-rows tr.event td.agent").await
}

async fn agents_in(browser: &Client, selector: &str) -> Vec<String> {
    let source = format!(
        "return Array.from(document.querySelectorAll(\"{selector}\")).map(cell => cell.textContent)"
    );
    let agents = script(browser, &source).await;
    agents
        .as_array()
        .map(|agents| {
            agents
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn position(cursor: &str) -> (i64, i64) {
    let (position, seq) = cursor.split_once('-').expect("a cursor");
    (
        position.parse().expect("a position"),
        seq.parse().expect("a seq"),
    )
}

async fn save_screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    std::fs::write(&path, png).expect("save the screenshot");
    println!("saved {}", path.display());
}

/// Polls `check` until it holds, failing the test after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(50))).await;
    }
}
