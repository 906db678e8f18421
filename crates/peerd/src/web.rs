//! The optional HTTP listener (`http_listen`, off unless configured):
//! Prometheus metrics and the browser console, over hyper (HTTP/1.1).
//!
//! | request          | answer                                                  |
//! |------------------|---------------------------------------------------------|
//! | `GET /metrics`   | [`crate::metrics`], OpenMetrics text; no token needed   |
//! | `GET /?token=T`  | redeems a one-time token: `303` to `/` with a session cookie |
//! | `GET /`          | the console page, with a valid session cookie           |
//! | `GET /console.*` | the page's script and style sheet (static, no data)     |
//! | `GET /ws`        | the console's WebSocket, with a valid session cookie    |
//!
//! Tokens come only from the control socket (`peerctl console`), so only
//! whoever may use `peerctl` may use the console ([`crate::console`]).
//! Every request first passes the same `Host` and `Origin` checks as the
//! peer listener ([`crate::origin`]): on a loopback `http_listen` a
//! `Host` that is not this machine is refused (DNS rebinding), and a
//! request carrying an `Origin` other than the console's own (or one in
//! `allowed_origins`) is refused, so another site's page can neither
//! read the page nor open its WebSocket, even with the cookie.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once (more are
//! closed at once), request headers within `handshake_timeout` and within
//! hyper's buffer limit, no request body is ever read, the console's
//! WebSocket messages at most `max_message` plus room for the JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::console::{self, Tokens};
use crate::origin::{Gate, normalise_origin};
use crate::server::Control;

/// HTTP connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

type Body = Full<Bytes>;

/// What every request is answered from.
struct Web {
    ctl: Arc<Control>,
    tokens: Arc<Tokens>,
    /// `http_listen` is a loopback address: `Host` is checked.
    loopback: bool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Serve `listener` until `shutdown`. Does nothing without console
/// tokens (the daemon makes them whenever `http_listen` is set).
pub async fn run(
    listener: TcpListener,
    ctl: Arc<Control>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let Some(tokens) = ctl.console.clone() else {
        return;
    };
    let loopback = listener
        .local_addr()
        .is_ok_and(|a: SocketAddr| a.ip().is_loopback());
    let web = Arc::new(Web {
        loopback,
        ctl,
        tokens,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut full_logged = false;
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("http accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !full_logged {
                tracing::warn!(
                    "too many HTTP connections ({MAX_CONNECTIONS}); closing new ones until some end"
                );
                full_logged = true;
            }
            continue;
        };
        full_logged = false;
        let web = web.clone();
        tracker.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let svc_web = web.clone();
            let svc = hyper::service::service_fn(move |req| {
                let web = svc_web.clone();
                async move { Ok::<_, Infallible>(handle(req, &web, remote)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(web.ctl.cfg().handshake_timeout)
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            tokio::select! {
                _ = web.shutdown.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(%remote, "http connection: {e}");
                }
            }
            drop(slot);
        });
    }
}

fn handle(req: Request<Incoming>, web: &Arc<Web>, remote: SocketAddr) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    let path = req.uri().path().to_string();
    // The config of the moment: a reload may change these lists.
    let cfg = web.ctl.cfg();
    let hosts = web.loopback.then(|| cfg.allowed_hosts.clone());
    if let Err(why) = check_origin(&req, hosts, &cfg.allowed_origins) {
        tracing::warn!(%remote, "http {path}: {}", why.0);
        return text(StatusCode::FORBIDDEN, &why.1);
    }
    match path.as_str() {
        "/metrics" => {
            let body = crate::metrics::render(&web.ctl.observed.snapshot());
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            r
        }
        "/" => page(&req, web),
        "/console.js" => asset(console::SCRIPT, "text/javascript; charset=utf-8"),
        "/console.css" => asset(console::STYLE, "text/css; charset=utf-8"),
        "/ws" => upgrade(req, web, remote),
        _ => text(StatusCode::NOT_FOUND, "not found; try / or /metrics\n"),
    }
}

/// `Host` must be this machine (on loopback), and an `Origin`, if sent,
/// must be the console's own or in `allowed_origins`. Returns the log
/// line and the answer's text.
fn check_origin(
    req: &Request<Incoming>,
    hosts: Option<Vec<String>>,
    allowed: &[String],
) -> Result<(), (String, String)> {
    let h = |name| req.headers().get(name).map(HeaderValue::as_bytes);
    let mut origins = allowed.to_vec();
    // The console's own origin: the scheme and authority the page was
    // loaded from (the Host header, itself checked below).
    if let Some(own) = h(header::HOST)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|host| normalise_origin(&format!("http://{host}")).ok())
    {
        origins.push(own);
    }
    let gate = Gate { origins, hosts };
    gate.check(h(header::ORIGIN), h(header::HOST))
        .map_err(|r| (r.log, r.body))
}

/// The session cookie's value, if the request has one.
fn session(req: &Request<Incoming>, tokens: &Tokens) -> Option<String> {
    let name = tokens.cookie_name();
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn token_of(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
}

const NO_TOKEN: &str = "This is peerd's console. It needs a one-time link: run `peerctl console` \
                        (as a user who may use peerctl) and open the URL it prints.\n";

/// `/`: redeem a token (then come back without it in the address), or
/// show the page to a session.
fn page(req: &Request<Incoming>, web: &Web) -> Response<Body> {
    if let Some(token) = token_of(req) {
        let Some(session) = web.tokens.redeem(token) else {
            return text(
                StatusCode::FORBIDDEN,
                "This console link was used already or has expired (a link works once, within \
                 10 minutes). Run `peerctl console` for a new one.\n",
            );
        };
        let mut r = text(StatusCode::SEE_OTHER, "");
        let cookie = format!(
            "{}={session}; Path=/; HttpOnly; SameSite=Strict",
            web.tokens.cookie_name()
        );
        let headers = r.headers_mut();
        headers.insert(header::LOCATION, HeaderValue::from_static("/"));
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.insert(header::SET_COOKIE, v);
        }
        return r;
    }
    match session(req, &web.tokens) {
        Some(s) if web.tokens.session_ok(&s) => asset(console::PAGE, "text/html; charset=utf-8"),
        _ => text(StatusCode::FORBIDDEN, NO_TOKEN),
    }
}

/// `/ws`: the console's WebSocket, for a session only.
fn upgrade(mut req: Request<Incoming>, web: &Arc<Web>, remote: SocketAddr) -> Response<Body> {
    if !session(&req, &web.tokens).is_some_and(|s| web.tokens.session_ok(&s)) {
        tracing::info!(%remote, "console WebSocket refused: no valid session (peerctl console)");
        return text(StatusCode::FORBIDDEN, NO_TOKEN);
    }
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        return text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade is expected here\n",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let web2 = web.clone();
    web.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%remote, "console upgrade failed: {e}");
                return;
            }
        };
        let mut config = WebSocketConfig::default();
        let room = web2.ctl.cfg().max_message as usize * 6 + 64 * 1024;
        config.max_message_size = Some(room);
        config.max_frame_size = Some(room);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        tracing::debug!(%remote, "console connected");
        console::serve(ws, web2.ctl.clone(), web2.shutdown.clone()).await;
    });
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page loads only from here and talks only to here.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
