//! The Hello exchange that opens every peer session (see `wire` for the
//! protocol). The dialler speaks first, naming itself; the listener checks
//! the name against its configured peers and answers with its own Hello,
//! filled in for that peer. Both directions are bounded by the caller's
//! handshake timeout.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use peerlink::control::Direction;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::config::Config;
use crate::journal::Journal;
use crate::transport::{Ws, max_frame};
use crate::wire::{CLOSE_PROTOCOL, Hello, PeerFrame, WIRE_VERSION};

/// A session whose handshake is complete, on its way to its link task.
pub struct Established {
    pub ws: Ws,
    /// The peer's Hello.
    pub hello: Hello,
    /// Who dialled: decides collisions.
    pub dialled_by: String,
    pub direction: Direction,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// Our Hello to `peer`.
pub fn hello_for(cfg: &Config, journal: &Journal, peer: &str) -> Hello {
    let st = journal.peer(peer);
    Hello {
        node: cfg.node.clone(),
        version: WIRE_VERSION,
        software: peerlink::VERSION.to_string(),
        epoch: journal.epoch(),
        expect_epoch: st.recv_epoch,
        expect_next: st.recv_next,
        max_frame: max_frame(cfg),
    }
}

/// Read the next peer frame, skipping pings and pongs.
pub async fn read_frame(ws: &mut Ws) -> Result<PeerFrame, String> {
    loop {
        match ws.next().await {
            None => return Err("connection closed during handshake".into()),
            Some(Err(e)) => return Err(format!("handshake: {e}")),
            Some(Ok(Message::Binary(b))) => {
                return PeerFrame::decode(&b).map_err(|e| format!("handshake: {e}"));
            }
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
pub async fn send_frame(ws: &mut Ws, frame: &PeerFrame) -> Result<(), String> {
    let bytes = frame.encode().map_err(|e| e.to_string())?;
    ws.send(Message::Binary(bytes.into()))
        .await
        .map_err(|e| e.to_string())
}

/// Check a peer's Hello: version, and that it is who we think.
pub fn check_hello(hello: &Hello, expected: Option<&str>, cfg: &Config) -> Result<(), String> {
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
