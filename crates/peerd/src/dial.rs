//! Dialling a peer: TCP connect, TLS for `wss://` (the peer's certificate
//! checked against `[tls] ca`), WebSocket upgrade with the `peerlink.v1`
//! subprotocol; then `handshake` does the dialler's side of the handshake.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::config::{Config, Peer};
use crate::handshake::{self, Conn, Established, LinkError};
use crate::journal::Journal;
use crate::tls::Tls;
use crate::transport::{Io, watched, ws_config};
use crate::wire::SUBPROTOCOL;

/// Dial `peer` and complete the handshake; the caller bounds the time.
pub async fn dial(
    cfg: &Config,
    journal: &Journal,
    tls: &Tls,
    peer: &Peer,
) -> Result<Established, LinkError> {
    let mut request = peer
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| LinkError::BadUrl(format!("bad url {}: {e}", peer.url)))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let uri = request.uri().clone();
    let host = uri
        .host()
        .ok_or_else(|| LinkError::BadUrl(format!("no host in {}", peer.url)))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tls_wanted = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls_wanted { 443 } else { 80 });
    let connect_error = |error| LinkError::Connect {
        addr: format!("{host}:{port}"),
        error,
    };
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(connect_error)?;
    let _ = tcp.set_nodelay(true);
    let remote = tcp.peer_addr().map_err(connect_error)?;
    let local = tcp.local_addr().map_err(connect_error)?;
    let io: Box<dyn Io> = if tls_wanted {
        Box::new(tls.connect(host, tcp).await.map_err(LinkError::Tls)?)
    } else {
        Box::new(tcp)
    };
    let (io, liveness) = watched(io);
    let (ws, response) =
        tokio_tungstenite::client_async_with_config(request, io, Some(ws_config(cfg)))
            .await
            .map_err(|e| LinkError::Upgrade(upgrade_error(&peer.url, e)))?;
    let agreed = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(SUBPROTOCOL) {
        return Err(LinkError::NotPeerd(peer.url.clone()));
    }
    let conn = Conn {
        ws,
        liveness,
        remote,
        local,
    };
    Ok(handshake::as_dialler(conn, cfg, journal, &peer.name).await?)
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
