//! The handshake that opens every peer session (see `wire` for the
//! protocol), both directions in one place ([`as_dialler`],
//! [`as_listener`]; `dial` and `listener` keep only the transport): the
//! Hello exchange and, with a secret, the mutual proofs of `auth`. The dialler speaks first, naming itself; the listener checks the
//! name against its configured peers and answers with its own Hello, filled
//! in for that peer; then the dialler proves it knows the secret, and only
//! after checking that proof does the listener prove it too. Both
//! directions are bounded by the caller's handshake timeout.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peerlink::control::Direction;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::{self, KeyId, Role, Secret, Transcript};
use crate::config::Config;
use crate::journal::Journal;
use crate::transport::{Liveness, Ws, max_frame};
use crate::wire::{self, CLOSE_AUTH, CLOSE_PROTOCOL, Hello, PeerFrame, WIRE_VERSION};

/// Why a handshake did not complete. Authentication failures are told
/// apart because they are logged louder: they may be an attack.
#[derive(Debug)]
pub enum HandshakeError {
    /// A wrong or missing proof, or a secret on only one side.
    Auth(String),
    /// An upgrade refused with 403 before any WebSocket traffic: a web
    /// page's `Origin` or a foreign `Host` (see [`crate::origin`]).
    Forbidden(String),
    /// Anything else: version, unknown node, garbage, closed connection.
    Protocol(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Auth(e) => write!(f, "authentication failed: {e}"),
            HandshakeError::Forbidden(e) => f.write_str(e),
            HandshakeError::Protocol(e) => f.write_str(e),
        }
    }
}

impl From<String> for HandshakeError {
    fn from(e: String) -> Self {
        HandshakeError::Protocol(e)
    }
}

/// Why dialling a peer did not give a session: typed, so the link task
/// and `status` can tell a refusal from a network failure; one line each.
#[derive(Debug)]
pub enum LinkError {
    /// The peer's URL cannot be dialled.
    BadUrl(String),
    /// No TCP connection (refused, unreachable, DNS).
    Connect { addr: String, error: std::io::Error },
    /// TLS failed (certificate, handshake).
    Tls(String),
    /// The WebSocket upgrade was refused or failed (with the listener's
    /// reason when it gave one).
    Upgrade(String),
    /// The other end is not a peerd (no `peerlink.v1`).
    NotPeerd(String),
    /// The peer handshake failed.
    Handshake(HandshakeError),
    /// All of it took longer than `handshake_timeout`.
    Timeout(Duration),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::BadUrl(e) | LinkError::Tls(e) | LinkError::Upgrade(e) => f.write_str(e),
            LinkError::Connect { addr, error } => write!(f, "connect {addr}: {error}"),
            LinkError::NotPeerd(url) => {
                write!(
                    f,
                    "{url} did not agree to subprotocol {}: not a peerd?",
                    wire::SUBPROTOCOL
                )
            }
            LinkError::Handshake(e) => e.fmt(f),
            LinkError::Timeout(t) => {
                write!(f, "no handshake within {}", humantime::format_duration(*t))
            }
        }
    }
}

impl From<HandshakeError> for LinkError {
    fn from(e: HandshakeError) -> Self {
        LinkError::Handshake(e)
    }
}

/// The connection a handshake runs over, past its upgrade.
pub struct Conn {
    pub ws: Ws,
    pub liveness: Liveness,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// The dialler's side: we named `peer` and dialled it. Our Hello first,
/// then the listener's, checked to be that peer; then the proofs.
pub async fn as_dialler(
    conn: Conn,
    cfg: &Config,
    journal: &Journal,
    peer: &str,
) -> Result<Established, HandshakeError> {
    let Conn {
        mut ws,
        liveness,
        remote,
        local,
    } = conn;
    let mine = send_hello(&mut ws, hello_for(cfg, journal, peer)).await?;
    let (hello, theirs) = read_hello(&mut ws).await?;
    if let Err(e) = check_hello(&hello, Some(peer), cfg) {
        refuse_protocol(ws, &e).await;
        return Err(HandshakeError::Protocol(e));
    }
    // An authentication failure names the peer and its address (the log
    // line and `status` of the dialler).
    let named = |e: HandshakeError| match e {
        HandshakeError::Auth(e) => HandshakeError::Auth(format!("{peer} ({remote}): {e}")),
        e => e,
    };
    let secret = match agree_key(&hello, cfg, Role::Dialler) {
        Ok(s) => s,
        Err((e, reason)) => {
            refuse(ws, CLOSE_AUTH, &reason).await;
            return Err(named(e));
        }
    };
    let t = Transcript {
        dialler_hello: &mine,
        listener_hello: &theirs,
    };
    authenticate_dialler(&mut ws, secret.as_ref(), &t)
        .await
        .map_err(named)?;
    Ok(Established {
        ws,
        liveness,
        hello,
        dialled_by: cfg.node.clone(),
        direction: Direction::Outbound,
        remote,
        local,
        key: secret.map(|s| s.id()),
    })
}

/// The listener's side: a dialler we do not know yet. Its Hello first,
/// checked to be a configured peer; our Hello, filled in for it; then the
/// proofs, its first.
pub async fn as_listener(
    conn: Conn,
    cfg: &Config,
    journal: &Journal,
) -> Result<Established, HandshakeError> {
    let Conn {
        mut ws,
        liveness,
        remote,
        local,
    } = conn;
    let (hello, theirs) = read_hello(&mut ws).await?;
    if let Err(e) = check_hello(&hello, None, cfg) {
        refuse_protocol(ws, &e).await;
        return Err(HandshakeError::Protocol(e));
    }
    let secret = match agree_key(&hello, cfg, Role::Listener) {
        Ok(s) => s,
        Err((e, reason)) => {
            refuse(ws, CLOSE_AUTH, &reason).await;
            return Err(e);
        }
    };
    let mine = send_hello(&mut ws, hello_for(cfg, journal, &hello.node)).await?;
    let t = Transcript {
        dialler_hello: &theirs,
        listener_hello: &mine,
    };
    authenticate_listener(&mut ws, secret.as_ref(), &t).await?;
    Ok(Established {
        ws,
        liveness,
        dialled_by: hello.node.clone(),
        hello,
        direction: Direction::Inbound,
        remote,
        local,
        key: secret.map(|s| s.id()),
    })
}

/// A session whose handshake is complete, on its way to its link task.
pub struct Established {
    pub ws: Ws,
    /// When bytes last arrived on its connection.
    pub liveness: Liveness,
    /// The peer's Hello.
    pub hello: Hello,
    /// Who dialled: decides collisions.
    pub dialled_by: String,
    pub direction: Direction,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The id of the secret the session was authenticated with (none: no
    /// secret).
    pub key: Option<KeyId>,
}

/// Our Hello to `peer`.
fn hello_for(cfg: &Config, journal: &Journal, peer: &str) -> Hello {
    let st = journal.peer(peer);
    Hello {
        node: cfg.node.clone(),
        version: WIRE_VERSION,
        software: peerlink::VERSION.to_string(),
        epoch: journal.epoch(),
        expect_epoch: st.recv_epoch,
        expect_next: st.recv_next,
        max_frame: max_frame(cfg),
        nonce: (!cfg.secrets.is_empty()).then(auth::fresh_nonce),
        keys: cfg.secrets.iter().map(Secret::id).collect(),
    }
}

/// Send our Hello; returns the bytes sent (they are part of the transcript).
async fn send_hello(ws: &mut Ws, hello: Hello) -> Result<Vec<u8>, String> {
    let bytes = PeerFrame::Hello(hello)
        .encode()
        .map_err(|e| e.to_string())?;
    ws.send(Message::Binary(bytes.clone().into()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Read the peer's Hello; returns it and its bytes. A Hello of another
/// protocol version is refused with a message saying which.
async fn read_hello(ws: &mut Ws) -> Result<(Hello, Vec<u8>), String> {
    let bytes = read_binary(ws).await?;
    match PeerFrame::decode(&bytes) {
        Ok(PeerFrame::Hello(h)) => Ok((h, bytes)),
        Ok(other) => Err(format!("peer sent {} before its Hello", other.kind())),
        Err(e) => Err(match wire::hello_head(&bytes) {
            Some((node, version)) if version != WIRE_VERSION => format!(
                "peer {node:?} speaks peer protocol version {version}, this node speaks {WIRE_VERSION} (peerd {}): upgrade the older one",
                peerlink::VERSION
            ),
            _ => format!("handshake: {e}"),
        }),
    }
}

/// Read the next peer frame, skipping pings and pongs.
async fn read_frame(ws: &mut Ws) -> Result<PeerFrame, String> {
    let bytes = read_binary(ws).await?;
    PeerFrame::decode(&bytes).map_err(|e| format!("handshake: {e}"))
}

/// Read the next binary message, skipping pings and pongs.
async fn read_binary(ws: &mut Ws) -> Result<Vec<u8>, String> {
    loop {
        match ws.next().await {
            None => return Err("connection closed during handshake".into()),
            Some(Err(e)) => return Err(format!("handshake: {e}")),
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Close(f))) => {
                let why = f
                    .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                    .unwrap_or_default();
                return Err(format!("peer closed the handshake: {why}"));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(_)) => return Err("handshake: expected a binary frame".into()),
        }
    }
}

/// Send one peer frame.
async fn send_frame(ws: &mut Ws, frame: &PeerFrame) -> Result<(), String> {
    let bytes = frame.encode().map_err(|e| e.to_string())?;
    ws.send(Message::Binary(bytes.into()))
        .await
        .map_err(|e| e.to_string())
}

/// Check a peer's Hello: version, and that it is who we think.
fn check_hello(hello: &Hello, expected: Option<&str>, cfg: &Config) -> Result<(), String> {
    if hello.version != WIRE_VERSION {
        return Err(format!(
            "peer {} speaks peer protocol version {} (peerd {}), this node speaks {} (peerd {})",
            hello.node,
            hello.version,
            hello.software,
            WIRE_VERSION,
            peerlink::VERSION
        ));
    }
    if hello.node == cfg.node {
        return Err(format!("peer claims this node's own name {:?}", hello.node));
    }
    match expected {
        Some(name) if name != hello.node => Err(format!(
            "expected peer {name:?} but it says it is {:?}",
            hello.node
        )),
        None if !cfg.peers.iter().any(|p| p.name == hello.node) => Err(format!(
            "unknown peer {:?} (not in this node's [[peer]] list)",
            hello.node
        )),
        _ => Ok(()),
    }
}

/// Which secret this session uses: both sides need a secret, or neither,
/// and with secrets [`auth::agree`] picks one both hold. A mismatch is
/// refused at once: the error for our log, and the close reason for the
/// peer's, both saying which side lacks what.
fn agree_key(
    hello: &Hello,
    cfg: &Config,
    role: Role,
) -> Result<Option<Secret>, (HandshakeError, String)> {
    let mine: Vec<KeyId> = cfg.secrets.iter().map(Secret::id).collect();
    match (mine.is_empty(), hello.nonce.is_some()) {
        (true, false) => return Ok(None),
        (false, false) => {
            return Err((
                HandshakeError::Auth(format!(
                    "peer {:?} has no secret but this node requires one; set the same `secret` on both",
                    hello.node
                )),
                format!(
                    "{} requires authentication: set the same secret on both nodes",
                    cfg.node
                ),
            ));
        }
        (true, true) => {
            return Err((
                HandshakeError::Auth(format!(
                    "peer {:?} has a secret but this node has none; set the same `secret` on both",
                    hello.node
                )),
                format!(
                    "{} has no secret configured: set the same secret on both nodes",
                    cfg.node
                ),
            ));
        }
        (false, true) => {}
    }
    let (dialler, listener) = match role {
        Role::Dialler => (&mine, &hello.keys),
        Role::Listener => (&hello.keys, &mine),
    };
    let chosen =
        auth::agree(dialler, listener).and_then(|id| cfg.secrets.iter().find(|s| s.id() == id));
    match chosen {
        Some(s) => Ok(Some(s.clone())),
        None => Err((
            HandshakeError::Auth(format!(
                "wrong secret? no secret in common with peer {:?}: this node holds {}, the peer {} \
                 (secret ids; the same secret on both has the same id)",
                hello.node,
                auth::show_ids(&mine),
                auth::show_ids(&hello.keys)
            )),
            format!(
                "authentication failed: wrong secret? no secret in common ({} holds {})",
                cfg.node,
                auth::show_ids(&mine)
            ),
        )),
    }
}

/// The dialler's side of authentication (with a secret): prove, then
/// check the listener's proof. Closes the connection on failure.
async fn authenticate_dialler(
    ws: &mut Ws,
    secret: Option<&Secret>,
    t: &Transcript<'_>,
) -> Result<(), HandshakeError> {
    let Some(secret) = secret else {
        return Ok(());
    };
    let mine = auth::proof(secret, Role::Dialler, t);
    send_frame(ws, &PeerFrame::Auth { proof: mine }).await?;
    let theirs = match read_frame(ws).await {
        Ok(PeerFrame::Auth { proof }) => proof,
        Err(e) => return Err(HandshakeError::Auth(format!("refused by the peer: {e}"))),
        Ok(other) => {
            return Err(HandshakeError::Auth(format!(
                "the listener sent {} instead of its proof",
                other.kind()
            )));
        }
    };
    if !auth::verify(secret, Role::Listener, t, &theirs) {
        close(ws, CLOSE_AUTH, "authentication failed: wrong secret?").await;
        return Err(HandshakeError::Auth(
            "the listener's proof does not match this node's secret (is the secret the same on both?)"
                .into(),
        ));
    }
    Ok(())
}

/// The listener's side of authentication (with a secret): check the
/// dialler's proof, and only then prove. Closes the connection on failure.
async fn authenticate_listener(
    ws: &mut Ws,
    secret: Option<&Secret>,
    t: &Transcript<'_>,
) -> Result<(), HandshakeError> {
    let Some(secret) = secret else {
        return Ok(());
    };
    let theirs = match read_frame(ws).await {
        Ok(PeerFrame::Auth { proof }) => proof,
        Ok(other) => {
            close(ws, CLOSE_AUTH, "authentication required").await;
            return Err(HandshakeError::Auth(format!(
                "the dialler sent {} instead of its proof",
                other.kind()
            )));
        }
        Err(e) => return Err(HandshakeError::Auth(format!("no proof: {e}"))),
    };
    if !auth::verify(secret, Role::Dialler, t, &theirs) {
        close(ws, CLOSE_AUTH, "authentication failed: wrong secret?").await;
        return Err(HandshakeError::Auth(
            "the dialler's proof does not match this node's secret (wrong secret, or a replayed handshake)"
                .into(),
        ));
    }
    let mine = auth::proof(secret, Role::Listener, t);
    send_frame(ws, &PeerFrame::Auth { proof: mine }).await?;
    Ok(())
}

/// Send a close frame on a connection we still hold.
async fn close(ws: &mut Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    };
    if ws.close(Some(frame)).await.is_err() {
        return;
    }
    // Wait (briefly) for the answer: dropping the socket with unread data
    // resets the connection, and the other side would see a reset instead
    // of our reason.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Close a connection we refuse, telling the other side why.
pub async fn refuse(mut ws: Ws, code: u16, reason: &str) {
    let mut reason = reason.to_string();
    reason.truncate(120); // close reasons must fit a control frame
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = ws.close(Some(frame)).await;
}

/// Refuse with the protocol close code.
pub async fn refuse_protocol(ws: Ws, reason: &str) {
    refuse(ws, CLOSE_PROTOCOL, reason).await
}
