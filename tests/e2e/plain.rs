//! Plain WebSocket clients (SPEC §7): any client without the `peerlink.v1`
//! subprotocol may talk to a node.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

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

#[test]
fn empty_message_is_refused_with_a_close_reason() {
    let sb = Sandbox::new();
    let port = free_port();
    let spec = sb.spec("a", &Sandbox::config("a", port, &[("b", free_port())], ""));
    let a = Daemon::start(&spec);
    let client = PlainClient::connect(port);
    client.send_text("");
    assert_eq!(
        client.next(LONG),
        Some(PlainEvent::Close(Some((
            1008,
            "empty message refused".into()
        ))))
    );
    assert!(a.inbox().is_empty(), "nothing stored");
    // The daemon carries on: another client is served.
    let again = PlainClient::connect(port);
    again.send_text("still here");
    a.wait(LONG, "the next client's message is stored", |a| {
        a.bodies() == ["still here"]
    });
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
