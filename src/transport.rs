//! The HTTP server loop of `serve`: HTTP/1.1 on hyper with the limits a long-lived public endpoint
//! needs. Request headers must arrive within `header_read_timeout` (slow-loris), a write that makes
//! no progress for `write_timeout` closes the connection (a client that stopped reading), each
//! socket's kernel send buffer is capped, and request heads are capped in size. Shutdown stops
//! accepting and waits for open connections, whose SSE bodies end when the stream closes.
//!
//! Given the `EventStream`, the first request head of each connection is read here and a stream
//! request is served directly on the socket (`crate::direct`), without hyper's per-connection
//! buffers; everything else goes to hyper and the app.
//!
//! Limitations: no TLS and no HTTP/2 here; put a TLS-terminating proxy in front.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tracing::{debug, warn};

use crate::direct::{self, Head, Rewound};
use crate::stream::EventStream;

/// The limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A request head must be complete within this time.
    pub header_read_timeout: Duration,
    /// A write that cannot make progress for this long closes the connection.
    pub write_timeout: Duration,
    /// The kernel send buffer of each connection, in bytes.
    pub send_buffer_bytes: usize,
    /// The largest request head accepted, in bytes (hyper answers 431 beyond it).
    pub max_head_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            send_buffer_bytes: 64 * 1024,
            max_head_bytes: 16 * 1024,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections.
/// Requests for `stream`'s SSE path, when given, are served directly on the socket.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stream: Option<EventStream>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192));

    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };

        if let Err(error) = tune(&socket, &limits) {
            debug!(error = %error, "could not set socket options");
        }
        let socket = WriteTimeout::new(socket, limits.write_timeout);
        tokio::spawn(connection(
            socket,
            peer,
            app.clone(),
            http.clone(),
            stream.clone(),
            limits,
            graceful.watcher(),
        ));
    }

    drop(listener);
    graceful.shutdown().await;
}

/// One accepted connection: a stream request is served on the socket, anything else by hyper.
async fn connection(
    mut socket: WriteTimeout<TcpStream>,
    peer: SocketAddr,
    app: Router,
    http: http1::Builder,
    stream: Option<EventStream>,
    limits: ServerLimits,
    watcher: Watcher,
) {
    let mut prefix = Vec::new();
    if let Some(stream) = &stream {
        let head = direct::read_head(
            &mut socket,
            stream,
            limits.max_head_bytes,
            limits.header_read_timeout,
        )
        .await;
        match head {
            Head::Stream { chunked, response } => {
                // Shutdown ends the stream itself; holding the watcher until then makes `serve`
                // wait for this connection's last frame.
                direct::respond(socket, chunked, response).await;
                drop(watcher);
                return;
            }
            Head::Other(read) => prefix = read,
            Head::TooLarge => {
                let _ = socket.write_all(direct::TOO_LARGE).await;
                return;
            }
            Head::Gone => return,
        }
    }
    let io = TokioIo::new(Rewound::new(prefix, socket));
    let connection = http.serve_connection(io, TowerToHyperService::new(app));
    // Boxed, so that the task of a stream connection does not carry the size of hyper's state.
    if let Err(error) = Box::pin(watcher.watch(connection)).await {
        debug!(peer = %peer, error = %error, "connection ended with an error");
    }
}

fn tune(socket: &TcpStream, limits: &ServerLimits) -> io::Result<()> {
    socket.set_nodelay(true)?;
    socket2::SockRef::from(socket).set_send_buffer_size(limits.send_buffer_bytes)
}

/// A stream whose writes fail with `TimedOut` when they make no progress for a while.
struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write is pending; cleared by any progress.
    stalled_since: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled_since: None,
        }
    }

    /// Called when the inner write is pending: fails once the stall outlasts the timeout.
    fn check_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let deadline = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(&mut self, result: io::Result<T>) -> Poll<io::Result<T>> {
        self.stalled_since = None;
        Poll::Ready(result)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.check_stall(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.check_stall(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.check_stall(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
