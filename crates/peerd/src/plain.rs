//! Plain WebSocket clients (SPEC §7): any WebSocket client that connects to
//! `path` without the `peerlink.v1` subprotocol (`websocat`, a browser, the
//! original Go programs) is a source and a sink of the journal, like
//! `peerctl send` and `peerctl tail`.
//!
//! # Protocol
//!
//! | direction        | what                                                     |
//! |------------------|----------------------------------------------------------|
//! | client → peerd   | each text (or binary) message is one message; it lands   |
//! |                  | in this node's inbox with origin `client:<ip:port>`      |
//! | peerd → client   | every message that arrives **from a peer** from the      |
//! |                  | moment it connected: text if the body is UTF-8, else     |
//! |                  | binary. Messages of other plain clients are not echoed.  |
//! | client → peerd   | an empty message is no message: skipped, never stored    |
//!
//! # Liveness
//!
//! A plain client need not read, nor answer pings (the original Go programs
//! never read their socket): it stays connected for as long as its TCP
//! connection lives, however long it is silent. The daemon sends it no
//! pings (they would pile up unread, and a ping in flight to a vanished
//! host keeps TCP keepalive from probing); TCP keepalive on the connection
//! ([`crate::transport::keepalive`]) notices a host that vanished after
//! about `dead_after + 3 × heartbeat` of silence. A client that never reads
//! stalls only its own stream of arrivals once the socket buffers are full;
//! what it sends keeps landing.
//!
//! # Close codes
//!
//! | code | reason                                                          |
//! |------|-----------------------------------------------------------------|
//! | 1009 | `message over max_message (N bytes)`                            |
//! | 1013 | too many plain clients ([`MAX_CLIENTS`]), try again later       |
//! | 1001 | `going away`: the daemon is shutting down                       |
//!
//! Whether plain clients are let in at all is the listener's decision
//! ([`crate::config::Config::plain_clients_allowed`]): they never bypass
//! peer authentication.
//!
//! # Bounds
//!
//! A message is at most `max_message` (tungstenite refuses anything over
//! the listener's frame limit before buffering it; this module refuses the
//! rest). Each client reads the journal at its own pace from a sequence
//! number, like `peerctl tail -f`: a slow client holds no buffer in the
//! daemon and stalls nobody; if retention trims what it has not read yet,
//! it skips ahead. At most [`MAX_CLIENTS`] are connected at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::journal::{Cursor, Journal, Log};
use crate::transport::Ws;

/// Plain clients connected at once, at most; more are closed with 1013.
pub const MAX_CLIENTS: usize = 256;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: try again later (too many plain clients).
pub const CLOSE_TRY_LATER: u16 = 1013;
/// Inbox entries read per journal read.
const CHUNK: usize = 256;
/// Bytes of inbox entries read per journal read, about.
const CHUNK_BYTES: u64 = 4 << 20;

/// How a plain client's session ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// Tell the client why, with a close frame.
    Close(u16, String),
    /// The connection is gone or broken: nothing to tell.
    Quiet(String),
}

/// Serve one plain client until it leaves, breaks a rule or `shutdown`.
pub async fn serve(
    ws: Ws,
    remote: SocketAddr,
    cfg: Arc<Config>,
    journal: Journal,
    shutdown: CancellationToken,
) {
    let origin = format!("client:{remote}");
    // From this moment on: a plain client sees what arrives while it is
    // connected, not the history (that is what `peerctl tail` is for).
    let mut cursor = Cursor::new(&journal, Log::Inbox, 0);
    let from = cursor.end();
    cursor.seek(from);
    tracing::info!(%remote, "plain WebSocket client connected");
    let (mut sink, mut stream) = ws.split();
    let ending = tokio::select! {
        _ = shutdown.cancelled() => Ending::Close(1001, "going away".into()),
        e = inbound(&mut stream, &origin, &cfg, &journal) => e,
        e = outbound(&mut sink, &cfg, cursor) => e,
    };
    let why = match &ending {
        Ending::Close(code, reason) => {
            let frame = CloseFrame {
                code: CloseCode::from(*code),
                reason: reason.clone().into(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                sink.send(Message::Close(Some(frame))),
            )
            .await;
            format!("closed {code} {reason}")
        }
        Ending::Quiet(why) => {
            // The client's own close (answered by tungstenite, but only
            // sent on a flush) or a broken connection: finish either way.
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
            why.clone()
        }
    };
    tracing::info!(%remote, "plain WebSocket client left: {why}");
}

/// Close a plain client we cannot take (too many connected).
pub async fn refuse_busy(mut ws: Ws) {
    let frame = CloseFrame {
        code: CloseCode::from(CLOSE_TRY_LATER),
        reason: format!("too many plain clients ({MAX_CLIENTS}); try again later").into(),
    };
    let _ = ws.close(Some(frame)).await;
}

/// Read the client's messages into the inbox, one append each (the append
/// resolves once stored, so a fast client is paced by the journal). No
/// timeout: silence is not death (see "Liveness").
async fn inbound(
    stream: &mut SplitStream<Ws>,
    origin: &str,
    cfg: &Config,
    journal: &Journal,
) -> Ending {
    loop {
        let msg = match stream.next().await {
            None => return Ending::Quiet("connection closed".into()),
            Some(Err(WsError::Capacity(e))) => {
                return Ending::Close(
                    CLOSE_TOO_BIG,
                    format!("message over max_message ({} bytes): {e}", cfg.max_message),
                );
            }
            Some(Err(e)) => return Ending::Quiet(e.to_string()),
            Some(Ok(m)) => m,
        };
        let body: Vec<u8> = match msg {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            Message::Close(_) => return Ending::Quiet("client closed the connection".into()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if body.is_empty() {
            continue; // no message: never stored (README "send and tail")
        }
        if let Some(refusal) = check(&body, cfg.max_message) {
            return refusal;
        }
        if let Err(e) = journal.append_local(origin.to_string(), body).await {
            return Ending::Close(1001, e.to_string());
        }
    }
}

/// Why a message from a plain client is refused, if it is.
fn check(body: &[u8], max_message: u64) -> Option<Ending> {
    if body.len() as u64 > max_message {
        return Some(Ending::Close(
            CLOSE_TOO_BIG,
            format!("message over max_message ({max_message} bytes)"),
        ));
    }
    None
}

/// Send every message that arrives from a peer, from inbox sequence `next`
/// on, at the client's pace.
async fn outbound(sink: &mut SplitSink<Ws, Message>, cfg: &Config, mut cursor: Cursor) -> Ending {
    loop {
        let at = cursor.next;
        // (Trimmed by retention before this client got to it: the cursor
        // skips ahead.)
        let chunk = match cursor.read_inbox(CHUNK, CHUNK_BYTES).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("plain client: cannot read the inbox: {e}");
                return Ending::Close(1011, "internal error".into());
            }
        };
        if cursor.next > at {
            for e in chunk.entries {
                if !cfg.peers.iter().any(|p| p.name == e.origin) {
                    continue; // a plain client's own, or another's: not echoed
                }
                if let Err(e) = sink.feed(to_message(e.body)).await {
                    return Ending::Quiet(e.to_string());
                }
            }
            if let Err(e) = sink.flush().await {
                return Ending::Quiet(e.to_string());
            }
            continue;
        }
        if !cursor.wait().await {
            return Ending::Close(1001, "going away".into());
        }
    }
}

/// Text if the body is UTF-8, else binary.
fn to_message(body: Vec<u8>) -> Message {
    match String::from_utf8(body) {
        Ok(s) => Message::Text(s.into()),
        Err(e) => Message::Binary(e.into_bytes().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_messages_are_refused() {
        assert!(matches!(
            check(&[0; 11], 10),
            Some(Ending::Close(CLOSE_TOO_BIG, _))
        ));
        assert_eq!(check(b"hi", 10), None);
    }

    #[test]
    fn utf8_goes_out_as_text_the_rest_as_binary() {
        assert!(matches!(to_message(b"hi".to_vec()), Message::Text(t) if t.as_str() == "hi"));
        assert!(matches!(to_message(vec![0xff, 0]), Message::Binary(b) if b[..] == [0xff, 0]));
    }
}
