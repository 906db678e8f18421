//! Bad input while the link works: random bytes, plain HTTP, a truncated
//! upgrade, an oversized frame, a slowloris and a burst of connections on
//! b's peer port; garbage, an oversized length prefix, an unknown request,
//! a silent client and a flood on b's control socket. b stays up, the link
//! stays up (the same session), and every message arrives exactly once.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use peerlink::codec;
use peerlink::control::{ErrorKind, PROTOCOL_VERSION, Request, Response};
use peerlink_e2e::{Daemon, Pair};
use rand::RngCore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::auth::{SECRET, closed_within, secret_line};

const LONG: Duration = Duration::from_secs(20);
/// b's handshake_timeout (FAST_TIMERS) plus room for a busy machine.
const DROPPED_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn bad_input_on_both_sockets_leaves_b_up_and_every_message_delivered_once() {
    let extra = format!(
        "{}max_message = \"64KiB\"\nmax_pending_handshakes = 8\n",
        secret_line(SECRET)
    );
    let pair = Pair::new(&extra);
    let (a, b) = pair.start_linked();
    let session = |b: &Daemon| {
        let p = b.peer("a");
        (
            p["state"].clone(),
            p["remote_addr"].clone(),
            p["reconnects"].clone(),
        )
    };
    let before = session(&b);

    // a sends 300 messages in 30 batches while the attacks run.
    let a_spec = pair.a.clone();
    let sender = thread::spawn(move || {
        for batch in 0..30 {
            let msgs: Vec<String> = (0..10).map(|i| format!("m{}", batch * 10 + i)).collect();
            let mut args = vec!["send".to_string()];
            args.extend(msgs);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = a_spec.ctl(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });

    // Each socket's attacks run one after the other (the burst and the
    // flood last: while they fill the handshake and client limits, the
    // other attacks would just be turned away), both sockets at once.
    let port = pair.b_port;
    let peer_port = thread::spawn(move || {
        random_bytes(port);
        plain_http(port);
        truncated_upgrade(port);
        oversized_frame(port);
        slowloris(port);
        burst(port);
    });
    let sock = pair.b.socket.clone();
    let control = thread::spawn(move || {
        control_garbage(&sock);
        control_oversized(&sock);
        control_unknown(&sock);
        control_silent(&sock);
        control_flood(&sock);
    });
    for (name, t) in [("peer port", peer_port), ("control socket", control)] {
        if t.join().is_err() {
            panic!(
                "an attack on b's {name} did not end as expected; b's log:\n{}",
                b.spec.log()
            );
        }
    }
    sender.join().expect("a's sender");

    let want: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    b.wait(LONG, "b has all 300 messages", |b| b.bodies().len() >= 300);
    assert_eq!(b.bodies(), want, "every message exactly once, in order");
    assert_eq!(session(&b), before, "the link stayed up, the same session");
    assert_eq!(a.peer("b")["state"], "connected");
    // b's listener still takes a peer after all that: a reconnects.
    drop(a);
    let a = Daemon::start(&pair.a);
    a.wait_connected("b");
    a.send(&["after"]);
    b.wait(LONG, "a new session delivers", |b| {
        b.bodies().last().map(String::as_str) == Some("after")
    });
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect to b")
}

fn random_bytes(port: u16) {
    let mut s = connect(port);
    let mut junk = vec![0u8; 64 * 1024];
    rand::rng().fill_bytes(&mut junk);
    let _ = s.write_all(&junk);
    let _ = s.shutdown(Shutdown::Write);
    assert!(
        closed_within(&mut s, DROPPED_WITHIN),
        "random bytes: still open"
    );
}

fn plain_http(port: u16) {
    let mut s = connect(port);
    s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
        .expect("write");
    assert!(
        closed_within(&mut s, DROPPED_WITHIN),
        "plain HTTP: still open"
    );
}

fn truncated_upgrade(port: u16) {
    let mut s = connect(port);
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConn")
        .expect("write");
    let _ = s.shutdown(Shutdown::Write);
    assert!(
        closed_within(&mut s, DROPPED_WITHIN),
        "truncated upgrade: still open"
    );
}

/// A proper peer upgrade, then one binary message far over max_frame.
fn oversized_frame(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut req = format!("ws://127.0.0.1:{port}/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("peerlink.v1"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        let _ = ws.send(Message::Binary(vec![7u8; 512 * 1024].into())).await;
        let ended = tokio::time::timeout(DROPPED_WITHIN, async {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "oversized frame: b kept the connection");
    });
}

/// Headers one at a time, slowly, forever: b must drop it.
fn slowloris(port: u16) {
    let mut s = connect(port);
    let start = Instant::now();
    let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: b\r\n");
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 1024];
    for i in 0.. {
        assert!(
            start.elapsed() < DROPPED_WITHIN,
            "slowloris: b kept a never-finishing handshake"
        );
        if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// Far more connections than max_pending_handshakes, all silent; the ones
/// over the limit are closed at once, the rest at the handshake timeout.
fn burst(port: u16) {
    let mut conns: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(conns.len() > 50, "could not open the burst");
    for c in &mut conns {
        assert!(
            closed_within(c, DROPPED_WITHIN),
            "burst: a connection stayed open"
        );
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// The next framed response, or None at the end of the stream.
fn read_response(s: &mut UnixStream) -> Option<Response> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(codec::decode(&body).expect("b's reply decodes"))
}

fn control(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).expect("connect to b's control socket");
    s.set_read_timeout(Some(DROPPED_WITHIN)).expect("timeout");
    s
}

fn hello(s: &mut UnixStream) {
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        client: "hostile test".into(),
    };
    s.write_all(&frame(&codec::encode(&hello).expect("encode")))
        .expect("write hello");
    assert!(matches!(read_response(s), Some(Response::Hello { .. })));
}

fn assert_bad_request_then_closed(s: &mut UnixStream, what: &str) {
    match read_response(s) {
        Some(Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        }) => {}
        other => panic!("{what}: expected a BadRequest reply, got {other:?}"),
    }
    let mut rest = Vec::new();
    assert!(
        s.read_to_end(&mut rest).is_ok(),
        "{what}: connection not closed"
    );
}

fn control_garbage(sock: &Path) {
    let mut s = control(sock);
    // A small length, so the body is read and fails to decode.
    let mut junk = vec![0u8; 1000];
    rand::rng().fill_bytes(&mut junk);
    junk[0] = 0xff; // not a valid variant tag
    s.write_all(&frame(&junk)).expect("write");
    assert_bad_request_then_closed(&mut s, "garbage");
}

fn control_oversized(sock: &Path) {
    let mut s = control(sock);
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .expect("write");
    assert_bad_request_then_closed(&mut s, "oversized length prefix");
}

fn control_unknown(sock: &Path) {
    let mut s = control(sock);
    hello(&mut s);
    // Variant 99 of Request does not exist.
    s.write_all(&frame(&[99, 1, 2, 3])).expect("write");
    assert_bad_request_then_closed(&mut s, "unknown request");
}

fn control_silent(sock: &Path) {
    let mut s = control(sock);
    let start = Instant::now();
    let mut rest = Vec::new();
    assert!(
        matches!(s.read_to_end(&mut rest), Ok(0)),
        "a silent control client is closed"
    );
    assert!(start.elapsed() < DROPPED_WITHIN);
}

/// More control connections than the daemon serves at once; afterwards
/// it serves new ones again.
fn control_flood(sock: &Path) {
    let conns: Vec<UnixStream> = (0..300)
        .filter_map(|_| UnixStream::connect(sock).ok())
        .collect();
    assert!(conns.len() > 100, "could not open the flood");
    drop(conns);
    let deadline = Instant::now() + LONG;
    loop {
        let mut s = control(sock);
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client: "after the flood".into(),
        };
        if s.write_all(&frame(&codec::encode(&hello).expect("encode")))
            .is_ok()
            && matches!(read_response(&mut s), Some(Response::Hello { .. }))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "control socket dead after a flood"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
