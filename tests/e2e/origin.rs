//! Web pages cannot use a node unless allowed (README "Security"): an
//! upgrade carrying an `Origin` not in `allowed_origins`, or a foreign
//! `Host` on a loopback listener, gets a 403 before any WebSocket traffic
//! and one log line; programs (no `Origin`) and peers are unaffected. The
//! requests here are written byte by byte, the way a browser sends them;
//! `browser.rs` does the same with a real browser.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use peerlink_e2e::{Daemon, Pair, PlainClient, PlainEvent, Sandbox, free_port};

const LONG: Duration = Duration::from_secs(20);

/// What b answered to an upgrade request.
struct Answer {
    status: u16,
    text: String,
}

/// Send a WebSocket upgrade for `/ws` with `Host: host` and `headers`,
/// read the response head (and, for a refusal, the body up to the close),
/// then send one masked text frame `injected`, as a page does once open.
fn upgrade(port: u16, host: &str, headers: &[(&str, &str)]) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to b");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write upgrade");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        // Switching protocols: the head is all we want (the connection
        // stays open). A refusal: read on to the close, body included.
        if text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n") {
            break;
        }
    }
    // Refused: the connection is closed, and this goes nowhere.
    let _ = s.write_all(&masked_text_frame(b"injected"));
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer { status, text }
}

/// A client-to-server text frame (masked, as RFC 6455 requires).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Lines of b's log that contain `needle`.
fn log_lines(d: &Daemon, needle: &str) -> usize {
    d.spec.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn web_pages_need_an_allowed_origin_programs_and_peers_need_nothing() {
    // Written the way people type them: normalised on load.
    let pair = Pair::new(
        "allowed_origins = [\"HTTP://App.Example:8000/\"]\nallowed_hosts = [\"peer-host\"]\n",
    );
    let (a, b) = pair.start_linked();
    let port = pair.b_port;
    let since = b.peer("a")["connected_since_ms"].clone();
    a.send(&["before"]);
    b.wait(LONG, "the link delivers", |b| b.bodies() == ["before"]);
    let here = format!("127.0.0.1:{port}");

    // A page from another origin: 403 with the reason, and nothing it
    // sends after that reaches the inbox.
    let r = upgrade(port, &here, &[("Origin", "http://evil.example")]);
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("allowed_origins"), "{}", r.text);
    assert!(r.text.contains("http://evil.example"), "{}", r.text);
    // Also when it asks for the peer subprotocol (no secret: a Hello is
    // all a peer proves).
    let r = upgrade(
        port,
        &here,
        &[
            ("Origin", "http://evil.example:8000"),
            ("Sec-WebSocket-Protocol", "peerlink.v1"),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.text);
    // An allowed origin on another port, or scheme, is another origin.
    let r = upgrade(port, &here, &[("Origin", "https://app.example:8000")]);
    assert_eq!(r.status, 403, "{}", r.text);
    // DNS rebinding: this loopback listener reached under a foreign name.
    let r = upgrade(port, &format!("evil.example:{port}"), &[]);
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("allowed_hosts"), "{}", r.text);
    // This machine's names, and one the config allows, pass.
    for host in [format!("localhost:{port}"), format!("peer-host:{port}")] {
        let r = upgrade(port, &host, &[]);
        assert_eq!(r.status, 101, "Host {host}: {}", r.text);
    }
    b.wait(LONG, "the two plain clients' injected texts", |b| {
        b.bodies().iter().filter(|m| *m == "injected").count() == 2
    });

    // One line each, naming what was refused.
    b.wait(LONG, "a log line per refusal", |b| {
        log_lines(b, "refused a WebSocket upgrade") == 4
    });
    for needle in [
        "Origin \"http://evil.example\" is not in allowed_origins",
        "Origin \"http://evil.example:8000\"",
        "Origin \"https://app.example:8000\"",
        "Host \"evil.example:",
    ] {
        assert_eq!(log_lines(&b, needle), 1, "{needle}:\n{}", b.spec.log());
    }

    // The allowed page, and a program with no Origin: both ways.
    let page = PlainClient::connect_with(port, &[("Origin", "http://app.example:8000")]);
    let program = PlainClient::connect(port);
    page.send_text("from the allowed page");
    b.wait(LONG, "the page's message stored", |b| {
        b.bodies().last().map(String::as_str) == Some("from the allowed page")
    });
    program.send_text("from a program");
    b.wait(LONG, "the program's message stored", |b| {
        b.bodies().last().map(String::as_str) == Some("from a program")
    });
    a.send(&["from a to the clients"]);
    for c in [&page, &program] {
        assert_eq!(
            c.next(LONG),
            Some(PlainEvent::Text("from a to the clients".into()))
        );
    }
    assert_eq!(
        b.bodies(),
        [
            "before",
            "injected",
            "injected",
            "from the allowed page",
            "from a program",
            "from a to the clients"
        ]
    );
    // The peers never noticed: the same session throughout.
    assert_eq!(b.peer("a")["connected_since_ms"], since);
    assert_eq!(b.peer("a")["reconnects"], 0);
    assert_eq!(log_lines(&b, "refused a WebSocket upgrade"), 4);
}

#[test]
fn a_peer_refused_by_host_says_why_and_allowed_hosts_lets_it_in() {
    // This machine's own name resolves to loopback (/etc/hosts) and
    // reaches b's loopback listener as a name b does not know.
    let Some(name) = loopback_hostname() else {
        eprintln!(
            "SKIPPED: origin::a_peer_refused_by_host: this host's name does not resolve to 127.0.0.1"
        );
        return;
    };
    let pair = Pair::new("");
    let by_name = |extra: &str| {
        let mut text = Sandbox::config("a", pair.a_port, &[], extra);
        text.push_str(&format!(
            "[[peer]]\nname = \"b\"\nurl = \"ws://{name}:{}/ws\"\n",
            pair.b_port
        ));
        std::fs::write(&pair.a.config, text).expect("a's config");
    };
    by_name("");
    // b never dials a (nothing listens where it looks): every session is
    // one that a dialled by name.
    let nowhere = free_port();
    std::fs::write(
        &pair.b.config,
        Sandbox::config("b", pair.b_port, &[("a", nowhere)], ""),
    )
    .expect("b's config");
    let b = Daemon::start(&pair.b);
    let a = Daemon::start(&pair.a);
    a.wait(LONG, "a's status says why b refused", |a| {
        a.peer("b")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("403") && e.contains("allowed_hosts"))
    });
    b.wait(LONG, "b logs the Host", |b| {
        log_lines(b, &format!("Host \"{name}:")) > 0
    });
    drop(a);

    // With the name allowed on b, the same dial links up.
    drop(b);
    let b_text = std::fs::read_to_string(&pair.b.config).expect("b's config");
    std::fs::write(
        &pair.b.config,
        format!("allowed_hosts = [\"{name}\"]\n{b_text}"),
    )
    .expect("b's config");
    let b = Daemon::start(&pair.b);
    let a = Daemon::start(&pair.a);
    a.wait_connected("b");
    a.send(&["by name"]);
    b.wait(LONG, "delivered", |b| b.bodies() == ["by name"]);
}

/// This machine's host name, if it resolves to 127.0.0.1 (as Debian's
/// /etc/hosts makes it) and is not itself `localhost`.
fn loopback_hostname() -> Option<String> {
    use std::net::ToSocketAddrs;
    let out = std::process::Command::new("hostname").output().ok()?;
    let name = String::from_utf8(out.stdout).ok()?.trim().to_lowercase();
    if name.is_empty() || name == "localhost" || name.ends_with(".localhost") {
        return None;
    }
    let mut addrs = (name.as_str(), 80).to_socket_addrs().ok()?;
    addrs
        .any(|a| a.ip() == std::net::IpAddr::from([127, 0, 0, 1]))
        .then_some(name)
}
