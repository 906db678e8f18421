//! The link: delivery both ways, start orders and collisions, a peer that
//! is down, shutdown.

use std::time::Duration;

use peerlink_e2e::{Daemon, Follower, Pair, Sandbox, free_port};

const LONG: Duration = Duration::from_secs(20);

#[test]
fn messages_flow_both_ways() {
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    a.send(&["hello from a", "second"]);
    b.wait(LONG, "b receives a's two messages", |b| {
        b.bodies() == ["hello from a", "second"]
    });
    b.send(&["hello from b"]);
    a.wait(LONG, "a receives b's message", |a| {
        a.bodies() == ["hello from b"]
    });
    let got = &b.inbox()[0];
    assert_eq!(got["origin"], "a");
    assert_eq!(got["origin_seq"], 1);
    assert_eq!(got["seq"], 1);
}

#[test]
fn tail_follow_sees_messages_sent_after_it_started() {
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    a.send(&["before"]);
    b.wait(LONG, "b has the first message", |b| b.bodies().len() == 1);
    // From inbox seq 2 on: everything after "before". (`-n 0` would race:
    // messages arriving before the follower is attached are not "new".)
    let follower = Follower::start(&pair.b, &["--from", "2"]);
    a.send(&["after 1", "after 2"]);
    let first = follower
        .next(LONG)
        .expect("tail -f shows the first new message");
    let second = follower
        .next(LONG)
        .expect("tail -f shows the second new message");
    assert_eq!(first["body"], "after 1");
    assert_eq!(second["body"], "after 2");
    assert_eq!(first["origin"], "a");
}

/// Both sides must end with the same single session: a's end of it is b's
/// remote address and the reverse.
fn assert_one_shared_session(a: &Daemon, b: &Daemon) {
    let mut last = (serde_json::Value::Null, serde_json::Value::Null);
    let agreed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        peerlink_e2e::wait_until(LONG, "a and b agree on one session", || {
            let (pa, pb) = (a.peer("b"), b.peer("a"));
            let ok = pa["state"] == "connected"
                && pb["state"] == "connected"
                && pa["local_addr"] == pb["remote_addr"]
                && pa["remote_addr"] == pb["local_addr"]
                && pa["direction"] != pb["direction"];
            last = (pa, pb);
            ok
        })
    }));
    if agreed.is_err() {
        panic!(
            "no agreement:\n a: {}\n b: {}\n--- a ---\n{}\n--- b ---\n{}",
            last.0,
            last.1,
            a.spec.log(),
            b.spec.log()
        );
    }
}

#[test]
fn every_start_order_ends_with_one_session_and_messages_flowing() {
    #[derive(Debug, Clone, Copy)]
    enum Order {
        AFirst,
        BFirst,
        Together,
    }
    let mut rounds = vec![Order::AFirst; 5];
    rounds.extend([Order::BFirst; 5]);
    rounds.extend([Order::Together; 20]);
    for (i, order) in rounds.into_iter().enumerate() {
        let pair = Pair::new("");
        let (a, b) = match order {
            Order::AFirst => {
                let a = Daemon::start(&pair.a);
                (a, Daemon::start(&pair.b))
            }
            Order::BFirst => {
                let b = Daemon::start(&pair.b);
                (Daemon::start(&pair.a), b)
            }
            Order::Together => {
                let (mut a, mut b) = (Daemon::spawn(&pair.a, &[]), Daemon::spawn(&pair.b, &[]));
                a.wait_ready();
                b.wait_ready();
                (a, b)
            }
        };
        assert_one_shared_session(&a, &b);
        let (ma, mb) = (
            format!("round {i} {order:?} a"),
            format!("round {i} {order:?} b"),
        );
        a.send(&[&ma]);
        b.send(&[&mb]);
        b.wait(LONG, "b receives a's message", |b| {
            b.bodies() == [ma.clone()]
        });
        a.wait(LONG, "a receives b's message", |a| {
            a.bodies() == [mb.clone()]
        });
        // Still one shared session after traffic.
        assert_one_shared_session(&a, &b);
        // Losing a collision is not a reconnect: the link never went down.
        for (d, peer) in [(&a, "b"), (&b, "a")] {
            assert_eq!(
                d.peer(peer)["reconnects"],
                0,
                "round {i} {order:?}: {}",
                d.spec.log()
            );
        }
    }
}

#[test]
fn peer_down_keeps_retrying_and_delivers_in_order_once_it_is_up() {
    let pair = Pair::new("");
    let a = Daemon::start(&pair.a);
    a.wait(LONG, "a reports why it cannot reach b", |a| {
        let p = a.peer("b");
        p["state"] != "connected"
            && p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused"))
    });
    let status = a.spec.ctl(&["status"]);
    assert_eq!(
        status.status.code(),
        Some(peerlink_e2e::EXIT_DOWN),
        "status exit code says a link is down"
    );
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("peer b:") && text.contains("last error"),
        "{text}"
    );

    let input: String = (1..=500).map(|i| format!("m{i}\n")).collect();
    let out = a.send_stdin(&input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.peer("b")["queued_msgs"], 500);

    let b = Daemon::start(&pair.b);
    let want: Vec<String> = (1..=500).map(|i| format!("m{i}")).collect();
    b.wait(LONG, "b receives all 500 queued messages", |b| {
        b.bodies().len() >= 500
    });
    assert_eq!(b.bodies(), want, "in order, no duplicates");
    let seqs: Vec<u64> = b
        .inbox()
        .iter()
        .map(|e| e["origin_seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
    a.wait(LONG, "a's queue drains", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
}

#[test]
fn sigterm_closes_the_link_going_away_and_removes_the_socket() {
    let pair = Pair::new("");
    let (mut a, b) = pair.start_linked();
    a.signal("TERM");
    assert_eq!(
        a.wait_exit(Duration::from_secs(5)),
        Some(0),
        "exit 0 on SIGTERM"
    );
    assert!(!pair.a.socket.exists(), "control socket removed");
    // b's log, not its last_error: b redials within milliseconds and the
    // refused connection replaces "going away" there.
    b.wait(LONG, "b saw a going away", |b| {
        b.spec
            .log()
            .lines()
            .any(|l| l.contains("link down") && l.contains("going away"))
    });
}

#[test]
fn link_comes_back_after_the_peer_restarts() {
    let pair = Pair::new("");
    let (a, mut b) = pair.start_linked();
    b.kill();
    a.wait(LONG, "a notices b is gone", |a| {
        a.peer("b")["state"] != "connected"
    });
    a.send(&["while b was down"]);
    let b2 = Daemon::start(&pair.b);
    b2.wait(LONG, "the queued message arrives", |b| {
        b.bodies() == ["while b was down"]
    });
    a.wait(LONG, "a reconnected", |a| {
        a.peer("b")["reconnects"].as_u64() >= Some(1)
    });
    drop(b);
}

#[test]
fn with_two_peers_every_message_reaches_both_and_waits_for_the_slower() {
    let sb = peerlink_e2e::Sandbox::new();
    let (pa, pb, pc) = (
        peerlink_e2e::free_port(),
        peerlink_e2e::free_port(),
        peerlink_e2e::free_port(),
    );
    let cfg = peerlink_e2e::Sandbox::config;
    let a = sb.spec("a", &cfg("a", pa, &[("b", pb), ("c", pc)], ""));
    let b = sb.spec("b", &cfg("b", pb, &[("a", pa)], ""));
    let c = sb.spec("c", &cfg("c", pc, &[("a", pa)], ""));
    let (da, db) = (Daemon::start(&a), Daemon::start(&b));
    da.wait_connected("b");
    // c is down: b gets everything, and a keeps it queued for c.
    da.send(&["one", "two"]);
    db.wait(LONG, "b receives both", |b| b.bodies() == ["one", "two"]);
    da.wait(LONG, "acked by b", |a| a.peer("b")["queued_msgs"] == 0);
    assert_eq!(da.peer("c")["queued_msgs"], 2, "still queued for c");
    let status = a.ctl(&["status"]);
    assert_eq!(
        status.status.code(),
        Some(peerlink_e2e::EXIT_DOWN),
        "one link down"
    );
    // c comes up: it gets the same messages, in order, once.
    let dc = Daemon::start(&c);
    dc.wait(LONG, "c receives the queued messages", |c| {
        c.bodies() == ["one", "two"]
    });
    da.send(&["three"]);
    for d in [&db, &dc] {
        d.wait(LONG, "the new message reaches both", |d| {
            d.bodies() == ["one", "two", "three"]
        });
    }
    da.wait(LONG, "nothing queued for either", |a| {
        a.peer("b")["queued_msgs"] == 0 && a.peer("c")["queued_msgs"] == 0
    });
    assert!(a.ctl(&["status"]).status.success(), "all links up: exit 0");
}

#[test]
fn a_saturated_slow_link_is_not_declared_dead() {
    use peerlink_e2e::proxy::{Faults, Proxy};
    // 128 KiB/s each way: a 256 KiB batch takes two seconds to arrive,
    // more than dead_after, and pings queue behind it. Bytes keep
    // arriving, so the session must live. (dead_after is not smaller so a
    // loaded 2-core machine does not starve a daemon that long.)
    const RATE: u64 = 128 << 10;
    let sb = Sandbox::new();
    let (pa, pb) = (free_port(), free_port());
    let to_b = Proxy::start(pb, 1, Faults::slow(RATE));
    let to_a = Proxy::start(pa, 2, Faults::slow(RATE));
    let cfg = |port: u16, peer: &str, peer_port: u16| {
        format!(
            "listen = \"127.0.0.1:{port}\"\nheartbeat = \"300ms\"\ndead_after = \"1500ms\"\n\
             handshake_timeout = \"5s\"\nbackoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n\
             max_message = \"1MiB\"\n\
             [[peer]]\nname = \"{peer}\"\nurl = \"ws://127.0.0.1:{peer_port}/ws\"\n"
        )
    };
    let a = Daemon::start(&sb.spec("a", &cfg(pa, "b", to_b.port)));
    let b = Daemon::start(&sb.spec("b", &cfg(pb, "a", to_a.port)));
    a.wait_connected("b");
    b.wait_connected("a");
    // 12 messages of 64 KiB: about 6 s of saturated link, 4x dead_after.
    let body = "s".repeat(64 << 10);
    let input: String = (0..12).map(|i| format!("{i:02}{body}\n")).collect();
    let started = std::time::Instant::now();
    assert!(a.send_stdin(&input).status.success());
    b.wait(Duration::from_secs(60), "b receives all 12", |b| {
        b.status()["journal"]["inbox_next"] == 13
    });
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(3),
        "the link was not slow: {took:?}"
    );
    for (d, p) in [(&a, "b"), (&b, "a")] {
        assert_eq!(
            d.peer(p)["reconnects"],
            0,
            "{} reconnected over a slow link:\n{}",
            d.spec.name,
            d.spec.log()
        );
    }
    assert!(
        !a.spec.log().contains("nothing received"),
        "{}",
        a.spec.log()
    );
    assert!(
        !b.spec.log().contains("nothing received"),
        "{}",
        b.spec.log()
    );
}
