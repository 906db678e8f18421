//! What a message may be: anything from one byte up to `max_message` (at
//! most 64 MiB) is sent, stored, tailed and delivered to plain clients; a
//! larger one is refused with an error naming `max_message`; an empty one
//! is never stored (refused as an argument, skipped as a stdin line or a
//! plain client's frame). Pipelined sends are numbered in arrival order.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use peerlink::codec;
use peerlink::control::{PROTOCOL_VERSION, Request, Response};
use peerlink_e2e::{Daemon, Follower, Pair, PlainClient, PlainEvent, Sandbox, free_port};

const LONG: Duration = Duration::from_secs(60);

/// `len` bytes of printable text, different for each `tag`.
fn body(tag: usize, len: usize) -> String {
    let pattern = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut b: Vec<u8> = format!("{tag}:").into_bytes();
    b.extend(pattern.iter().cycle().skip(tag).take(len - b.len()));
    String::from_utf8(b).expect("ascii")
}

/// Compare without printing megabytes on a mismatch.
fn same(what: &str, got: &str, want: &str) {
    assert!(
        got == want,
        "{what}: got {} bytes starting {:?}, want {} bytes starting {:?}",
        got.len(),
        &got[..got.len().min(40)],
        want.len(),
        &want[..want.len().min(40)]
    );
}

#[test]
fn messages_of_16_and_60_mib_are_sent_tailed_and_delivered_to_plain_clients() {
    // Timers of the defaults' order: moving 60 MiB through a debug build
    // on a busy 2-core machine takes seconds, and this test is about the
    // messages, not about liveness under load.
    let timers = "heartbeat = \"1s\"\ndead_after = \"30s\"\nbackoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n";
    let pair = Pair::new_timers(timers, "max_message = \"64MiB\"\n");
    let (a, b) = pair.start_linked();
    let client = PlainClient::connect(pair.b_port);
    let follower = Follower::start(&pair.b, &["--from", "1"]);
    let want = [body(1, 16 << 20), body(2, 60 << 20)];

    let out = a.send_stdin(&format!("{}\n{}\n", want[0], want[1]));
    assert!(
        out.status.success(),
        "send of 16 and 60 MiB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, w) in want.iter().enumerate() {
        let got = follower.next(LONG).expect("tail -f --json shows it");
        same(
            &format!("tail -f --json, message {i}"),
            got["body"].as_str().unwrap_or_default(),
            w,
        );
        match client.next(LONG) {
            Some(PlainEvent::Text(t)) => same(&format!("plain client, message {i}"), &t, w),
            other => panic!("plain client, message {i}: {:?}", other.map(|_| "not text")),
        }
    }
    // tail --json (the whole inbox) and plain tail.
    let inbox = b.inbox();
    assert_eq!(inbox.len(), 2);
    for (e, w) in inbox.iter().zip(&want) {
        same("tail --json", e["body"].as_str().unwrap_or_default(), w);
    }
    let out = pair.b.ctl(&["tail"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one line per message");
    for (l, w) in lines.iter().zip(&want) {
        let shown = l.split(' ').nth(2).unwrap_or_default();
        same("tail", shown, w);
    }
    // The link carried them without a reconnect.
    assert_eq!(
        a.peer("b")["reconnects"],
        0,
        "a's log:\n{}\nb's log:\n{}",
        a.spec.log(),
        b.spec.log()
    );
}

#[test]
fn a_message_over_max_message_is_refused_naming_it() {
    let pair = Pair::new("max_message = \"64KiB\"\n");
    let (a, b) = pair.start_linked();
    let big = body(0, 100_000);
    let out = pair.a.ctl(&["send", "before", &big]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "message 2 (argument 2) of 100000 bytes is larger than max_message (64KiB) of instance a; nothing was sent"
        ),
        "{err}"
    );
    // On stdin: the lines before it are sent, the rest is not.
    let out = a.send_stdin(&format!("one\n{big}\nthree\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "line 2 of stdin, of 100000 bytes, is larger than max_message (64KiB) of instance a"
        ),
        "{err}"
    );
    // Exactly max_message passes.
    let edge = body(1, 64 << 10);
    let out = a.send_stdin(&format!("{edge}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.wait(LONG, "b has `one` and the 64 KiB message", |b| {
        b.bodies().len() == 2
    });
    let bodies = b.bodies();
    assert_eq!(bodies[0], "one");
    same("64 KiB message", &bodies[1], &edge);
}

#[test]
fn empty_messages_are_never_stored() {
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    // An empty argument (an unset variable?) is a usage error; nothing of
    // that command is sent.
    for args in [&["send", ""][..], &["send", "x", "", "y"]] {
        let out = pair.a.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("is empty; empty messages are never stored; nothing was sent"),
            "{err}"
        );
    }
    // Blank stdin lines are no messages: skipped.
    let out = a.send_stdin("first\n\n\r\nsecond\n\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A plain client's empty frame is skipped too; it stays connected.
    let client = PlainClient::connect(pair.b_port);
    client.send_text("");
    client.send_text("from the plain client");
    b.wait(LONG, "b has both lines and the client's message", |b| {
        b.bodies().len() == 3
    });
    let bodies = b.bodies();
    assert_eq!(bodies[..2], ["first", "second"]);
    // Order between the two sources is not defined: the client's may come
    // first. Only the empty ones are missing.
    assert!(bodies.contains(&"from the plain client".to_string()));
    client.send_text("still connected");
    b.wait(LONG, "the client is still served", |b| {
        b.bodies().len() == 4
    });
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn read_response(s: &mut UnixStream) -> Response {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("reply length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("reply body");
    codec::decode(&body).expect("reply decodes")
}

#[test]
fn pipelined_sends_are_numbered_in_arrival_order() {
    let sb = Sandbox::new();
    let spec = sb.spec(
        "a",
        &Sandbox::config("a", free_port(), &[("b", free_port())], ""),
    );
    let _a = Daemon::start(&spec);
    let mut s = UnixStream::connect(&spec.socket).expect("connect");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        client: "pipelining test".into(),
    };
    s.write_all(&frame(&codec::encode(&hello).expect("encode")))
        .expect("hello");
    assert!(matches!(read_response(&mut s), Response::Hello { .. }));
    // 60 requests of growing size in one write, none waiting for a reply
    // (the daemon takes up to 64 at once).
    let mut all = Vec::new();
    for i in 0..60usize {
        let bodies = (0..=i).map(|j| format!("{i}.{j}").into_bytes()).collect();
        let req = Request::Send {
            bodies,
            wait: false,
            to: Vec::new(),
        };
        all.extend(frame(&codec::encode(&req).expect("encode")));
    }
    s.write_all(&all).expect("pipelined sends");
    let mut next = 1;
    for i in 0..60u64 {
        match read_response(&mut s) {
            Response::Sent { first, last } => {
                assert_eq!(
                    (first, last),
                    (next, next + i),
                    "request {i} numbered in arrival order"
                );
                next = last + 1;
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
}
