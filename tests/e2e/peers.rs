//! More than two (issue 15): addressed messages, a cursor per peer in one
//! journal, a peer that is down costing only its own backlog, and a
//! journal written by the previous release opening with its queue intact.

use std::path::Path;
use std::time::Duration;

use peerlink_e2e::{Daemon, Sandbox, Spec, copy_tree, free_port};

const LONG: Duration = Duration::from_secs(30);

/// A hub `h` and spokes, each linked to the hub only.
fn star(sb: &Sandbox, spokes: &[&str]) -> (Spec, Vec<Spec>) {
    let hub_port = free_port();
    let ports: Vec<u16> = spokes.iter().map(|_| free_port()).collect();
    let peers: Vec<(&str, u16)> = spokes.iter().copied().zip(ports.iter().copied()).collect();
    let hub = sb.spec("h", &Sandbox::config("h", hub_port, &peers, ""));
    let specs = spokes
        .iter()
        .zip(&ports)
        .map(|(s, p)| sb.spec(s, &Sandbox::config(s, *p, &[("h", hub_port)], "")))
        .collect();
    (hub, specs)
}

#[test]
fn addressed_messages_reach_only_their_peers_and_a_down_one_costs_only_itself() {
    let sb = Sandbox::new();
    let (hub, spokes) = star(&sb, &["b", "c", "d"]);
    let h = Daemon::start(&hub);
    let b = Daemon::start(&spokes[0]);
    let c = Daemon::start(&spokes[1]);
    // d stays down.
    h.wait_connected("b");
    h.wait_connected("c");
    let send = |args: &[&str]| {
        let out = h.spec.ctl(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    send(&["send", "--to", "b", "for-b"]);
    send(&["send", "--to", "c,d", "for-c-d"]);
    send(&["send", "--to", "b", "--to", "c", "for-b-c"]);
    send(&["send", "for-all"]);
    send(&["send", "--wait", "--to", "b", "for-b-waited"]);
    b.wait(LONG, "b has its own", |b| {
        b.bodies() == ["for-b", "for-b-c", "for-all", "for-b-waited"]
    });
    c.wait(LONG, "c has its own", |c| {
        c.bodies() == ["for-c-d", "for-b-c", "for-all"]
    });
    // d's queue is its own: two messages; b's and c's are empty.
    h.wait(LONG, "queues drain for b and c", |h| {
        h.peer("b")["queued_msgs"] == 0 && h.peer("c")["queued_msgs"] == 0
    });
    assert_eq!(h.peer("d")["queued_msgs"], 2);
    // An unknown peer is refused with the configured ones.
    let out = h.spec.ctl(&["send", "--to", "x", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no peer named x; the configured peers are: b, c, d"),
        "{err}"
    );
    // d comes up and gets exactly its two, in order.
    let d = Daemon::start(&spokes[2]);
    d.wait(LONG, "d has its own", |d| {
        d.bodies() == ["for-c-d", "for-all"]
    });
    h.wait(LONG, "d's queue drains", |h| {
        h.peer("d")["queued_msgs"] == 0
    });
    // tail --from-peer on a spoke that hears from two origins.
    b.send(&["from-b"]);
    h.wait(LONG, "h has b's", |h| !h.bodies().is_empty());
    let out = h.spec.ctl(&["tail", "--from-peer", "b", "--json"]);
    let lines = String::from_utf8_lossy(&out.stdout);
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.contains("from-b"));
    let none = h.spec.ctl(&["tail", "--from-peer", "c"]);
    assert!(String::from_utf8_lossy(&none.stdout).trim().is_empty());
    drop((b, c, d));
}

#[test]
fn a_journal_of_the_previous_release_opens_with_its_queue_intact() {
    // Made by peerd 0.1.0 (the first release): a delivered two messages to
    // b, b sent one to a, then b stopped and a queued three more.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/release-0.1.0");
    let sb = Sandbox::new();
    let (pa, pb) = (free_port(), free_port());
    let a = sb.spec("a", &Sandbox::config("a", pa, &[("b", pb)], ""));
    let b = sb.spec("b", &Sandbox::config("b", pb, &[("a", pa)], ""));
    copy_tree(&fixture.join("a"), &a.state);
    copy_tree(&fixture.join("b"), &b.state);
    let a = Daemon::start(&a);
    assert_eq!(a.peer("b")["queued_msgs"], 3);
    assert_eq!(a.bodies(), ["from-b-1"]);
    let b = Daemon::start(&b);
    b.wait(LONG, "b gets the queue once", |b| {
        b.bodies()
            == [
                "delivered-1",
                "delivered-2",
                "queued-1",
                "queued-2",
                "queued-3",
            ]
    });
    let seqs: Vec<u64> = b
        .inbox()
        .iter()
        .map(|e| e["origin_seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    a.wait(LONG, "a's queue drains", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
    // Counters survive the upgrade.
    assert_eq!(a.peer("b")["msgs_received"], 1);
    a.send(&["after upgrade"]);
    b.wait(LONG, "and goes on", |b| b.bodies().len() == 6);
}
