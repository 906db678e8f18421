//! The byte streams sessions run over, and the WebSocket settings both
//! directions share. Dialled and accepted connections (plain TCP now, TLS
//! later) are boxed into one type so the session code has one path.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Config;
use crate::wire::FRAME_OVERHEAD;

/// Anything a WebSocket can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A WebSocket over any [`Io`].
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// The largest peer frame this node accepts.
pub fn max_frame(cfg: &Config) -> u64 {
    cfg.max_message + FRAME_OVERHEAD
}

/// WebSocket limits: nothing larger than a frame we accept is buffered.
pub fn ws_config(cfg: &Config) -> WebSocketConfig {
    let max = max_frame(cfg) as usize;
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// When bytes last arrived on a connection. A session is alive while bytes
/// arrive, not only while whole WebSocket messages do: over a slow link a
/// 256 KiB batch can take longer than `dead_after` to arrive, and the
/// pings behind it longer still, yet the link is working.
#[derive(Clone, Debug)]
pub struct Liveness(Arc<AtomicU64>);

fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Liveness {
    /// How long since the last byte arrived.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(clock_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// Wrap a connection so its reads are seen by the returned [`Liveness`].
pub fn watched(inner: Box<dyn Io>) -> (Box<dyn Io>, Liveness) {
    let seen = Arc::new(AtomicU64::new(clock_ms()));
    let live = Liveness(seen.clone());
    (Box::new(Watched { inner, seen }), live)
}

struct Watched {
    inner: Box<dyn Io>,
    seen: Arc<AtomicU64>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.seen.store(clock_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Keepalive probes after a connection was silent for `dead_after`, one
/// every `heartbeat`, this many unanswered and the kernel drops it.
const KEEPALIVE_PROBES: u32 = 3;

/// TCP keepalive on an accepted connection, so a client whose host
/// vanished (no FIN, no RST) is noticed by TCP itself after about
/// `dead_after + 3 × heartbeat` of silence, whether or not the client ever
/// reads or answers a WebSocket ping (plain clients need not). Best effort:
/// a socket that refuses it still works.
pub fn keepalive(tcp: &TcpStream, cfg: &Config) {
    let ka = socket2::TcpKeepalive::new().with_time(cfg.dead_after);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd",
        target_os = "windows"
    ))]
    let ka = ka.with_interval(cfg.heartbeat);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd",
        target_os = "windows"
    ))]
    let ka = ka.with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!("cannot set TCP keepalive: {e}");
    }
}
