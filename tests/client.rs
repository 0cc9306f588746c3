//! Tests `client::SseRequest`/`SseResponse` against a hand-written HTTP/1.1 server on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kavach_stream::client::{ClientError, SseItem, SseMessage, SseRequest, SseResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server saw of the one request it answered.
#[derive(Debug)]
struct SeenRequest {
    peer: SocketAddr,
    /// The request head, lower-cased.
    head: String,
}

/// Serves one connection on 127.0.0.1: reads the request head, then writes `parts` one by one
/// (flushing each) and closes the connection.
async fn serve_once(parts: Vec<Vec<u8>>) -> (SocketAddr, oneshot::Receiver<SeenRequest>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let address = listener.local_addr().expect("local address");
    let (seen_sender, seen) = oneshot::channel();

    tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.expect("accept");
        let head = read_request_head(&mut stream).await;
        seen_sender
            .send(SeenRequest { peer, head })
            .expect("test is waiting");

        for part in parts {
            stream.write_all(&part).await.expect("write");
            stream.flush().await.expect("flush");
        }
        stream.shutdown().await.ok();
    });
    (address, seen)
}

async fn read_request_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.expect("request head");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("ASCII head").to_lowercase()
}

fn chunk(payload: &str) -> Vec<u8> {
    format!("{:x}\r\n{payload}\r\n", payload.len()).into_bytes()
}

async fn next_item(response: &mut SseResponse) -> Option<SseItem> {
    tokio::time::timeout(STEP_TIMEOUT, response.next())
        .await
        .expect("next item in time")
        .expect("next item")
}

async fn send(request: SseRequest) -> SseResponse {
    tokio::time::timeout(STEP_TIMEOUT, request.send())
        .await
        .expect("response in time")
        .expect("response")
}

#[tokio::test]
async fn streams_items_in_order_until_the_end() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-feed: kavach\r\n\
                transfer-encoding: chunked\r\n\r\n";
    let parts = vec![
        head.as_bytes().to_vec(),
        chunk(": connected\n\n"),
        chunk("id: 41\nevent: security\ndata: {\"a\""),
        chunk(":1}\n\n"),
        chunk("id: 42\r\ndata: line one\r\ndata: line two\r\n\r\n"),
        b"0\r\n\r\n".to_vec(),
    ];
    let (address, seen) = serve_once(parts).await;

    let request = SseRequest::new(&format!("http://{address}/events?after=40"))
        .expect("url")
        .header("Last-Event-ID", "40")
        .header("Authorization", "Bearer token-1");
    let mut response = send(request).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.header("X-Feed"), Some("kavach"));
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        next_item(&mut response).await,
        Some(SseItem::Comment("connected".to_owned()))
    );
    assert_eq!(
        next_item(&mut response).await,
        Some(SseItem::Message(SseMessage {
            id: Some("41".to_owned()),
            event: "security".to_owned(),
            data: "{\"a\":1}".to_owned(),
            retry: None,
        }))
    );
    assert_eq!(
        next_item(&mut response).await,
        Some(SseItem::Message(SseMessage {
            id: Some("42".to_owned()),
            event: "message".to_owned(),
            data: "line one\nline two".to_owned(),
            retry: None,
        }))
    );
    assert_eq!(next_item(&mut response).await, None);

    let request = seen.await.expect("server saw the request");
    assert!(
        request
            .head
            .starts_with("get /events?after=40 http/1.1\r\n"),
        "{}",
        request.head
    );
    assert!(
        request.head.contains("\r\naccept: text/event-stream\r\n"),
        "{}",
        request.head
    );
    assert!(
        request.head.contains("\r\nlast-event-id: 40\r\n"),
        "{}",
        request.head
    );
    assert!(
        request
            .head
            .contains("\r\nauthorization: bearer token-1\r\n"),
        "{}",
        request.head
    );
    assert!(
        request.head.contains(&format!("\r\nhost: {address}\r\n")),
        "{}",
        request.head
    );
}

#[tokio::test]
async fn text_reads_an_error_body() {
    let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
                  connection: close\r\n\r\nfeed unavailable: database is down\n";
    let (address, _seen) = serve_once(vec![answer.as_bytes().to_vec()]).await;

    let response = send(SseRequest::new(&format!("http://{address}/events")).expect("url")).await;

    assert_eq!(response.status(), 503);
    let text = tokio::time::timeout(STEP_TIMEOUT, response.text())
        .await
        .expect("body in time")
        .expect("body");
    assert_eq!(text, "feed unavailable: database is down\n");
}

#[tokio::test]
async fn bind_sets_the_source_address() {
    let answer = "HTTP/1.1 204 No Content\r\n\r\n";
    let (address, seen) = serve_once(vec![answer.as_bytes().to_vec()]).await;
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    let request = SseRequest::new(&format!("http://{address}/"))
        .expect("url")
        .bind(source);
    let response = send(request).await;

    assert_eq!(response.status(), 204);
    let request = seen.await.expect("server saw the request");
    assert_eq!(request.peer.ip(), source);
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let address = listener.local_addr().expect("local address");
    drop(listener);

    let result = SseRequest::new(&format!("http://{address}/"))
        .expect("url")
        .send()
        .await;

    assert!(
        matches!(result, Err(ClientError::Connect { .. })),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn invalid_header_is_reported() {
    let result = SseRequest::new("http://127.0.0.1:9/")
        .expect("url")
        .header("bad header", "x")
        .send()
        .await;

    assert!(
        matches!(result, Err(ClientError::InvalidHeader(_))),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn dropping_the_response_closes_the_connection() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let address = listener.local_addr().expect("local address");
    let (closed_sender, closed) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        read_request_head(&mut stream).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.expect("write head");
        stream
            .write_all(&chunk("data: only\n\n"))
            .await
            .expect("write event");

        // The stream never ends on our side: only the client can close it.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.ok();
        closed_sender.send(()).ok();
    });

    let mut response = send(SseRequest::new(&format!("http://{address}/")).expect("url")).await;
    assert!(matches!(
        next_item(&mut response).await,
        Some(SseItem::Message(_))
    ));
    drop(response);

    tokio::time::timeout(STEP_TIMEOUT, closed)
        .await
        .expect("server saw the connection close in time")
        .expect("server task");
}
