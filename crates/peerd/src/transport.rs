//! The byte streams sessions run over, and the WebSocket settings both
//! directions share. Dialled and accepted connections (plain TCP now, TLS
//! later) are boxed into one type so the session code has one path.

use tokio::io::{AsyncRead, AsyncWrite};
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
