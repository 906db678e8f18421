//! Plain WebSocket clients (SPEC §7): any client without the `peerlink.v1`
//! subprotocol may talk to a node.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use peerlink_e2e::{Daemon, Pair, PlainClient, PlainEvent, Sandbox, ctl_cmd, free_port};

const LONG: Duration = Duration::from_secs(20);

#[test]
fn plain_client_sends_to_the_inbox_and_receives_what_the_peer_sends() {
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    let client = PlainClient::connect(pair.a_port);
    let other = PlainClient::connect(pair.a_port);
    client.send_text("hello from a browser");
    a.wait(LONG, "a stores the plain client's message", |a| {
        a.bodies() == ["hello from a browser"]
    });
    let origin = format!("client:{}", client.local);
    let entry = &a.inbox()[0];
    assert_eq!(entry["origin"], origin.as_str());
    assert_eq!(entry["origin_seq"], 0);
    // `peerctl tail` on that node shows it, with who sent it.
    let out = pair.a.ctl(&["tail"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.trim_end()
            .ends_with(&format!("{origin} hello from a browser")),
        "{text}"
    );

    // What arrives from the peer reaches every plain client, as text; the
    // other client never got the first one's message (no echo between
    // plain clients), so the peer's message is the first thing it sees.
    b.send(&["from the peer"]);
    for c in [&client, &other] {
        assert_eq!(c.next(LONG), Some(PlainEvent::Text("from the peer".into())));
    }
    // Not UTF-8: binary.
    let mut send = ctl_cmd(&pair.b.socket)
        .arg("send")
        .stdin(Stdio::piped())
        .spawn()
        .expect("peerctl send");
    send.stdin
        .take()
        .expect("stdin")
        .write_all(b"\xff\xfebinary\n")
        .expect("write");
    assert!(send.wait().expect("wait").success());
    assert_eq!(
        client.next(LONG),
        Some(PlainEvent::Binary(b"\xff\xfebinary".to_vec()))
    );
    // The plain client's message stayed local: the peer never saw it.
    assert!(b.bodies().is_empty(), "{:?}", b.bodies());
    // Leaving is a clean closing handshake: the daemon answers the close.
    client.close();
    assert!(
        matches!(client.next(LONG), Some(PlainEvent::Close(Some((1000, _))))),
        "close answered"
    );
}

/// Like the original Go programs: upgrade, then only ever write, masked
/// text frames, never reading the socket (so never answering a ping).
struct NeverReads(TcpStream);

impl NeverReads {
    fn connect(port: u16) -> NeverReads {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(LONG)).expect("timeout");
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("upgrade request");
        // The upgrade response is the only thing it ever reads.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("upgrade response");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        NeverReads(s)
    }

    fn send_text(&mut self, text: &str) {
        let body = text.as_bytes();
        assert!(body.len() < 126, "short frames only");
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x81, 0x80 | body.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&f).expect("write a frame");
    }
}

#[test]
fn a_plain_client_that_never_reads_stays_connected_and_keeps_landing() {
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    let mut client = NeverReads::connect(pair.a_port);
    client.send_text("1 before the silence");
    a.wait(LONG, "a stores the first message", |a| {
        a.bodies() == ["1 before the silence"]
    });
    let silent_since = Instant::now();
    // Meanwhile the peer sends more than the socket buffers hold, which a
    // stores and tries to pass on to the client that never reads.
    let big = "x".repeat(512 << 10);
    let lines: String = (0..16).map(|_| format!("{big}\n")).collect();
    assert!(b.send_stdin(&lines).status.success());
    a.wait(LONG, "a stores the peer's 16 messages", |a| {
        a.inbox().len() == 17
    });
    // Silence is what is tested here: stay silent for well over
    // dead_after (2s in FAST_TIMERS), which used to drop such a client.
    let silence = Duration::from_secs(5);
    std::thread::sleep(silence.saturating_sub(silent_since.elapsed()));
    client.send_text("1 after the silence");
    a.wait(LONG, "a stores the message sent after the silence", |a| {
        a.bodies().last().map(String::as_str) == Some("1 after the silence")
    });
    let log = a.spec.log();
    assert!(
        !log.contains("plain WebSocket client left"),
        "the client was dropped:\n{log}"
    );
}

#[test]
fn with_a_secret_plain_clients_are_refused_unless_plain_clients_is_set() {
    let secret = "secret = \"0123456789abcdef-plain\"\n";
    let sb = Sandbox::new();
    let port = free_port();
    let spec = sb.spec(
        "a",
        &Sandbox::config("a", port, &[("b", free_port())], secret),
    );
    let a = Daemon::start(&spec);
    let client = PlainClient::connect(port);
    client.send_text("let me in");
    match client.next(LONG) {
        Some(PlainEvent::Close(Some((code, reason)))) => {
            assert_eq!(code, 4002, "{reason}");
            assert!(reason.contains("authentication"), "{reason}");
        }
        other => panic!("expected a close with a reason, got {other:?}"),
    }
    assert!(
        a.inbox().is_empty(),
        "nothing from the refused client stored"
    );
    drop(a);

    // plain_clients = true lets them in even with a secret.
    let port = free_port();
    let spec = sb.spec(
        "c",
        &Sandbox::config(
            "c",
            port,
            &[("b", free_port())],
            &format!("{secret}plain_clients = true\n"),
        ),
    );
    let c = Daemon::start(&spec);
    let client = PlainClient::connect(port);
    client.send_text("allowed in");
    c.wait(LONG, "the plain client's message is stored", |c| {
        c.bodies() == ["allowed in"]
    });
}
