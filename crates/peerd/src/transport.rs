//! The byte streams sessions run over, and the WebSocket settings both
//! directions share. Dialled and accepted connections (plain TCP now, TLS
//! later) are boxed into one type so the session code has one path.

use tokio::io::{AsyncRead, AsyncWrite};
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
