//! Dialling a peer: TCP connect, WebSocket upgrade with the `peerlink.v1`
//! subprotocol, then the dialler's side of the Hello exchange.

use peerlink::control::Direction;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::config::{Config, Peer};
use crate::handshake::{self, Established};
use crate::journal::Journal;
use crate::transport::{Io, ws_config};
use crate::wire::{PeerFrame, SUBPROTOCOL};

/// Dial `peer` and complete the handshake; the caller bounds the time.
/// Errors are one line, meant for the log and `status`.
pub async fn dial(cfg: &Config, journal: &Journal, peer: &Peer) -> Result<Established, String> {
    let mut request = peer
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad url {}: {e}", peer.url))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let uri = request.uri().clone();
    let host = uri
        .host()
        .ok_or_else(|| format!("no host in {}", peer.url))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if tls {
        return Err("wss:// is not supported yet".into());
    }
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let remote = tcp.peer_addr().map_err(|e| e.to_string())?;
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let io: Box<dyn Io> = Box::new(tcp);
    let (mut ws, response) =
        tokio_tungstenite::client_async_with_config(request, io, Some(ws_config(cfg)))
            .await
            .map_err(|e| format!("websocket upgrade at {}: {e}", peer.url))?;
    let agreed = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(SUBPROTOCOL) {
        return Err(format!(
            "{} did not agree to subprotocol {SUBPROTOCOL}: not a peerd?",
            peer.url
        ));
    }
    let mine = handshake::hello_for(cfg, journal, &peer.name);
    handshake::send_frame(&mut ws, &PeerFrame::Hello(mine)).await?;
    let hello = match handshake::read_frame(&mut ws).await? {
        PeerFrame::Hello(h) => h,
        _ => return Err("peer sent data before its Hello".into()),
    };
    if let Err(e) = handshake::check_hello(&hello, Some(&peer.name), cfg) {
        handshake::refuse_protocol(ws, &e).await;
        return Err(e);
    }
    Ok(Established {
        ws,
        hello,
        dialled_by: cfg.node.clone(),
        direction: Direction::Outbound,
        remote,
        local,
    })
}
