//! The WebSocket listener: accepts connections on `listen`, runs TLS when
//! `[tls]` has a certificate, upgrades them at `path`, runs the listener's
//! side of the handshake (Hello, then authentication with a secret) and
//! hands the session to the link task of the peer that introduced and
//! proved itself. Nothing a connection sends before that reaches the
//! journal or a link task; a failed authentication is logged once, with
//! the remote address, at `warn`. A client that does not ask for
//! `peerlink.v1` is a plain WebSocket client: it is handed to
//! [`crate::plain`] when plain clients are allowed (no secret, or
//! `plain_clients = true`), and closed with a reason when they are not.
//! Before any of that, an upgrade from a web page whose origin is not
//! allowed, or one naming a foreign `Host` on a loopback listener, gets a
//! 403 and one log line ([`crate::origin`]): peers and plain clients alike.
//!
//! Every connection is bounded before it costs anything: at most
//! `max_pending_handshakes` handshakes at once (a slot is taken before the
//! connection is read; with no room, a pending handshake is evicted by the
//! rules of [`crate::admission`], fair per source, so a flood never keeps
//! a peer out), each within `handshake_timeout`, and no WebSocket message
//! larger than a peer frame is buffered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::admission::{Admission, Eviction};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handshake::{self, Established, HandshakeError};
use crate::journal::Journal;
use crate::plain;
use crate::reload::{Current, Settings};
use crate::transport::{Ws, watched, ws_config};
use crate::wire::{CLOSE_AUTH, SUBPROTOCOL};

/// What the listener needs to hand sessions on.
pub struct Accepting {
    pub journal: Journal,
    /// Config, TLS and the link task of each peer, as of now: each
    /// connection takes one snapshot and keeps it (see `reload`).
    pub settings: Settings,
}

/// Accept until `shutdown`.
pub async fn run(
    listener: TcpListener,
    ctx: Arc<Accepting>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut slots = ctx.settings.borrow().cfg.max_pending_handshakes;
    let mut admission = Admission::new(slots);
    let plain_slots = Arc::new(Semaphore::new(plain::MAX_CLIENTS));
    // Under a flood, one line a minute at most: when the slots first run
    // out, then how many were closed since.
    let mut flood_logged: Option<tokio::time::Instant> = None;
    let mut closed_since_log = 0u64;
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off a bit
                    // instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let current = ctx.settings.borrow().clone();
        if current.cfg.max_pending_handshakes != slots {
            // A reload changed the limit: new connections use new slots;
            // the pending ones finish in the old.
            slots = current.cfg.max_pending_handshakes;
            admission = Admission::new(slots);
        }
        let (ticket, eviction) = admission.admit(remote.ip());
        if let Some(e) = eviction {
            closed_since_log += 1;
            if flood_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                let (Eviction::SourceFull { source, held } | Eviction::AllFull { source, held }) =
                    e;
                tracing::warn!(
                    "pending handshakes full ({} at most, {} per source): closing the oldest from the busiest source ({source}, {held} pending); {closed_since_log} closed since the last such line (one a minute at most)",
                    slots,
                    crate::admission::per_source(slots),
                );
                flood_logged = Some(tokio::time::Instant::now());
                closed_since_log = 0;
            }
        }
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let plain_slots = plain_slots.clone();
        tracker.spawn(async move {
            let timeout = current.cfg.handshake_timeout;
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticket.evicted() => {
                    tracing::debug!(%remote, "pending handshake closed to make room (flood)");
                    return;
                }
                r = tokio::time::timeout(timeout, accept(tcp, remote, &current, &ctx.journal)) => r,
            };
            drop(ticket);
            match result {
                Err(_) => tracing::info!(%remote, "handshake not finished within {}; dropped", humantime::format_duration(timeout)),
                Ok(Err(e @ HandshakeError::Auth(_))) => tracing::warn!(%remote, "peer refused: {e}"),
                Ok(Err(HandshakeError::Forbidden(e))) => tracing::warn!(%remote, "{e}"),
                Ok(Err(e)) => tracing::info!(%remote, "refused: {e}"),
                Ok(Ok(Accepted::Peer(est))) => {
                    if let Some(link) = current.links.get(&est.hello.node) {
                        let _ = link.send(est).await;
                    }
                }
                Ok(Ok(Accepted::Plain(ws))) => match plain_slots.try_acquire_owned() {
                    Ok(slot) => {
                        plain::serve(ws, remote, current.cfg.clone(), ctx.journal.clone(), shutdown).await;
                        drop(slot);
                    }
                    Err(_) => {
                        tracing::warn!(%remote, "too many plain WebSocket clients ({}); refused", plain::MAX_CLIENTS);
                        plain::refuse_busy(ws).await;
                    }
                },
            }
        });
    }
}

/// What an accepted connection turned out to be.
#[allow(clippy::large_enum_variant)] // one per connection, moved once
enum Accepted {
    /// A peer, past its handshake and authentication.
    Peer(Established),
    /// A plain WebSocket client (no `peerlink.v1`), upgraded.
    Plain(Ws),
}

/// The 403 of a refused web page: a plain-text reason, and the
/// connection closed after it.
fn forbidden_response(body: String) -> ErrorResponse {
    let len = body.len();
    let mut e = ErrorResponse::new(Some(body));
    *e.status_mut() = StatusCode::FORBIDDEN;
    let headers = e.headers_mut();
    headers.insert(
        "Content-Type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("Content-Length", HeaderValue::from(len));
    headers.insert("Connection", HeaderValue::from_static("close"));
    e
}

/// Upgrade and handshake one connection.
#[allow(clippy::result_large_err)] // the callback's type is tungstenite's
async fn accept(
    tcp: TcpStream,
    remote: SocketAddr,
    ctx: &Current,
    journal: &Journal,
) -> Result<Accepted, HandshakeError> {
    let _ = tcp.set_nodelay(true);
    crate::transport::keepalive(&tcp, &ctx.cfg);
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let (io, liveness) = watched(ctx.tls.accept(tcp).await?);
    let path = ctx.cfg.path.clone();
    let gate = ctx.cfg.gate();
    let mut wants_peer = false;
    let mut forbidden = None;
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let header = |name| req.headers().get(name).map(HeaderValue::as_bytes);
        if let Err(refusal) = gate.check(header("Origin"), header("Host")) {
            forbidden = Some(refusal.log);
            return Err(forbidden_response(refusal.body));
        }
        if req.uri().path() != path {
            let mut e =
                ErrorResponse::new(Some(format!("no WebSocket endpoint here; use {path}\n")));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL);
        if offered {
            wants_peer = true;
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        Ok(resp)
    };
    let upgraded =
        tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(ws_config(&ctx.cfg)))
            .await;
    if let Some(why) = forbidden {
        return Err(HandshakeError::Forbidden(why));
    }
    let ws = upgraded.map_err(|e| format!("websocket upgrade: {e}"))?;
    if !wants_peer {
        if !ctx.cfg.plain_clients_allowed() {
            handshake::refuse(
                ws,
                CLOSE_AUTH,
                "this node requires authentication: plain WebSocket clients are not accepted (a secret is set); peers use subprotocol peerlink.v1",
            )
            .await;
            return Err(
                "plain WebSocket client refused: a secret is set and plain_clients is off"
                    .to_string()
                    .into(),
            );
        }
        return Ok(Accepted::Plain(ws));
    }
    let conn = handshake::Conn {
        ws,
        liveness,
        remote,
        local,
    };
    let est = handshake::as_listener(conn, &ctx.cfg, journal).await?;
    Ok(Accepted::Peer(est))
}
