//! The browser console: one-time tokens handed out over the control
//! socket, and the console's WebSocket (the page itself is in
//! `console/`, embedded in the binary: plain HTML, CSS and JavaScript).
//!
//! # Access
//!
//! `peerctl console` asks the daemon (control request `Console`) for a
//! URL with a fresh token: 32 random bytes, valid once, for
//! [`TOKEN_TTL`]. Opening it trades the token for a session cookie
//! (`HttpOnly`, `SameSite=Strict`, named after the port so two daemons on
//! one host keep theirs apart) and redirects to `/`, so the token leaves
//! the address bar and history at once. The page and its WebSocket need
//! that cookie; `crate::web` also checks `Host` and `Origin`. Sessions
//! last while the daemon runs; at most [`MAX_SESSIONS`] (the oldest goes).
//!
//! # WebSocket messages (JSON text frames)
//!
//! From the daemon:
//!
//! | `type`    | fields                                                     |
//! |-----------|------------------------------------------------------------|
//! | `hello`   | `instance`, `node`, `version`, `peers` (names), `max_message` |
//! | `status`  | `status`: the daemon's status snapshot, every second        |
//! | `entries` | `entries`: `[{seq, received_ms, sent_ms, origin, origin_seq, body, binary}]` |
//! | `gap`     | `from`, `resume_at`: messages trimmed by retention          |
//! | `sent`    | `id`, `first`, `last`: a send is durable in the outbox      |
//! | `error`   | `id` (or null), `message`: a send was refused, or bad input |
//!
//! From the page: `{"type": "send", "id": N, "body": "text", "to": "b"}`:
//! `to` names the peer it is for (`peerctl send --to`), or is null (or
//! empty) for every peer. A send goes through the same checks as `peerctl
//! send` (a known peer, `max_message`, empty messages, a full outbox).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use peerlink::control::{Entry, Response};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::journal::{Cursor, Log};
use crate::server::{self, Control};

/// The page, its script and its style sheet.
pub const PAGE: &str = include_str!("console/index.html");
pub const SCRIPT: &str = include_str!("console/console.js");
pub const STYLE: &str = include_str!("console/console.css");

/// How long an unused token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(600);
/// Unused tokens kept at once (the oldest goes).
pub const MAX_TOKENS: usize = 16;
/// Console sessions kept at once (the oldest goes).
pub const MAX_SESSIONS: usize = 64;
/// Messages the feed shows from before the page opened.
pub const BACKLOG: u64 = 50;
/// How often the page gets a status snapshot.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How soon after activity it gets one (acks take a moment).
pub const STATUS_SOON: Duration = Duration::from_millis(150);

/// The console's tokens and sessions.
pub struct Tokens {
    /// Where the console is served (for the URL and the cookie's name).
    addr: SocketAddr,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Unused tokens and when they were made.
    pending: HashMap<String, Instant>,
    /// Session ids, oldest first.
    sessions: VecDeque<String>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Tokens {
    pub fn new(addr: SocketAddr) -> Self {
        Tokens {
            addr,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new one-time token, in the console's URL.
    pub fn issue(&self) -> String {
        let token = random_hex();
        let mut inner = self.lock();
        inner.pending.retain(|_, made| made.elapsed() < TOKEN_TTL);
        while inner.pending.len() >= MAX_TOKENS {
            let oldest = inner
                .pending
                .iter()
                .min_by_key(|(_, made)| **made)
                .map(|(t, _)| t.clone());
            match oldest {
                Some(t) => inner.pending.remove(&t),
                None => break,
            };
        }
        inner.pending.insert(token.clone(), Instant::now());
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}/?token={token}")
    }

    /// Use up `token`: a new session id, if the token was valid.
    pub fn redeem(&self, token: &str) -> Option<String> {
        let mut inner = self.lock();
        let made = inner.pending.remove(token)?;
        if made.elapsed() >= TOKEN_TTL {
            return None;
        }
        let session = random_hex();
        if inner.sessions.len() >= MAX_SESSIONS {
            inner.sessions.pop_front();
        }
        inner.sessions.push_back(session.clone());
        Some(session)
    }

    pub fn session_ok(&self, id: &str) -> bool {
        !id.is_empty() && self.lock().sessions.iter().any(|s| s == id)
    }

    /// The session cookie's name: one per port, as cookies ignore ports.
    pub fn cookie_name(&self) -> String {
        format!("peerd_console_{}", self.addr.port())
    }
}

/// A request from the page.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum FromPage {
    Send {
        id: u64,
        body: String,
        #[serde(default)]
        to: Option<String>,
    },
}

fn entry_json(e: &Entry) -> Value {
    let (body, binary) = match std::str::from_utf8(&e.body) {
        Ok(t) => (t.to_string(), false),
        Err(_) => (String::from_utf8_lossy(&e.body).into_owned(), true),
    };
    json!({
        "seq": e.seq,
        "received_ms": e.received_ms,
        "sent_ms": e.sent_ms,
        "origin": e.origin,
        "origin_seq": e.origin_seq,
        "body": body,
        "binary": binary,
    })
}

/// Serve one console until it closes or the daemon stops.
pub async fn serve(
    mut ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    ctl: Arc<Control>,
    shutdown: CancellationToken,
) {
    let cfg = ctl.cfg();
    let hello = json!({
        "type": "hello",
        "instance": cfg.instance,
        "node": cfg.node,
        "version": peerlink::VERSION,
        "peers": cfg.peers.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        "max_message": cfg.max_message,
    });
    if send_json(&mut ws, &hello).await.is_err() {
        return;
    }
    let mut cursor = Cursor::new(&ctl.journal, Log::Inbox, 0);
    let head = cursor.end();
    cursor.seek(head.saturating_sub(BACKLOG).max(1));
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After activity (arrivals, a send), a status comes soon rather than
    // at the next tick, so counters follow what the feed shows.
    let mut soon: Option<tokio::time::Instant> = None;
    loop {
        // Catch up with the inbox first (bounded reads, off the async
        // workers), then wait.
        let at = cursor.next;
        match cursor.read_inbox(200, 256 * 1024).await {
            Ok(chunk) => {
                if let Some((from, resume_at)) = chunk.gap {
                    let gap = json!({"type": "gap", "from": from, "resume_at": resume_at});
                    if send_json(&mut ws, &gap).await.is_err() {
                        return;
                    }
                }
                if !chunk.entries.is_empty() {
                    soon.get_or_insert(tokio::time::Instant::now() + STATUS_SOON);
                    let entries: Vec<Value> = chunk.entries.iter().map(entry_json).collect();
                    if send_json(&mut ws, &json!({"type": "entries", "entries": entries}))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if cursor.next > at {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!("console: reading the inbox: {e}");
                let _ = send_json(
                    &mut ws,
                    &json!({"type": "error", "id": null, "message": e.to_string()}),
                )
                .await;
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            more = cursor.wait() => if !more { return },
            _ = async { tokio::time::sleep_until(soon.unwrap_or_else(tokio::time::Instant::now)).await }, if soon.is_some() => {
                soon = None;
                tick.reset();
                let status = ctl.observed.snapshot();
                if send_json(&mut ws, &json!({"type": "status", "status": status})).await.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {
                soon = None;
                let status = ctl.observed.snapshot();
                if send_json(&mut ws, &json!({"type": "status", "status": status})).await.is_err() {
                    return;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let reply = from_page(&ctl, t.as_str()).await;
                    soon.get_or_insert(tokio::time::Instant::now() + STATUS_SOON);
                    if send_json(&mut ws, &reply).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Answer one request of the page.
async fn from_page(ctl: &Control, text: &str) -> Value {
    let req: FromPage = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            return json!({"type": "error", "id": null, "message": format!("bad request: {e}")});
        }
    };
    let FromPage::Send { id, body, to } = req;
    let to: Vec<String> = to.into_iter().filter(|t| !t.is_empty()).collect();
    let slot = ctl.journal.reserve().await;
    let (stored, _) = server::send(ctl, slot, vec![body.into_bytes()], false, to);
    match stored.await.first() {
        Some(Response::Sent { first, last }) => {
            json!({"type": "sent", "id": id, "first": first, "last": last})
        }
        Some(Response::Error { message, .. }) => {
            json!({"type": "error", "id": id, "message": message})
        }
        _ => json!({"type": "error", "id": id, "message": "no reply from the journal"}),
    }
}

async fn send_json<S>(ws: &mut WebSocketStream<S>, v: &Value) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(v.to_string())).await.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once_and_makes_a_session() {
        let t = Tokens::new("127.0.0.1:9180".parse().unwrap());
        let url = t.issue();
        let token = url.strip_prefix("http://127.0.0.1:9180/?token=").unwrap();
        assert_eq!(token.len(), 64);
        assert!(t.redeem("nope").is_none());
        let s = t.redeem(token).unwrap();
        assert!(t.session_ok(&s));
        assert!(t.redeem(token).is_none(), "a token works once");
        assert!(!t.session_ok("") && !t.session_ok(token));
        assert_eq!(t.cookie_name(), "peerd_console_9180");
    }

    #[test]
    fn unused_tokens_and_sessions_are_bounded() {
        let t = Tokens::new("0.0.0.0:1".parse().unwrap());
        let urls: Vec<String> = (0..MAX_TOKENS + 1).map(|_| t.issue()).collect();
        assert!(urls[0].starts_with("http://127.0.0.1:1/?token="));
        assert_eq!(t.lock().pending.len(), MAX_TOKENS);
        let mut sessions = Vec::new();
        for _ in 0..MAX_SESSIONS + 1 {
            let url = t.issue();
            let token = url.rsplit('=').next().unwrap();
            sessions.push(t.redeem(token).unwrap());
        }
        assert!(!t.session_ok(&sessions[0]), "the oldest session went");
        assert!(t.session_ok(&sessions[MAX_SESSIONS]));
    }
}
