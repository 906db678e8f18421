//! Dialling a peer: TCP connect, TLS for `wss://` (the peer's certificate
//! checked against `[tls] ca`), WebSocket upgrade with the `peerlink.v1`
//! subprotocol, then the dialler's side of the handshake.

use peerlink::control::Direction;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::auth::{Role, Transcript};
use crate::config::{Config, Peer};
use crate::handshake::{self, Established, HandshakeError};
use crate::journal::Journal;
use crate::status::Tally;
use crate::tls::Tls;
use crate::transport::{Io, watched, ws_config};
use crate::wire::{CLOSE_AUTH, SUBPROTOCOL};

/// Dial `peer` and complete the handshake; the caller bounds the time.
/// Errors are one line, meant for the log and `status`.
pub async fn dial(
    cfg: &Config,
    journal: &Journal,
    tls: &Tls,
    peer: &Peer,
    tally: &Tally,
) -> Result<Established, String> {
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
    let tls_wanted = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls_wanted { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let remote = tcp.peer_addr().map_err(|e| e.to_string())?;
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let io: Box<dyn Io> = if tls_wanted {
        Box::new(tls.connect(host, tcp).await?)
    } else {
        Box::new(tcp)
    };
    let (io, liveness) = watched(io);
    let (mut ws, response) =
        tokio_tungstenite::client_async_with_config(request, io, Some(ws_config(cfg)))
            .await
            .map_err(|e| upgrade_error(&peer.url, e))?;
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
    let mine = handshake::send_hello(&mut ws, mine).await?;
    let (hello, theirs) = handshake::read_hello(&mut ws).await?;
    if let Err(e) = handshake::check_hello(&hello, Some(&peer.name), cfg) {
        handshake::refuse_protocol(ws, &e).await;
        return Err(e);
    }
    let secret = match handshake::agree_key(&hello, cfg, Role::Dialler) {
        Ok(s) => s,
        Err((e, reason)) => {
            handshake::refuse(ws, CLOSE_AUTH, &reason).await;
            tally.auth_failed();
            return Err(format!("{} ({remote}): {e}", peer.name));
        }
    };
    let t = Transcript {
        dialler_hello: &mine,
        listener_hello: &theirs,
    };
    handshake::authenticate_dialler(&mut ws, secret.as_ref(), &t)
        .await
        .map_err(|e| match e {
            HandshakeError::Auth(_) => {
                tally.auth_failed();
                format!("{} ({remote}): {e}", peer.name)
            }
            HandshakeError::Protocol(e) | HandshakeError::Forbidden(e) => e,
        })?;
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

/// A refused upgrade, with the listener's reason when it gave one (a 403
/// body says which header it refused and which key allows it).
fn upgrade_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    let reason = match &e {
        Error::Http(resp) => resp
            .body()
            .as_deref()
            .map(|b| {
                String::from_utf8_lossy(b)
                    .trim()
                    .chars()
                    .take(200)
                    .collect::<String>()
            })
            .filter(|b| !b.is_empty()),
        _ => None,
    };
    match reason {
        Some(r) => format!("websocket upgrade at {url}: {e}: {r}"),
        None => format!("websocket upgrade at {url}: {e}"),
    }
}
