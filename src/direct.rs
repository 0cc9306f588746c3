//! The SSE stream served straight on the socket, beside hyper.
//!
//! A long-lived SSE connection needs very little from an HTTP server: one request head read, one
//! response head written, then chunks written as they come. hyper keeps an 8 KiB read buffer (its
//! floor) and its dispatcher state for the connection's whole life, which was most of the server's
//! memory per idle connection (15 KiB in all, BENCHMARKS.md). So `serve` reads the first request
//! head itself into a small buffer; when it is a stream request (`EventStream::handle_request`
//! answers it) the response is written here and the head buffer is freed, and every other request
//! goes to hyper with the bytes already read put back in front of the socket.
//!
//! While streaming, the socket is also read into a small stack buffer: end of file or a reset ends
//! the connection at once (its slot is freed without waiting for the next write to fail).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use crate::stream::EventStream;

/// The first read's buffer; a typical SSE request head is 150-400 bytes.
const INITIAL_HEAD_BUFFER: usize = 1024;

/// Most headers parsed here; a request with more goes to hyper, which allows 100.
const MAX_HEADERS: usize = 48;

/// Bytes a client may send after its stream request before the connection is closed: an SSE
/// client sends nothing, and nothing it sends can be answered while its stream runs.
const MAX_IGNORED_BYTES: usize = 16 * 1024;

/// What the first request head on a connection turned out to be.
pub(crate) enum Head {
    /// A stream request, already answered; write it with [`respond`]. `chunked` unless the
    /// client spoke HTTP/1.0.
    Stream { chunked: bool, response: Response },
    /// Anything else: hyper serves the connection, reading these bytes first.
    Other(Vec<u8>),
    /// Larger than the limit: answered 431 here.
    TooLarge,
    /// The client closed, failed, or did not finish its head in time: nothing to answer.
    Gone,
}

/// Reads the first request head (within `timeout`, at most `max_bytes`) and lets `stream` answer
/// it if it is a stream request.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    socket: &mut S,
    stream: &EventStream,
    max_bytes: usize,
    timeout: Duration,
) -> Head {
    let mut buffer = Vec::with_capacity(INITIAL_HEAD_BUFFER.min(max_bytes));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buffer.len() == buffer.capacity() {
            if buffer.len() >= max_bytes {
                return Head::TooLarge;
            }
            buffer.reserve_exact(buffer.len().min(max_bytes - buffer.len()));
        }
        match tokio::time::timeout_at(deadline, socket.read_buf(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Head::Gone,
            Ok(Ok(_)) => {}
        }

        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => continue,
            // Malformed or unusual: hyper gives the precise answer.
            Err(_) => return Head::Other(buffer),
        }
        let Some(request) = to_request(&parsed) else {
            return Head::Other(buffer);
        };
        let Some(response) = stream.handle_request(&request) else {
            return Head::Other(buffer);
        };
        debug!(method = %request.method(), path = %request.uri().path(), status = response.status().as_u16(), "stream response");
        return Head::Stream {
            chunked: request.version() != Version::HTTP_10,
            response,
        };
    }
}

/// The parsed head as an `http::Request`, or `None` for anything `http` would not accept.
fn to_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    let version = match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut request = Request::builder()
        .method(Method::from_bytes(parsed.method?.as_bytes()).ok()?)
        .uri(Uri::try_from(parsed.path?).ok()?)
        .version(version);
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        request = request.header(name, value);
    }
    request.body(()).ok()
}

/// The answer to a head over the size limit.
pub(crate) const TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Writes `response`, then closes the connection. A streaming body is written chunk by chunk as
/// it comes (`chunked` transfer encoding, or close-delimited for an HTTP/1.0 client) until it ends
/// or the client leaves; a fixed body (a refusal) is written whole.
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    chunked: bool,
    response: Response,
) {
    let (parts, mut body) = response.into_parts();
    let fixed_length = body.size_hint().exact();

    let mut head = format!("HTTP/1.1 {}\r\n", parts.status).into_bytes();
    // Framing is this function's business: any framing header the response carries is dropped.
    let framing = [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::CONNECTION,
    ];
    for (name, value) in parts
        .headers
        .iter()
        .filter(|(name, _)| !framing.contains(name))
    {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match fixed_length {
        Some(length) => head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        None if chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    if socket.write_all(&head).await.is_err() {
        return;
    }
    drop(head);

    let chunked = chunked && fixed_length.is_none();
    let ended = match pump(&mut socket, &mut body, chunked).await {
        Ok(ended) => ended,
        Err(error) => {
            debug!(error = %error, "stream connection ended with an error");
            return;
        }
    };
    drop(body);
    if ended && chunked && socket.write_all(b"0\r\n\r\n").await.is_err() {
        return;
    }
    let _ = socket.shutdown().await;
}

/// Writes the body's chunks as they come. `Ok(true)` when the body ended, `Ok(false)` when the
/// client left first.
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut S,
    body: &mut Body,
    chunked: bool,
) -> io::Result<bool> {
    let mut probe = [0u8; 64];
    let mut ignored = 0usize;
    loop {
        tokio::select! {
            biased;
            frame = body.frame() => {
                let Some(frame) = frame else { return Ok(true) };
                let frame = frame.map_err(io::Error::other)?;
                if let Ok(data) = frame.into_data() {
                    write_chunk(socket, &data, chunked).await?;
                }
            }
            read = socket.read(&mut probe) => match read {
                Ok(0) => return Ok(false),
                Ok(count) => {
                    ignored += count;
                    if ignored > MAX_IGNORED_BYTES {
                        return Err(io::Error::other("the client kept sending after its stream request"));
                    }
                }
                Err(error) => return Err(error),
            },
        }
    }
}

/// Writes one chunk, framed for chunked transfer encoding if `chunked`, in as few writes as the
/// socket allows (usually one `writev`).
async fn write_chunk<S: AsyncWrite + Unpin>(
    socket: &mut S,
    data: &Bytes,
    chunked: bool,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if !chunked {
        return socket.write_all(data).await;
    }
    let mut size = [0u8; 18];
    let size_len = chunk_size_line(data.len(), &mut size);
    let parts: [&[u8]; 3] = [&size[..size_len], data, b"\r\n"];
    let total: usize = parts.iter().map(|part| part.len()).sum();
    let mut written = 0;
    while written < total {
        let mut skip = written;
        let mut slices = [IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
        let mut used = 0;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[used] = IoSlice::new(&part[skip..]);
            skip = 0;
            used += 1;
        }
        let count = socket.write_vectored(&slices[..used]).await?;
        if count == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += count;
    }
    Ok(())
}

/// Writes `len` as the hexadecimal chunk-size line (`1a2\r\n`) into `out`; returns its length.
fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (index, slot) in out[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - index);
        *slot = HEX[(len >> shift) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// A socket with bytes already read from it put back in front.
pub(crate) struct Rewound<S> {
    prefix: Option<Bytes>,
    inner: S,
}

impl<S> Rewound<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewound {
            prefix: (!prefix.is_empty()).then(|| Bytes::from(prefix)),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(prefix) = &mut this.prefix {
            let count = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix.split_to(count));
            if prefix.is_empty() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_lower_case_hex() {
        let mut out = [0u8; 18];
        for (len, expected) in [
            (1usize, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
            (65_536 + 10, "1000a\r\n"),
        ] {
            let written = chunk_size_line(len, &mut out);
            assert_eq!(std::str::from_utf8(&out[..written]).unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn a_chunk_is_framed_whole_even_when_the_socket_takes_a_few_bytes_at_a_time() {
        let (client, server) = tokio::io::duplex(3);
        let mut server = server;
        let data = Bytes::from_static(b"data: {\"x\":1}\n\n");
        let writer = tokio::spawn(async move {
            write_chunk(&mut server, &data, true).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        let mut client = client;
        client.read_to_end(&mut received).await.unwrap();
        writer.await.unwrap();
        assert_eq!(received, b"f\r\ndata: {\"x\":1}\n\n\r\n");
    }

    #[tokio::test]
    async fn rewound_bytes_are_read_before_the_socket() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut rewound = Rewound::new(b"hello".to_vec(), server);
        let mut read = String::new();
        rewound.read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "hello world");
    }
}
