//! A small Server-Sent Events client: the incremental [`SseParser`] (WHATWG EventSource parsing
//! rules) and [`SseRequest`]/[`SseResponse`] for reading one event stream over HTTP.
//!
//! Used by the CLI `tail` command, the integration tests and the load generator. It speaks plain
//! HTTP/1.1 over TCP only: no TLS (`https://` URLs are rejected), no proxies, no redirects and no
//! automatic reconnection; a caller that wants to resume reconnects itself with a `Last-Event-ID`
//! header. Each [`SseRequest::send`] opens one new connection.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CACHE_CONTROL, HOST};
use hyper::{HeaderMap, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

/// Default bound on connecting and receiving the response head.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One parsed SSE message, per the WHATWG EventSource parsing rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The `id` field of this message's block, if any.
    pub id: Option<String>,
    /// The `event` field; `"message"` when absent or empty.
    pub event: String,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The `retry` field in milliseconds, if the block had a valid one.
    pub retry: Option<u64>,
}

/// What the parser yields: a dispatched message or a comment line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A message ended by a blank line.
    Message(SseMessage),
    /// A `:` comment line (keep-alives), without the colon and one optional leading space.
    Comment(String),
}

/// Incremental parser: feed arbitrary byte chunks (split anywhere, even inside a UTF-8 character
/// or between `\r` and `\n`) and get the complete items.
///
/// Lines end in CRLF, LF or CR; a leading UTF-8 BOM is stripped; invalid UTF-8 becomes U+FFFD.
/// A message is dispatched at a blank line when its block had at least one `data` line; its `id`
/// and `retry` are those of the same block. An unterminated block at end of stream is discarded.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    last_line_ended_in_cr: bool,
    seen_first_line: bool,
    block: PendingMessage,
}

/// Fields collected since the last blank line.
#[derive(Debug, Default)]
struct PendingMessage {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    retry: Option<u64>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `chunk` and returns every item completed by it, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        let mut items = Vec::new();
        let mut rest = chunk;

        while let Some((&first, after_first)) = rest.split_first() {
            if std::mem::take(&mut self.last_line_ended_in_cr) && first == b'\n' {
                rest = after_first;
                continue;
            }

            let Some(end) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
                self.line.extend_from_slice(rest);
                break;
            };
            self.line.extend_from_slice(&rest[..end]);
            self.last_line_ended_in_cr = rest[end] == b'\r';
            rest = &rest[end + 1..];

            items.extend(self.finish_line());
        }
        items
    }

    fn finish_line(&mut self) -> Option<SseItem> {
        let mut raw = std::mem::take(&mut self.line);

        let mut bytes = raw.as_slice();
        if !std::mem::replace(&mut self.seen_first_line, true) {
            bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        }
        let item = self.process_line(&String::from_utf8_lossy(bytes));

        raw.clear();
        self.line = raw;
        item
    }

    fn process_line(&mut self, line: &str) -> Option<SseItem> {
        if line.is_empty() {
            return self.dispatch();
        }

        if let Some(comment) = line.strip_prefix(':') {
            return Some(SseItem::Comment(strip_one_space(comment).to_owned()));
        }

        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, strip_one_space(value)),
            None => (line, ""),
        };
        self.block.apply(field, value);
        None
    }

    fn dispatch(&mut self) -> Option<SseItem> {
        let block = std::mem::take(&mut self.block);
        let data = block.data?;

        Some(SseItem::Message(SseMessage {
            id: block.id,
            event: block
                .event
                .filter(|event| !event.is_empty())
                .unwrap_or_else(|| "message".to_owned()),
            data,
            retry: block.retry,
        }))
    }
}

impl PendingMessage {
    fn apply(&mut self, field: &str, value: &str) {
        match field {
            "data" => self.append_data(value),
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Too many digits for u64 is not a usable delay either: ignore it.
                if let Ok(milliseconds) = value.parse() {
                    self.retry = Some(milliseconds);
                }
            }
            _ => {}
        }
    }

    fn append_data(&mut self, value: &str) {
        match &mut self.data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => self.data = Some(value.to_owned()),
        }
    }
}

fn strip_one_space(value: &str) -> &str {
    value.strip_prefix(' ').unwrap_or(value)
}

/// Errors of [`SseRequest`] and [`SseResponse`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be parsed or is not a plain `http://host[:port]/path` URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A header added with [`SseRequest::header`] has an invalid name or value.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// Resolving the host or establishing the TCP connection failed.
    #[error("could not connect to {target}: {source}")]
    Connect {
        /// `host:port` we tried to reach.
        target: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting plus receiving the response head took longer than the connect timeout.
    #[error("no response from {target} within {after:?}")]
    Timeout {
        /// `host:port` we tried to reach.
        target: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The HTTP exchange failed before the response head arrived.
    #[error("HTTP request failed: {0}")]
    Http(#[from] hyper::Error),
    /// Reading the response body failed (for example the connection was reset).
    #[error("reading the response body failed: {0}")]
    Body(#[source] hyper::Error),
}

/// A GET request for an event stream, configured builder-style, then [`send`](Self::send).
#[derive(Debug, Clone)]
pub struct SseRequest {
    target: Target,
    headers: Vec<(String, String)>,
    local_address: Option<IpAddr>,
    connect_timeout: Duration,
}

/// Where the request goes, split out of the URL.
#[derive(Debug, Clone)]
struct Target {
    /// Host name or IP address, without IPv6 brackets.
    host: String,
    port: u16,
    /// Value of the `Host` header: the URL's authority.
    authority: String,
    path_and_query: String,
}

impl SseRequest {
    /// Parses `http://host[:port]/path?query` (port 80 by default). Other schemes, a missing host
    /// and credentials in the URL are rejected.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        Ok(Self {
            target: Target::parse(url)?,
            headers: Vec::new(),
            local_address: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// Adds a request header (e.g. `Authorization`, `Last-Event-ID`), replacing any earlier value
    /// of the same name, including the default `Accept`. Invalid names or values make
    /// [`send`](Self::send) fail with [`ClientError::InvalidHeader`].
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Binds the connection's source address (e.g. `127.0.0.2`) before connecting; only server
    /// addresses of the same IP family are tried.
    #[must_use]
    pub fn bind(mut self, local: IpAddr) -> Self {
        self.local_address = Some(local);
        self
    }

    /// Bounds connecting plus waiting for the response head (default 10 s); the body is not bounded.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects, sends `GET` with `Accept: text/event-stream` and returns once the response head
    /// has arrived, whatever its status.
    pub async fn send(self) -> Result<SseResponse, ClientError> {
        let request = self.build_request()?;

        let exchange = self.exchange(request);
        tokio::time::timeout(self.connect_timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                target: self.target.host_and_port(),
                after: self.connect_timeout,
            })?
    }

    fn build_request(&self) -> Result<Request<Empty<Bytes>>, ClientError> {
        let mut request = Request::get(self.target.path_and_query.as_str())
            .header(HOST, self.target.authority.as_str())
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache")
            .body(Empty::new())
            .map_err(|error| ClientError::InvalidUrl(error.to_string()))?;

        for (name, value) in &self.headers {
            let (name, value) = parse_header(name, value)?;
            request.headers_mut().insert(name, value);
        }
        Ok(request)
    }

    async fn exchange(&self, request: Request<Empty<Bytes>>) -> Result<SseResponse, ClientError> {
        let stream = self.connect().await?;

        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(drive_connection(connection));

        let response = sender.send_request(request).await?;
        Ok(SseResponse::new(response))
    }

    /// Tries each resolved address of a usable family in turn.
    async fn connect(&self) -> Result<TcpStream, ClientError> {
        let connect_error = |source| ClientError::Connect {
            target: self.target.host_and_port(),
            source,
        };
        let addresses = tokio::net::lookup_host((self.target.host.as_str(), self.target.port))
            .await
            .map_err(connect_error)?;

        let mut last_error = None;
        for address in addresses.filter(|address| self.can_reach(address)) {
            match self.connect_to(address).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = Some(error),
            }
        }

        Err(connect_error(last_error.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address of the same IP family as the bound local address",
            )
        })))
    }

    fn can_reach(&self, address: &SocketAddr) -> bool {
        self.local_address
            .is_none_or(|local| local.is_ipv4() == address.is_ipv4())
    }

    async fn connect_to(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(local) = self.local_address {
            socket.bind(SocketAddr::new(local, 0))?;
        }

        let stream = socket.connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Target {
    fn parse(url: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl(format!("{url:?}: {reason}"));
        let uri: Uri = url.parse().map_err(|error| invalid(&format!("{error}")))?;

        match uri.scheme_str() {
            Some(scheme) if scheme.eq_ignore_ascii_case("http") => {}
            Some(scheme) => {
                return Err(invalid(&format!(
                    "unsupported scheme `{scheme}`: only plain http:// is supported (no TLS)"
                )))
            }
            None => return Err(invalid("expected http://host[:port]/path")),
        }

        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "credentials in the URL are not supported; send an Authorization header",
            ));
        }

        Ok(Self {
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or("/", |path| path.as_str())
                .to_owned(),
        })
    }

    fn host_and_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), ClientError> {
    let header_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ClientError::InvalidHeader(format!("invalid header name {name:?}")))?;
    let header_value = HeaderValue::from_str(value)
        .map_err(|_| ClientError::InvalidHeader(format!("invalid value for header {name}")))?;

    Ok((header_name, header_value))
}

/// Runs the HTTP/1.1 connection until the response body ends or the response is dropped.
async fn drive_connection(connection: http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, "SSE client connection ended with an error");
    }
}

/// The response to an [`SseRequest`]: status and headers, then the body as SSE items or text.
/// Dropping it closes the connection.
#[derive(Debug)]
pub struct SseResponse {
    status: u16,
    headers: HeaderMap,
    body: Incoming,
    parser: SseParser,
    ready: VecDeque<SseItem>,
}

impl SseResponse {
    fn new(response: hyper::Response<Incoming>) -> Self {
        let (parts, body) = response.into_parts();

        Self {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            parser: SseParser::new(),
            ready: VecDeque::new(),
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of response header `name` (case-insensitive), if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The next item; `Ok(None)` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<SseItem>, ClientError> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(Some(item));
            }

            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            if let Ok(data) = frame.map_err(ClientError::Body)?.into_data() {
                self.ready.extend(self.parser.feed(&data));
            }
        }
    }

    /// Reads the whole remaining body as text (for non-200 answers such as 400/503); invalid
    /// UTF-8 becomes U+FFFD. Bytes already consumed by [`next`](Self::next) are not included.
    pub async fn text(self) -> Result<String, ClientError> {
        let body = self.body.collect().await.map_err(ClientError::Body)?;

        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: Option<&str>, event: &str, data: &str, retry: Option<u64>) -> SseItem {
        SseItem::Message(SseMessage {
            id: id.map(str::to_owned),
            event: event.to_owned(),
            data: data.to_owned(),
            retry,
        })
    }

    fn comment(text: &str) -> SseItem {
        SseItem::Comment(text.to_owned())
    }

    fn parse_whole(stream: &[u8]) -> Vec<SseItem> {
        SseParser::new().feed(stream)
    }

    /// Exercises every rule, with LF, CRLF and CR line ends and non-ASCII text.
    const SAMPLE: &[u8] = b"\xEF\xBB\xBF: hello\n\
        \n\
        id: 1\r\n\
        event: security\r\n\
        data: {\"kind\":\"login\"}\r\n\
        \r\n\
        data: first\rdata:second\r: keep-alive\r\rdata\n\
        data:  two spaces\n\
        unknown: field\n\
        retry: 2500\n\
        \n\
        id: bad\0id\n\
        retry: 12x\n\
        event:\n\
        data: caf\xC3\xA9 \xE2\x82\xAC\n\
        \n\
        id: 7\n\
        event: orphan\n\
        \n\
        :\n\
        data: unterminated";

    fn sample_items() -> Vec<SseItem> {
        vec![
            comment("hello"),
            message(Some("1"), "security", "{\"kind\":\"login\"}", None),
            comment("keep-alive"),
            message(None, "message", "first\nsecond", None),
            message(None, "message", "\n two spaces", Some(2500)),
            message(None, "message", "café €", None),
            comment(""),
        ]
    }

    #[test]
    fn parses_the_sample_in_one_chunk() {
        assert_eq!(parse_whole(SAMPLE), sample_items());
    }

    #[test]
    fn any_split_point_gives_the_same_items() {
        for split in 0..=SAMPLE.len() {
            let mut parser = SseParser::new();

            let mut items = parser.feed(&SAMPLE[..split]);
            items.extend(parser.feed(&SAMPLE[split..]));

            assert_eq!(items, sample_items(), "split at byte {split}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_items() {
        let mut parser = SseParser::new();

        let items: Vec<SseItem> = SAMPLE.iter().flat_map(|b| parser.feed(&[*b])).collect();

        assert_eq!(items, sample_items());
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let mut parser = SseParser::new();

        assert!(parser.feed(b"data: a\r").is_empty());
        let items = parser.feed(b"\n\r\n");

        assert_eq!(items, vec![message(None, "message", "a", None)]);
    }

    #[test]
    fn all_line_endings_are_equivalent() {
        let lf = parse_whole(b"id: 3\ndata: x\ndata: y\n\n");

        assert_eq!(lf, vec![message(Some("3"), "message", "x\ny", None)]);
        assert_eq!(parse_whole(b"id: 3\r\ndata: x\r\ndata: y\r\n\r\n"), lf);
        assert_eq!(parse_whole(b"id: 3\rdata: x\rdata: y\r\r"), lf);
    }

    #[test]
    fn comment_keeps_text_after_one_space() {
        assert_eq!(
            parse_whole(b":  two\n:none\n"),
            vec![comment(" two"), comment("none")]
        );
    }

    #[test]
    fn empty_data_line_is_dispatched_with_empty_data() {
        assert_eq!(
            parse_whole(b"data\n\ndata:\n\n"),
            vec![message(None, "message", "", None); 2]
        );
    }

    #[test]
    fn retry_must_be_all_digits() {
        let items = parse_whole(b"retry: 10\nretry: -5\nretry: 1.5\nretry:\ndata: d\n\n");

        assert_eq!(items, vec![message(None, "message", "d", Some(10))]);
    }

    #[test]
    fn block_without_data_is_not_dispatched_and_its_fields_do_not_leak() {
        let items = parse_whole(b"id: 9\nevent: e\nretry: 5\n\ndata: d\n\n");

        assert_eq!(items, vec![message(None, "message", "d", None)]);
    }

    #[test]
    fn bom_is_stripped_only_at_stream_start() {
        let items = parse_whole(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n");

        assert_eq!(items, vec![message(None, "message", "a", None)]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let items = parse_whole(b"data: \xFF\n\n");

        assert_eq!(items, vec![message(None, "message", "\u{FFFD}", None)]);
    }

    #[test]
    fn accepts_plain_http_urls() {
        let request = SseRequest::new("http://127.0.0.1:8080/events?after=5").expect("valid url");

        assert_eq!(request.target.host, "127.0.0.1");
        assert_eq!(request.target.port, 8080);
        assert_eq!(request.target.path_and_query, "/events?after=5");

        let defaults = SseRequest::new("http://[::1]").expect("valid url");
        assert_eq!(defaults.target.host, "::1");
        assert_eq!(defaults.target.port, 80);
        assert_eq!(defaults.target.path_and_query, "/");
        assert_eq!(defaults.target.host_and_port(), "[::1]:80");
    }

    #[test]
    fn rejects_other_urls() {
        for url in [
            "https://example.com/",
            "example.com/events",
            "http://u:p@h/",
            "not a url",
        ] {
            let error = SseRequest::new(url).expect_err(url);

            assert!(
                matches!(error, ClientError::InvalidUrl(_)),
                "{url}: {error}"
            );
        }
    }
}
