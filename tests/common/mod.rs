//! The integration tests' harness: a real PostgreSQL (`DATABASE_URL`, or one temporary cluster
//! per test process), a fresh database per test, the real stream served on a real socket, and an
//! SSE client that waits on conditions with timeouts.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use kavach_stream::client::{SseItem, SseMessage, SseRequest, SseResponse};
use kavach_stream::embedded::{TempPostgres, TempPostgresOptions};
use kavach_stream::{EventStream, StreamConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Where test databases are created.
struct Server {
    /// Connection string of a database to run `CREATE DATABASE` from.
    admin: String,
    /// The template every test database is copied from, already migrated.
    template: String,
    /// Keeps the temporary cluster alive for the whole test process.
    _cluster: Option<std::sync::mpsc::Sender<()>>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

/// A fresh, migrated database of its own.
pub struct TestDb {
    pub name: String,
    pub pg_config: tokio_postgres::Config,
}

impl TestDb {
    /// Creates a database from the migrated template.
    pub async fn create() -> TestDb {
        Self::create_from(&server().template).await
    }

    /// Creates a database with no schema at all.
    pub async fn create_empty() -> TestDb {
        Self::create_from("template0").await
    }

    async fn create_from(template: &str) -> TestDb {
        let server = server();
        let name = format!(
            "kavach_test_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );

        let admin = connect(&server.admin).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .expect("create the test database");

        let mut pg_config: tokio_postgres::Config =
            server.admin.parse().expect("a valid connection string");
        pg_config.dbname(&name);
        TestDb { name, pg_config }
    }

    /// A connection string for this database, as a child process would take in DATABASE_URL.
    pub fn url(&self) -> String {
        let admin = &server().admin;
        if admin.starts_with("postgres://") || admin.starts_with("postgresql://") {
            let (base, _) = admin.rsplit_once('/').expect("a URL with a path");
            let query = admin
                .split_once('?')
                .map_or(String::new(), |(_, query)| format!("?{query}"));
            format!("{base}/{}{query}", self.name)
        } else {
            // In key=value form a later key wins.
            format!("{admin} dbname={}", self.name)
        }
    }

    /// A new connection to this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = self
            .pg_config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }
}

async fn connect(connection_string: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(connection_string, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("connect to {connection_string}: {error}"));
    tokio::spawn(connection);
    client
}

/// The database server of this test process, started on first use.
fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        // Started on a thread with a runtime of its own that outlives every test's runtime.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime for the test database");
            runtime.block_on(async move {
                let (admin, cluster) = match std::env::var("DATABASE_URL") {
                    Ok(url) => (url, None),
                    Err(_) => {
                        let options = TempPostgresOptions {
                            settings: vec![
                                ("fsync".into(), "off".into()),
                                ("synchronous_commit".into(), "off".into()),
                                ("full_page_writes".into(), "off".into()),
                                ("max_connections".into(), "500".into()),
                            ],
                        };
                        let cluster = TempPostgres::start(options)
                            .await
                            .expect("start a temporary PostgreSQL");
                        (cluster.connection_string(), Some(cluster))
                    }
                };
                let template = prepare_template(&admin).await;
                let (keep_tx, keep_rx) = std::sync::mpsc::channel::<()>();
                ready_tx
                    .send(Server {
                        admin,
                        template,
                        _cluster: Some(keep_tx),
                    })
                    .expect("the test thread waits");
                // Hold the cluster until the process exits; the cluster cleans itself up then.
                let _cluster = cluster;
                let _ = tokio::task::spawn_blocking(move || keep_rx.recv()).await;
            });
        });
        ready_rx.recv().expect("the test database thread reports")
    })
}

/// Creates and migrates the template database of this test process.
async fn prepare_template(admin: &str) -> String {
    let template = format!("kavach_template_{}", std::process::id());
    let client = connect(admin).await;
    for statement in [
        format!("DROP DATABASE IF EXISTS {template}"),
        format!("CREATE DATABASE {template}"),
    ] {
        client
            .batch_execute(&statement)
            .await
            .expect("create the template database");
    }

    let mut pg_config: tokio_postgres::Config = admin.parse().expect("a valid connection string");
    pg_config.dbname(&template);
    let (mut template_client, connection) = pg_config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the template");
    let driver = tokio::spawn(connection);
    kavach_stream::migrate(&mut template_client)
        .await
        .expect("migrate the template");
    drop(template_client);
    let _ = driver.await;
    template
}

/// A stream served over HTTP on 127.0.0.1.
pub struct TestApp {
    pub stream: EventStream,
    pub base_url: String,
    server: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl TestApp {
    /// Starts a stream on `db` and serves its router on a free port.
    pub async fn start(db: &TestDb, config: StreamConfig) -> TestApp {
        let stream = EventStream::connect(db.pg_config.clone(), config)
            .await
            .expect("start the stream");
        Self::serve(stream, "127.0.0.1:0").await
    }

    /// Serves an already started stream at `address`.
    pub async fn serve(stream: EventStream, address: &str) -> TestApp {
        let app = stream.router();
        Self::serve_app(stream, address, app).await
    }

    /// Serves `app` (a router built around `stream`, e.g. with the dashboard merged in) at
    /// `address`.
    pub async fn serve_app(stream: EventStream, address: &str, app: axum::Router) -> TestApp {
        let listener = TcpListener::bind(address).await.expect("bind a test port");
        let base_url = format!("http://{}", listener.local_addr().expect("a bound address"));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
                .expect("serve the test app");
        });
        TestApp {
            stream,
            base_url,
            server,
            stop,
        }
    }

    /// The stream URL with a query string (without the `?`).
    pub fn url(&self, query: &str) -> String {
        format!("{}/api/kavach/events/stream?{query}", self.base_url)
    }

    /// Closes the stream (ending its connections) and stops serving.
    pub async fn stop(self) {
        self.stream.close().await;
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("the server stops")
            .expect("the server task ends cleanly");
    }
}

/// A config with auth on: token `token-<id>` is subscriber `<id>`, anything else is invalid.
pub fn config() -> StreamConfig {
    StreamConfig::default().validate_token(|token: String| async move {
        Ok::<_, std::io::Error>(token.strip_prefix("token-").map(str::to_owned))
    })
}

/// Opens an SSE connection with the given headers.
pub async fn open(url: &str, headers: &[(&str, &str)]) -> SseResponse {
    let mut request = SseRequest::new(url).expect("a valid URL");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    tokio::time::timeout(WAIT, request.send())
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Opens an authenticated connection as `subscriber` and waits for its `connected` frame.
pub async fn subscribe(app: &TestApp, subscriber: &str, query: &str) -> SseResponse {
    let url = app.url(&format!("token=token-{subscriber}&{query}"));
    let mut response = open(&url, &[]).await;
    assert_eq!(response.status(), 200);
    let connected = next_message(&mut response).await;
    assert_eq!(connected.event, "connected", "{connected:?}");
    response
}

/// The next item, failing the test if none comes in time.
pub async fn next_item(response: &mut SseResponse) -> SseItem {
    tokio::time::timeout(WAIT, response.next())
        .await
        .expect("an SSE item in time")
        .expect("a readable stream")
        .expect("the stream is still open")
}

/// The next message, skipping comments.
pub async fn next_message(response: &mut SseResponse) -> SseMessage {
    loop {
        if let SseItem::Message(message) = next_item(response).await {
            return message;
        }
    }
}

/// The next event frame (one with an `id:`), skipping comments and control frames.
pub async fn next_event(response: &mut SseResponse) -> SseMessage {
    loop {
        let message = next_message(response).await;
        if message.id.is_some() {
            return message;
        }
    }
}

/// The next `count` event frames.
pub async fn events(response: &mut SseResponse, count: usize) -> Vec<SseMessage> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        received.push(next_event(response).await);
    }
    received
}

/// Waits until the stream ends (the server closed it).
pub async fn until_closed(response: &mut SseResponse) -> Vec<SseItem> {
    let mut rest = Vec::new();
    loop {
        let item = tokio::time::timeout(WAIT, response.next())
            .await
            .expect("the stream ends in time");
        match item {
            Ok(Some(item)) => rest.push(item),
            Ok(None) | Err(_) => return rest,
        }
    }
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(10)),
        )
        .await;
    }
}

/// The JSON data of a message.
pub fn json(message: &SseMessage) -> serde_json::Value {
    serde_json::from_str(&message.data)
        .unwrap_or_else(|error| panic!("JSON data in {message:?}: {error}"))
}

/// A plain GET without `Accept: text/event-stream`, answered as raw HTTP text.
pub async fn raw_get(base_url: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let address = base_url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = String::new();
    tokio::time::timeout(WAIT, socket.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    answer
}
