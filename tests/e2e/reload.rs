//! Changing a running daemon (`peerctl reload`, SIGHUP) with messages
//! flowing: peers added and removed, timers changed, a bad config refused,
//! a secret rotated one host at a time, a renewed certificate picked up.
//! The sessions a change does not concern keep their TCP connection, and
//! nothing is lost or stored twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use peerlink_e2e::{Daemon, FAST_TIMERS, Sandbox, Spec, Value, free_port, wait_until};

use crate::tls::{ca, leaf};

const LONG: Duration = Duration::from_secs(20);

/// What identifies a live session: both ends of its TCP connection.
fn session(d: &Daemon, peer: &str) -> (Value, Value) {
    let p = d.peer(peer);
    assert_eq!(p["state"], "connected", "{peer}: {p}");
    (p["local_addr"].clone(), p["remote_addr"].clone())
}

fn reconnects(d: &Daemon, peer: &str) -> u64 {
    d.peer(peer)["reconnects"].as_u64().unwrap_or(u64::MAX)
}

/// `peerctl reload`: its exit code and what it printed.
fn reload(spec: &Spec) -> (Option<i32>, String) {
    let out = spec.ctl(&["reload"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Sends `<tag>-<n>` from `spec` in small batches until stopped; returns
/// what it sent, in order.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(spec: &Spec, tag: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (spec, tag, flag) = (spec.clone(), tag.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                let batch: Vec<String> = (0..10).map(|i| format!("{tag}-{}", n + i)).collect();
                let args: Vec<&str> = std::iter::once("send")
                    .chain(batch.iter().map(String::as_str))
                    .collect();
                let out = spec.ctl(&args);
                assert!(
                    out.status.success(),
                    "send failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                n += batch.len();
                sent.extend(batch);
            }
            sent
        });
        Traffic { stop, thread }
    }

    /// Stop (after at least one more batch went out) and return what was sent.
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("traffic thread")
    }
}

/// The bodies `d` received from `origin`, in inbox order.
fn from(d: &Daemon, origin: &str) -> Vec<String> {
    d.inbox()
        .iter()
        .filter(|e| e["origin"] == origin)
        .filter_map(|e| e["body"].as_str().map(str::to_string))
        .collect()
}

fn peers_toml(peers: &[(&str, u16)]) -> String {
    peers
        .iter()
        .map(|(p, port)| format!("[[peer]]\nname = \"{p}\"\nurl = \"ws://127.0.0.1:{port}/ws\"\n"))
        .collect()
}

#[test]
fn peers_added_and_removed_and_a_timer_changed_live_leave_the_other_session_alone() {
    let sb = Sandbox::new();
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a_cfg = |timers: &str, peers: &[(&str, u16)]| {
        format!(
            "listen = \"127.0.0.1:{pa}\"\n{timers}\n{}",
            peers_toml(peers)
        )
    };
    let a = sb.spec("a", &a_cfg(FAST_TIMERS, &[("b", pb)]));
    let b = sb.spec("b", &Sandbox::config("b", pb, &[("a", pa)], ""));
    let c = sb.spec("c", &Sandbox::config("c", pc, &[("a", pa)], ""));
    let (a, b) = (Daemon::start(&a), Daemon::start(&b));
    a.wait_connected("b");
    b.wait_connected("a");
    let before = (session(&a, "b"), session(&b, "a"));
    let traffic = Traffic::start(&a.spec, "m");

    // c dials a, which does not know it yet.
    let c = Daemon::start(&c);
    wait_until(LONG, "a refuses unknown peer c", || {
        a.spec.log().contains("unknown peer \"c\"")
    });
    // Add c.
    std::fs::write(&a.spec.config, a_cfg(FAST_TIMERS, &[("b", pb), ("c", pc)])).unwrap();
    let (code, text) = reload(&a.spec);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("peer c added"), "{text}");
    a.wait_connected("c");
    c.wait_connected("a");
    assert_eq!((session(&a, "b"), session(&b, "a")), before);

    // Change timers, by SIGHUP this time.
    let slower = FAST_TIMERS
        .replace("heartbeat = \"200ms\"", "heartbeat = \"300ms\"")
        .replace("backoff_max = \"300ms\"", "backoff_max = \"500ms\"");
    assert_ne!(slower, FAST_TIMERS);
    std::fs::write(&a.spec.config, a_cfg(&slower, &[("b", pb), ("c", pc)])).unwrap();
    a.signal("HUP");
    a.wait(LONG, "the SIGHUP reload is applied", |a| {
        let r = &a.status()["last_reload"];
        r["applied"] == true
            && r["changes"]
                .as_array()
                .is_some_and(|c| c.iter().any(|l| l == "heartbeat 200ms -> 300ms"))
    });
    assert!(a.spec.log().contains("SIGHUP received"));
    assert_eq!((session(&a, "b"), session(&b, "a")), before);
    assert_eq!(session(&a, "c").0, session(&a, "c").0);

    // Remove c: its session goes, b's stays.
    std::fs::write(&a.spec.config, a_cfg(&slower, &[("b", pb)])).unwrap();
    let (code, text) = reload(&a.spec);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("peer c removed"), "{text}");
    let peers = a.status()["peers"].as_array().cloned().unwrap_or_default();
    assert_eq!(peers.len(), 1, "{peers:?}");
    c.wait(LONG, "c sees its link to a go", |c| {
        c.peer("a")["state"] != "connected"
    });

    let sent = traffic.finish();
    assert!(
        sent.len() >= 40,
        "traffic flowed throughout: {}",
        sent.len()
    );
    b.wait(LONG, "b has every message", |b| {
        from(b, "a").len() >= sent.len()
    });
    assert_eq!(from(&b, "a"), sent, "b: every message once, in order");
    let got_c = from(&c, "a");
    let mut dedup = got_c.clone();
    dedup.dedup();
    assert_eq!(got_c, dedup, "c: no message twice");
    assert!(!got_c.is_empty(), "c received while it was a peer");
    assert_eq!((session(&a, "b"), session(&b, "a")), before);
    assert_eq!(reconnects(&a, "b"), 0);
    assert_eq!(reconnects(&b, "a"), 0);
}

#[test]
fn a_bad_config_or_one_that_needs_a_restart_is_refused_whole_and_the_link_untouched() {
    let sb = Sandbox::new();
    let (pa, pb) = (free_port(), free_port());
    let good = Sandbox::config("a", pa, &[("b", pb)], "");
    let a = sb.spec("a", &good);
    let b = sb.spec("b", &Sandbox::config("b", pb, &[("a", pa)], ""));
    let (a, b) = (Daemon::start(&a), Daemon::start(&b));
    a.wait_connected("b");
    let before = (session(&a, "b"), session(&b, "a"));

    for (text, needle) in [
        (format!("{good}\nhartbeat = \"1s\"\n"), "hartbeat"),
        (
            good.replace("[[peer]]", "[[peer]]\nname = \"c\"\n"),
            "duplicate key",
        ),
        (
            good.replace(&format!("127.0.0.1:{pa}"), "127.0.0.1:1"),
            "cannot change live: listen",
        ),
        (format!("node = \"z\"\n{good}"), "node a -> z"),
        (format!("secret_file = \"missing\"\n{good}"), "missing"),
    ] {
        std::fs::write(&a.spec.config, &text).unwrap();
        let (code, out) = reload(&a.spec);
        assert_eq!(code, Some(1), "{text}\n{out}");
        assert!(
            out.contains("refused") && out.contains(needle),
            "{text}\n{out}"
        );
        let r = a.status()["last_reload"].clone();
        assert_eq!(r["applied"], false, "{r}");
        assert!(
            a.spec
                .log()
                .contains("reload refused, still running on the old config")
        );
        assert_eq!((session(&a, "b"), session(&b, "a")), before, "{text}");
    }
    // Still the old config: heartbeat, peers, and messages flow.
    a.send(&["after the refusals"]);
    b.wait(LONG, "b receives", |b| b.bodies() == ["after the refusals"]);
    // A good one is then applied.
    std::fs::write(&a.spec.config, good.replace("200ms", "250ms")).unwrap();
    let (code, out) = reload(&a.spec);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("heartbeat 200ms -> 250ms"), "{out}");
    let human = String::from_utf8_lossy(&a.spec.ctl(&["status"]).stdout).to_string();
    assert!(
        human.contains("last reload:") && human.contains("applied"),
        "{human}"
    );
    assert_eq!((session(&a, "b"), session(&b, "a")), before);
    assert_eq!(reconnects(&a, "b"), 0);
}

const OLD: &str = "old secret, retired today 0123456789";
const NEW: &str = "new secret, in use from today 9876543210";

fn secrets(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
    format!("secrets = [{}]\n", quoted.join(", "))
}

#[test]
fn a_secret_is_rotated_one_host_at_a_time_with_messages_flowing() {
    rotate(true);
}

/// The same with b, the larger name, first at each step: its new session
/// would lose the collision rule, so a re-keys when its turn comes.
#[test]
fn a_secret_is_rotated_with_the_larger_name_first_at_each_step() {
    rotate(false);
}

fn rotate(a_first: bool) {
    let sb = Sandbox::new();
    let (pa, pb, pd) = (free_port(), free_port(), free_port());
    // b also lists d, which will come later knowing only the old secret
    // (b dials d at a port where nothing listens: only d's dial counts).
    let a_cfg = |s: &[&str]| Sandbox::config("a", pa, &[("b", pb)], &secrets(s));
    let b_cfg =
        |s: &[&str]| Sandbox::config("b", pb, &[("a", pa), ("d", free_port())], &secrets(s));
    let a = sb.spec("a", &a_cfg(&[OLD]));
    let b = sb.spec("b", &b_cfg(&[OLD]));
    let (a, b) = (Daemon::start(&a), Daemon::start(&b));
    a.wait_connected("b");
    b.wait_connected("a");
    let old_id = a.peer("b")["key_id"].clone();
    assert!(old_id.as_str().is_some_and(|s| s.len() == 8), "{old_id}");
    assert_eq!(b.peer("a")["key_id"], old_id);
    let (ta, tb) = (Traffic::start(&a.spec, "a"), Traffic::start(&b.spec, "b"));

    let mut steps: Vec<[(&Daemon, String); 2]> = vec![
        [(&a, a_cfg(&[OLD, NEW])), (&b, b_cfg(&[OLD, NEW]))], // 1. add the new one
        [(&a, a_cfg(&[NEW, OLD])), (&b, b_cfg(&[NEW, OLD]))], // 2. prefer it
        [(&a, a_cfg(&[NEW])), (&b, b_cfg(&[NEW]))],           // 3. remove the old one
    ];
    if !a_first {
        steps.iter_mut().for_each(|s| s.reverse());
    }
    for (d, cfg) in steps.into_iter().flatten() {
        std::fs::write(&d.spec.config, cfg).unwrap();
        let (code, out) = reload(&d.spec);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("secrets"), "{out}");
        // Messages keep moving between the steps.
        let (na, nb) = (from(&b, "a").len(), from(&a, "b").len());
        b.wait(LONG, "a's messages keep arriving", |b| {
            from(b, "a").len() > na
        });
        a.wait(LONG, "b's messages keep arriving", |a| {
            from(a, "b").len() > nb
        });
    }
    let (sent_a, sent_b) = (ta.finish(), tb.finish());
    b.wait(LONG, "b has all of a's", |b| {
        from(b, "a").len() >= sent_a.len()
    });
    a.wait(LONG, "a has all of b's", |a| {
        from(a, "b").len() >= sent_b.len()
    });
    assert_eq!(from(&b, "a"), sent_a, "0 lost, 0 twice, in order");
    assert_eq!(from(&a, "b"), sent_b, "0 lost, 0 twice, in order");
    a.wait_connected("b");
    let new_id = a.peer("b")["key_id"].clone();
    assert_ne!(new_id, old_id, "the session now uses the new secret");
    assert_eq!(b.peer("a")["key_id"], new_id);
    assert!(a.peer("b")["key_added_ms"].as_u64().is_some());
    for d in [&a, &b] {
        let log = d.spec.log();
        assert!(
            !log.contains("authentication failed") && !log.contains("peer refused"),
            "no session was ever refused:\n{log}"
        );
    }

    // d holds only the removed secret: refused, and told why.
    let d = sb.spec(
        "d",
        &Sandbox::config("d", pd, &[("b", pb)], &secrets(&[OLD])),
    );
    let d = Daemon::start(&d);
    d.wait(LONG, "d is refused for want of a shared secret", |d| {
        d.peer("b")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no secret in common"))
    });
    assert!(
        b.spec.log().contains("no secret in common with peer \"d\""),
        "{}",
        b.spec.log()
    );
    assert_ne!(b.peer("d")["state"], "connected");
}

#[test]
fn a_renewed_certificate_is_used_by_new_sessions_after_reload() {
    let sb = Sandbox::new();
    let dir = sb.path();
    let first = ca(dir, "first");
    let second = ca(dir, "second");
    leaf(dir, "a", &first);
    leaf(dir, "b", &first);
    // a trusts both CAs; x (a new peer of b) only the second.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("first-ca.pem")).unwrap(),
        std::fs::read_to_string(dir.join("second-ca.pem")).unwrap()
    );
    std::fs::write(dir.join("both-ca.pem"), both).unwrap();
    let (pa, pb, px) = (free_port(), free_port(), free_port());
    let tls = |node: &str, ca: &str| {
        format!("[tls]\ncert = \"{node}.crt\"\nkey = \"{node}.key\"\nca = \"{ca}\"\n")
    };
    let wss = |name: &str, port: u16| {
        format!("[[peer]]\nname = \"{name}\"\nurl = \"wss://127.0.0.1:{port}/ws\"\n")
    };
    let a = sb.spec(
        "a",
        &format!(
            "listen = \"127.0.0.1:{pa}\"\n{FAST_TIMERS}\n{}{}",
            tls("a", "both-ca.pem"),
            wss("b", pb)
        ),
    );
    // b dials x where nothing listens: only x's dial can link them.
    let b = sb.spec(
        "b",
        &format!(
            "listen = \"127.0.0.1:{pb}\"\n{FAST_TIMERS}\n{}{}{}",
            tls("b", "both-ca.pem"),
            wss("a", pa),
            wss("x", free_port())
        ),
    );
    leaf(dir, "x", &second);
    let x = sb.spec(
        "x",
        &format!(
            "listen = \"127.0.0.1:{px}\"\n{FAST_TIMERS}\n{}{}",
            tls("x", "second-ca.pem"),
            wss("b", pb)
        ),
    );
    let (a, b) = (Daemon::start(&a), Daemon::start(&b));
    a.wait_connected("b");
    let before = (session(&a, "b"), session(&b, "a"));
    let x = Daemon::start(&x);
    x.wait(LONG, "x refuses b's first certificate", |x| {
        x.peer("b")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate"))
    });

    // Renew b's certificate and key on disk (same paths), then reload.
    leaf(dir, "b", &second);
    let (code, out) = reload(&b.spec);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("renewed"), "{out}");
    x.wait_connected("b");
    b.wait_connected("x");
    assert_eq!(
        (session(&a, "b"), session(&b, "a")),
        before,
        "the existing session kept running"
    );
    a.send(&["still flowing"]);
    b.wait(LONG, "b receives", |b| {
        b.bodies().contains(&"still flowing".to_string())
    });
}

#[test]
fn a_reload_changes_the_journal_limits_and_a_live_sessions_timers() {
    let sb = Sandbox::new();
    let (pa, pb) = (free_port(), free_port());
    let slow = "heartbeat = \"30s\"\ndead_after = \"60s\"\nhandshake_timeout = \"2s\"\n\
                backoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n";
    let a_text =
        |timers: &str, extra: &str| Sandbox::config_timers("a", pa, &[("b", pb)], timers, extra);
    let a = sb.spec("a", &a_text(slow, "outbox_limit = { messages = 1000 }"));
    let b = sb.spec(
        "b",
        &Sandbox::config_timers("b", pb, &[("a", pa)], slow, ""),
    );
    let a = Daemon::start(&a);
    let b = Daemon::start(&b);
    a.wait_connected("b");
    b.wait_connected("a");
    let before = session(&a, "b");
    // With a 30 s heartbeat the RTT is measured once, at the start.
    let rtt = a.peer("b")["rtt_us"].clone();
    let fast = "heartbeat = \"100ms\"\ndead_after = \"60s\"\nhandshake_timeout = \"2s\"\n\
                backoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n";
    std::fs::write(
        &a.spec.config,
        a_text(fast, "outbox_limit = { messages = 3 }"),
    )
    .expect("a's config");
    let (code, text) = reload(&a.spec);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("outbox_limit") && text.contains("heartbeat 30s -> 100ms"),
        "{text}"
    );
    // The live session pings at the new rate: its RTT is measured again.
    a.wait(LONG, "a measures the RTT again", |a| {
        a.peer("b")["rtt_us"] != rtt
    });
    assert_eq!(session(&a, "b"), before, "the same session");
    assert_eq!(reconnects(&a, "b"), 0);
    // The new limit applies to what comes next: b down, 3 fit, a 4th not.
    drop(b);
    a.wait(LONG, "a sees b down", |a| {
        a.peer("b")["state"] != "connected"
    });
    a.send(&["one", "two", "three"]);
    let out = a.spec.ctl(&["send", "four"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("outbox full for b: 3 messages"), "{err}");
}
