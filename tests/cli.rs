//! The real `kavach-stream` binary: `serve`, `emit`, `tail`, `demo`, and its failures.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_kavach-stream");

/// A running `serve` or `demo`, with its output.
struct Process {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
    address: String,
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KAVACH_TOKENS")
        .kill_on_drop(true);
    command
}

/// Starts the binary and waits for its "listening on" line.
async fn start(mut command: Command) -> Process {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn kavach-stream");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let stderr = BufReader::new(child.stderr.take().expect("piped")).lines();

    let address = loop {
        let line = tokio::time::timeout(WAIT, stdout.next_line())
            .await
            .expect("the server starts in time")
            .expect("readable output")
            .expect("the server prints where it listens");
        if let Some(address) = line.strip_prefix("kavach-stream listening on ") {
            break address.to_owned();
        }
    };
    Process {
        child,
        stdout,
        stderr,
        address,
    }
}

/// Starts `serve` on `db` on a free port with extra arguments.
async fn serve(db: &TestDb, extra: &[&str]) -> Process {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut serve = command(&args);
    serve.env("DATABASE_URL", db.url());
    start(serve).await
}

impl Process {
    async fn next_stdout_line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("a line in time")
            .expect("readable output")
            .expect("the process is still running")
    }

    /// Sends SIGTERM and returns the exit code.
    async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("still running").to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(killed.success());
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits in time")
            .expect("wait");
        status.code()
    }
}

/// GETs `path` and returns the status and body.
async fn get(address: &str, path: &str) -> (u16, String) {
    let answer = raw_get(address, path).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs a short command to completion: exit code, stdout, stderr.
async fn run(mut command: Command) -> (Option<i32>, String, String) {
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("finishes in time")
        .expect("runs");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (
        output.status.code(),
        text(output.stdout),
        text(output.stderr),
    )
}

#[tokio::test]
async fn serve_answers_healthz_streams_a_sql_insert_and_stops_cleanly_on_sigterm() {
    let db = TestDb::create().await;
    let server = serve(&db, &["--token", "t-alice=alice"]).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let health = loop {
        let (status, body) = get(&server.address, "/healthz").await;
        if status == 200 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never healthy: {status} {body}"
        );
        tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(20)),
        )
        .await;
    };
    let health: serde_json::Value = serde_json::from_str(&health).expect("JSON health");
    assert_eq!(health["listener"]["connected"], true);
    assert!(health["notificationQueueUsage"].is_number());

    let mut client = open(
        &format!("{}/api/kavach/events/stream?token=t-alice", server.address),
        &[],
    )
    .await;
    assert_eq!(next_message(&mut client).await.event, "connected");
    db.client()
        .await
        .batch_execute("INSERT INTO kavach_stream_events (type) VALUES ('auth.signin')")
        .await
        .expect("insert");
    assert_eq!(next_event(&mut client).await.event, "auth.signin");

    let (status, metrics) = get(&server.address, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("kavach_stream_connections 1"), "{metrics}");
    assert!(
        metrics.contains("kavach_stream_events_delivered_total 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("t-alice"));
    assert_eq!(server.terminate().await, Some(0));
    until_closed(&mut client).await;
}

#[tokio::test]
async fn emit_then_tail_json_shows_the_event() {
    let db = TestDb::create().await;
    let server = serve(&db, &["--token", "t-bob=bob"]).await;

    let mut emit = command(&[
        "emit",
        "--type",
        "agent.revoked",
        "--data",
        r#"{"reason":"manual"}"#,
        "--agent-id",
        "agent-7",
    ]);
    emit.env("DATABASE_URL", db.url());
    let (code, stdout, stderr) = run(emit).await;
    assert_eq!(code, Some(0), "{stderr}");
    let id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("id "))
        .expect("the id is printed")
        .to_owned();
    assert!(
        stdout.lines().any(|line| line.starts_with("cursor ")),
        "{stdout}"
    );

    let url = format!("{}/api/kavach/events/stream", server.address);
    let tail = command(&[
        "tail",
        "--url",
        &url,
        "--token",
        "t-bob",
        "--json",
        "--since",
        "2000-01-01T00:00:00Z",
    ]);
    let mut tail = tail_process(tail).await;
    let line = tail.next_line().await;
    let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");

    assert_eq!(event["id"], id);
    assert_eq!(event["type"], "agent.revoked");
    assert_eq!(event["data"]["reason"], "manual");
    assert_eq!(event["agentId"], "agent-7");
    drop(tail);
    assert_eq!(server.terminate().await, Some(0));
}

/// A running `tail` and its output lines.
struct Tail {
    _child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Tail {
    async fn next_line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("tail prints in time")
            .expect("readable")
            .expect("tail still runs")
    }
}

async fn tail_process(mut command: Command) -> Tail {
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn tail");
    let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    Tail {
        _child: child,
        stdout,
    }
}

#[tokio::test]
async fn demo_produces_all_twelve_types_within_seconds_on_its_own_database() {
    let mut demo = start(command(&["demo", "--listen", "127.0.0.1:0"])).await;
    let dashboard_line = demo.next_stdout_line().await;
    let token = dashboard_line
        .rsplit(' ')
        .next()
        .expect("a token")
        .trim_end_matches(')')
        .to_owned();

    let url = format!(
        "{}/api/kavach/events/stream?token={token}&since=2000-01-01T00:00:00Z",
        demo.address
    );
    let mut client = open(&url, &[]).await;
    let mut seen = BTreeSet::new();
    while seen.len() < 12 {
        seen.insert(next_event(&mut client).await.event);
    }
    let database_dir = loop {
        let line = tokio::time::timeout(WAIT, demo.stderr.next_line())
            .await
            .expect("logs")
            .expect("readable")
            .expect("open");
        if let Some((_, rest)) = line.split_once("temporary PostgreSQL in ") {
            break std::path::PathBuf::from(rest.split_whitespace().next().expect("a path"));
        }
    };

    assert_eq!(seen.len(), 12, "{seen:?}");
    let (signin, page) = get(&demo.address, "/admin/signin").await;
    assert_eq!(signin, 200, "the printed dashboard is served: {page}");
    assert!(database_dir.exists());
    assert_eq!(demo.terminate().await, Some(0));
    assert!(
        !database_dir.exists(),
        "the temporary PostgreSQL is removed at exit"
    );
}

#[tokio::test]
async fn a_bad_database_url_is_one_line_and_a_nonzero_exit() {
    let mut serve = command(&["serve", "--listen", "127.0.0.1:0", "--token", "t=u"]);
    serve.env(
        "DATABASE_URL",
        "postgresql://nobody:hunter2@127.0.0.1:1/nothing",
    );

    let (code, _, stderr) = run(serve).await;

    assert_eq!(code, Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot start the event stream on nobody@127.0.0.1:1/nothing"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the password never appears");
}

#[tokio::test]
async fn a_port_in_use_is_one_line_and_a_nonzero_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();

    let (code, _, stderr) = run(command(&["serve", "--listen", &address, "--token", "t=u"])).await;

    assert_eq!(code, Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn emit_refuses_a_malformed_type_or_data_with_a_clear_error() {
    let db = TestDb::create().await;

    for (args, expected) in [
        (
            ["emit", "--type", "Bad Type", "--data", "{}"],
            "invalid event type",
        ),
        (
            ["emit", "--type", "audit", "--data", "[1]"],
            "must be a JSON object",
        ),
        (
            ["emit", "--type", "audit", "--data", "{oops"],
            "--data is not valid JSON",
        ),
    ] {
        let mut emit = command(&args);
        emit.env("DATABASE_URL", db.url());

        let (code, _, stderr) = run(emit).await;

        assert_eq!(code, Some(1), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn migrate_reports_what_it_applied_and_is_a_no_op_the_second_time() {
    let db = TestDb::create_empty().await;
    let migrate = || {
        let mut migrate = command(&["migrate"]);
        migrate.env("DATABASE_URL", db.url());
        migrate
    };

    let (first_code, first, first_errors) = run(migrate()).await;
    let (second_code, second, _) = run(migrate()).await;

    assert_eq!(first_code, Some(0), "{first_errors}");
    assert!(first.contains("applied 0001_events.sql"), "{first}");
    assert!(
        first.contains("applied 0002_commit_sequencer.sql"),
        "{first}"
    );
    assert_eq!(second_code, Some(0));
    assert!(second.starts_with("schema is up to date"), "{second}");
}

/// Waits until `/metrics` reports `connections` open SSE connections.
async fn wait_for_connections(address: &str, connections: usize) {
    let expected = format!("kavach_stream_connections {connections}\n");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(address, "/metrics").await;
        if metrics.contains(&expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {expected}: {metrics}"
        );
        tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(20)),
        )
        .await;
    }
}

#[tokio::test]
async fn headers_trickled_byte_by_byte_are_cut_off_by_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = TestDb::create().await;
    let server = serve(&db, &["--token", "t=u", "--header-timeout-ms", "300"]).await;
    let mut socket = tokio::net::TcpStream::connect(server.address.trim_start_matches("http://"))
        .await
        .expect("connect");

    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = tokio::time::Instant::now();
    let mut closed = false;
    for byte in request {
        socket.write_all(&[*byte]).await.ok();
        // Wait up to 100 ms for the server to give up on us before trickling the next byte.
        let mut answer = [0u8; 256];
        if let Ok(read) = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            socket.read(&mut answer),
        )
        .await
        {
            closed = matches!(read, Ok(0) | Err(_)) || answer.starts_with(b"HTTP/1.1 408");
            break;
        }
    }

    assert!(closed, "the server cut the connection");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "long before the headers were complete"
    );
    assert_eq!(server.terminate().await, Some(0));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;

    let db = TestDb::create().await;
    let server = serve(&db, &["--token", "t=u", "--write-timeout-ms", "300"]).await;
    let address: std::net::SocketAddr = server
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(16 * 1024)
        .expect("a small receive buffer");
    let mut stalled = socket.connect(address).await.expect("connect");
    let request = "GET /api/kavach/events/stream?token=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    stalled
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    wait_for_connections(&server.address, 1).await;

    // About 24 MB of frames: far more than the socket buffers hold.
    db.client()
        .await
        .batch_execute("INSERT INTO kavach_stream_events (type, data) SELECT 'audit', jsonb_build_object('blob', repeat('x', 60000)) FROM generate_series(1, 400)")
        .await
        .expect("insert");

    wait_for_connections(&server.address, 0).await;
    drop(stalled);
    assert_eq!(server.terminate().await, Some(0));
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = TestDb::create().await;
    let server = serve(&db, &["--token", "t=u"]).await;
    let mut socket = tokio::net::TcpStream::connect(server.address.trim_start_matches("http://"))
        .await
        .expect("connect");

    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let _ = socket.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, socket.read_to_end(&mut answer))
        .await
        .expect("an answer in time");

    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(server.terminate().await, Some(0));
}

#[tokio::test]
async fn serve_accepts_hs256_jwts_and_ends_the_stream_when_one_expires() {
    use jsonwebtoken::{encode, EncodingKey, Header};

    let db = TestDb::create().await;
    let server = serve(&db, &["--jwt-secret", "shared-secret"]).await;
    let token = |exp: i64| {
        let claims = serde_json::json!({ "sub": "carol", "exp": exp });
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"shared-secret"),
        )
        .expect("sign")
    };
    let url = format!("{}/api/kavach/events/stream", server.address);
    let now = chrono::Utc::now().timestamp();

    let mut expired = open(
        &url,
        &[("authorization", &format!("Bearer {}", token(now - 60)))],
    )
    .await;
    let mut expiring = open(
        &url,
        &[("authorization", &format!("Bearer {}", token(now + 2)))],
    )
    .await;

    assert_eq!(
        json(&next_message(&mut expired).await)["code"],
        "UNAUTHORIZED"
    );
    let connected = next_message(&mut expiring).await;
    assert_eq!(json(&connected)["subscriber"], "carol");
    let ended = next_message(&mut expiring).await;
    assert_eq!(
        (ended.event.as_str(), json(&ended)["code"].clone()),
        ("error", "TOKEN_EXPIRED".into())
    );
    assert_eq!(server.terminate().await, Some(0));
}

#[tokio::test]
async fn a_database_the_role_cannot_write_is_one_line_and_a_nonzero_exit() {
    let db = TestDb::create_empty().await;
    let role = format!("kavach_reader_{}", std::process::id());
    db.client()
        .await
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"
        ))
        .await
        .expect("create a role without privileges");
    let mut serve = command(&["serve", "--listen", "127.0.0.1:0", "--token", "t=u"]);
    serve.env("DATABASE_URL", format!("{} user={role}", db.url()));

    let (code, _, stderr) = run(serve).await;

    assert_eq!(code, Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
}

/// Reads from `socket` until what was received contains `needle`; returns all of it.
async fn read_until(socket: &mut tokio::net::TcpStream, received: &mut Vec<u8>, needle: &str) {
    use tokio::io::AsyncReadExt;

    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(received).contains(needle) {
        let mut buffer = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, socket.read(&mut buffer))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "never received {needle:?}: {}",
                    String::from_utf8_lossy(received)
                )
            })
            .expect("readable");
        assert!(
            read > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(received)
        );
        received.extend_from_slice(&buffer[..read]);
    }
}

#[tokio::test]
async fn stream_requests_are_served_on_the_socket_in_http_1_1_and_1_0_and_others_reach_the_app() {
    use tokio::io::AsyncWriteExt;

    let db = TestDb::create().await;
    let server = serve(&db, &["--token", "t=u"]).await;
    let host = server.address.trim_start_matches("http://").to_owned();

    // HTTP/1.1, the head sent in pieces: chunked, and the slot is freed when the client leaves.
    let mut chunked = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    chunked.set_nodelay(true).expect("nodelay");
    for piece in [
        "GET /api/kavach/events/stream?token=t HT",
        "TP/1.1\r\nHost: x\r\nAccept: text/event-",
        "stream\r\n\r\n",
    ] {
        chunked.write_all(piece.as_bytes()).await.expect("send");
    }
    let mut received = Vec::new();
    read_until(&mut chunked, &mut received, "event: connected").await;
    let text = String::from_utf8_lossy(&received).to_string();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("content-type: text/event-stream\r\n"),
        "{text}"
    );
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");

    // HTTP/1.0: no chunked framing, the body runs until the connection closes.
    let mut plain = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    plain
        .write_all(
            b"GET /api/kavach/events/stream?token=t HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .expect("send");
    let mut plain_received = Vec::new();
    read_until(&mut plain, &mut plain_received, "event: connected").await;
    let plain_text = String::from_utf8_lossy(&plain_received).to_string();
    assert!(!plain_text.contains("transfer-encoding"), "{plain_text}");
    let body = plain_text.split_once("\r\n\r\n").expect("a head").1;
    assert!(
        body.starts_with("retry:")
            || body.starts_with(':')
            || body.starts_with("event:")
            || body.starts_with("id:"),
        "{body}"
    );

    wait_for_connections(&server.address, 2).await;
    db.client()
        .await
        .batch_execute("INSERT INTO kavach_stream_events (type) VALUES ('agent.created')")
        .await
        .expect("insert");
    read_until(&mut chunked, &mut received, "event: agent.created").await;
    read_until(&mut plain, &mut plain_received, "event: agent.created").await;
    drop(chunked);
    drop(plain);
    wait_for_connections(&server.address, 0).await;

    // Two pipelined requests that are not stream requests: the app answers both, in order.
    let mut pipelined = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    pipelined
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut answers = Vec::new();
    read_until(&mut pipelined, &mut answers, "HTTP/1.1 404").await;
    assert!(String::from_utf8_lossy(&answers).starts_with("HTTP/1.1 200 OK\r\n"));

    assert_eq!(server.terminate().await, Some(0));
}
