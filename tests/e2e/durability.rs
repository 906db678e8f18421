//! Exactly once, whatever breaks (SPEC §4): a link cut at random moments by
//! a fault-injecting proxy, SIGKILL of the sender and of the receiver
//! mid-stream, both daemons stopped and started, a full outbox, `send
//! --wait`, and inbox retention seen by `tail`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use peerlink_e2e::proxy::{self, Faults, Proxy};
use peerlink_e2e::{Daemon, EXIT_DOWN, Pair, Sandbox, Spec, Value, free_port};

const LONG: Duration = Duration::from_secs(30);

/// Config with quick redials, so a link cut many times still moves.
fn config(port: u16, peer: &str, peer_port: u16, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\n\
         heartbeat = \"200ms\"\ndead_after = \"2s\"\nhandshake_timeout = \"2s\"\n\
         backoff_min = \"5ms\"\nbackoff_max = \"50ms\"\n{extra}\n\
         [[peer]]\nname = \"{peer}\"\nurl = \"ws://127.0.0.1:{peer_port}/ws\"\n"
    )
}

/// Messages in the inbox (its next sequence number minus one).
fn inbox_len(d: &Daemon) -> u64 {
    d.status()["journal"]["inbox_next"].as_u64().unwrap_or(1) - 1
}

fn epoch(d: &Daemon) -> u64 {
    d.status()["journal"]["epoch"].as_u64().unwrap_or(0)
}

/// `n` numbered lines `<tag>-<i>`.
fn lines(tag: &str, range: std::ops::RangeInclusive<u64>) -> String {
    range.map(|i| format!("{tag}-{i:06}\n")).collect()
}

/// The inbox holds `1..=n` of `origin`, each exactly once, in order;
/// returns the entries.
fn assert_exactly_once(d: &Daemon, n: u64) -> Vec<Value> {
    let inbox = d.inbox();
    let seqs: Vec<u64> = inbox
        .iter()
        .map(|e| e["origin_seq"].as_u64().unwrap_or(0))
        .collect();
    if seqs != (1..=n).collect::<Vec<u64>>() {
        let dups = seqs.windows(2).filter(|w| w[1] <= w[0]).count();
        let gaps = seqs.windows(2).filter(|w| w[1] > w[0] + 1).count();
        panic!(
            "inbox of {} is not 1..={n} exactly once in order: {} entries, {dups} out of order, \
             {gaps} gaps, first {:?}, last {:?}\n--- log ---\n{}",
            d.spec.name,
            seqs.len(),
            seqs.first(),
            seqs.last(),
            d.spec.log()
        );
    }
    inbox
}

fn send_ok(d: &Daemon, input: &str) {
    let out = d.send_stdin(input);
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_link_cut_at_random_moments_delivers_every_message_exactly_once_in_order() {
    let seed = proxy::seed();
    let sb = Sandbox::new();
    let (pa, pb) = (free_port(), free_port());
    // Both directions go through a proxy that cuts them: every session,
    // whoever dialled it, dies at a random byte or moment.
    let to_b = Proxy::start(pb, seed, Faults::default());
    let to_a = Proxy::start(pa, seed.wrapping_add(1), Faults::default());
    let a = Daemon::start(&sb.spec("a", &config(pa, "b", to_b.port, "")));
    let b = Daemon::start(&sb.spec("b", &config(pb, "a", to_a.port, "")));
    const N: u64 = 40_000;
    // ~80-byte messages: 3 MB, so each session carries a few batches.
    const PAD: &str = "cut-through-a-proxy-that-cuts-the-link-at-random-moments-again-and-again";
    const CHUNK: u64 = 5_000;
    let started = std::time::Instant::now();
    let mut next = 1;
    while next <= N {
        // However fast this machine is, the link is cut while the stream
        // flows: after each chunk, wait for the next cut.
        let cuts = to_b.cuts() + to_a.cuts();
        send_ok(&a, &lines(PAD, next..=next + CHUNK - 1));
        next += CHUNK;
        peerlink_e2e::wait_until(LONG, "the proxies cut a connection", || {
            to_b.cuts() + to_a.cuts() > cuts
        });
    }
    let report = || {
        format!(
            "seed {seed}; cuts {} + {}, connections {} + {}, {:?}",
            to_b.cuts(),
            to_a.cuts(),
            to_b.connections(),
            to_a.connections(),
            started.elapsed()
        )
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.wait(LONG, "b receives everything through the cuts", |b| {
            inbox_len(b) >= N
        });
        // Counted before the checks, which take a while: cuts while the
        // stream was flowing.
        let cuts = to_b.cuts() + to_a.cuts();
        let inbox = assert_exactly_once(&b, N);
        for (i, e) in inbox.iter().enumerate() {
            assert_eq!(e["body"], format!("{PAD}-{:06}", i + 1));
        }
        assert!(cuts >= N / CHUNK, "the link was cut only {cuts} times");
        a.wait(LONG, "a's outbox drains", |a| {
            a.peer("b")["queued_msgs"] == 0
        });
    }));
    eprintln!("{}", report());
    if let Err(e) = r {
        eprintln!("--- log of a ---\n{}", a.spec.log());
        std::panic::resume_unwind(e);
    }
}

/// `peerctl send` in a loop, 200 messages at a time, until it fails;
/// returns the bodies it was told are stored.
fn sender_loop(spec: Spec, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    sender_loop_tagged(spec, stop, 0)
}

/// [`sender_loop`] with bodies tagged by `round`, so rounds never repeat.
fn sender_loop_tagged(
    spec: Spec,
    stop: Arc<AtomicBool>,
    round: u64,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut stored = Vec::new();
        for k in 0..10_000u64 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let batch: Vec<String> = (0..200)
                .map(|i| format!("r{round:02}-k{k:05}-{i:03}"))
                .collect();
            let mut args = vec!["send"];
            args.extend(batch.iter().map(String::as_str));
            if !spec.ctl(&args).status.success() {
                break;
            }
            stored.extend(batch);
        }
        stored
    })
}

#[test]
fn sigkill_of_the_sender_mid_stream_loses_and_repeats_nothing_it_acknowledged() {
    let pair = Pair::new("");
    let (mut a, b) = pair.start_linked();
    let epoch_before = epoch(&a);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = sender_loop(pair.a.clone(), stop.clone());
    b.wait(LONG, "b receives part of the stream", |b| {
        inbox_len(b) >= 2_000
    });
    a.kill();
    stop.store(true, Ordering::SeqCst);
    let stored = sender.join().expect("sender thread");
    assert!(!stored.is_empty());
    let a = Daemon::start(&pair.a);
    assert_eq!(
        epoch(&a),
        epoch_before,
        "the journal (and its epoch) survived"
    );
    a.wait(LONG, "a's queue drains", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
    let got = once_in_order(&b);
    // Everything acknowledged is there, in order (a batch cut by the kill
    // may be there too: it was stored but its answer was lost).
    assert_eq!(&got[..stored.len()], &stored[..]);
    assert!(got.len() - stored.len() <= 200, "more than the cut batch");
}

/// The bodies of b's inbox from a, checking that a's sequence numbers only
/// ever grow (none reused, nothing twice) and no body came twice.
fn once_in_order(b: &Daemon) -> Vec<String> {
    let inbox = b.inbox();
    let seqs: Vec<u64> = inbox
        .iter()
        .map(|e| e["origin_seq"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "a's numbers went back or repeated: {:?}",
        seqs.windows(2).find(|w| w[0] >= w[1])
    );
    let got: Vec<String> = inbox
        .iter()
        .filter_map(|e| e["body"].as_str().map(str::to_string))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for g in &got {
        assert!(seen.insert(g), "{g} arrived twice");
    }
    got
}

#[test]
fn twenty_sigkills_of_a_sender_that_sends_before_its_fsync_lose_and_repeat_nothing() {
    // The sender publishes records to its session before their fsync
    // (one fsync on a message's path); kill it at random points with
    // records in flight, 20 times.
    let pair = Pair::new("");
    let (mut a, b) = pair.start_linked();
    let mut stored_all: Vec<String> = Vec::new();
    for round in 0..20u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let sender = sender_loop_tagged(pair.a.clone(), stop.clone(), round);
        let before = inbox_len(&b);
        b.wait(LONG, "b receives more of the stream", |b| {
            inbox_len(b) >= before + 200 + rand::random::<u64>() % 800
        });
        a.kill();
        stop.store(true, Ordering::SeqCst);
        stored_all.extend(sender.join().expect("sender thread"));
        a = Daemon::start(&pair.a);
    }
    a.wait(LONG, "a's queue drains", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
    let got = once_in_order(&b);
    // Every acknowledged message is there once, in order; the others are
    // the batches cut by a kill (stored, answer lost), each at most once.
    let mut it = got.iter();
    for want in &stored_all {
        assert!(
            it.by_ref().any(|g| g == want),
            "{want} (acknowledged) is missing or out of order"
        );
    }
    assert!(got.len() - stored_all.len() <= 20 * 200);
    assert!(
        a.spec.log().contains("did not stop cleanly"),
        "the kills were not unclean stops"
    );
}

#[test]
fn sigkill_of_the_receiver_mid_stream_loses_and_repeats_nothing() {
    let pair = Pair::new("");
    let (a, mut b) = pair.start_linked();
    const N: u64 = 100_000;
    send_ok(&a, &lines("rx", 1..=N));
    let mut kills = 0;
    let mut mid_stream = 0;
    let mut seen = 0;
    while kills < 3 && seen < N {
        b.wait(LONG, "b receives more of the stream", |b| {
            inbox_len(b) > seen
        });
        b.kill();
        kills += 1;
        b = Daemon::start(&pair.b);
        seen = inbox_len(&b);
        if seen < N {
            mid_stream += 1;
        }
    }
    assert!(
        mid_stream >= 1,
        "no kill landed mid-stream (every one after {N})"
    );
    b.wait(LONG, "b receives everything", |b| inbox_len(b) >= N);
    let inbox = assert_exactly_once(&b, N);
    assert_eq!(inbox[N as usize - 1]["body"], format!("rx-{N:06}"));
    // The counter is rebuilt from the same records: no resend counted.
    assert_eq!(b.peer("a")["msgs_received"], N);
}

#[test]
fn stop_both_start_both_delivers_the_queue_and_keeps_history_and_counters() {
    let pair = Pair::new("");
    let (mut a, mut b) = pair.start_linked();
    assert_eq!(a.status()["journal"]["durable"], true);
    send_ok(&a, &lines("early", 1..=100));
    b.wait(LONG, "b has the first 100", |b| inbox_len(b) >= 100);
    a.wait(LONG, "a has their acks", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
    b.signal("TERM");
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    send_ok(&a, &lines("queued", 1..=200));
    assert_eq!(a.peer("b")["queued_msgs"], 200);
    let sent_before = a.peer("b")["msgs_sent"].as_u64().unwrap_or(0);
    assert!(sent_before >= 100);
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(5)), Some(0));

    let a = Daemon::start(&pair.a);
    assert_eq!(a.peer("b")["queued_msgs"], 200, "the queue survived");
    assert!(a.peer("b")["msgs_sent"].as_u64().unwrap_or(0) >= sent_before);
    let b = Daemon::start(&pair.b);
    b.wait(LONG, "b receives the queued 200", |b| inbox_len(b) >= 300);
    let inbox = assert_exactly_once(&b, 300);
    assert_eq!(
        inbox[0]["body"], "early-000001",
        "history before the restart"
    );
    assert_eq!(inbox[299]["body"], "queued-000200");
    assert_eq!(b.peer("a")["msgs_received"], 300);
    a.wait(LONG, "a's queue drains", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
}

#[test]
fn a_full_outbox_refuses_clearly_and_keeps_what_it_accepted() {
    let pair = Pair::new("outbox_limit = { messages = 50 }");
    let a = Daemon::start(&pair.a);
    send_ok(&a, &lines("kept", 1..=50));
    let out = a.spec.ctl(&["send", "one too many"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("outbox full") && err.contains("50 messages") && err.contains("since 20"),
        "{err}"
    );
    let b = Daemon::start(&pair.b);
    b.wait(LONG, "b receives the 50 accepted", |b| inbox_len(b) >= 50);
    let inbox = assert_exactly_once(&b, 50);
    assert_eq!(inbox[49]["body"], "kept-000050");
    a.wait(LONG, "a's outbox drains", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
    a.send(&["room again"]);
    b.wait(LONG, "sending works again", |b| inbox_len(b) == 51);
}

#[test]
fn send_wait_returns_once_the_peer_has_it_or_exits_4_on_timeout() {
    let pair = Pair::new("");
    let (a, mut b) = pair.start_linked();
    let out = a.spec.ctl(&["send", "--wait", "acked"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Acked means stored in b's inbox: no waiting needed.
    assert_eq!(b.bodies(), ["acked"]);
    b.kill();
    let out = a
        .spec
        .ctl(&["send", "--wait", "--timeout", "300ms", "late"]);
    assert_eq!(out.status.code(), Some(EXIT_DOWN));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not delivered within 300ms"), "{err}");
    let b = Daemon::start(&pair.b);
    b.wait(LONG, "the late message arrives once b is back", |b| {
        b.bodies() == ["acked", "late"]
    });
}

#[test]
fn tail_says_when_retention_trimmed_the_history() {
    // A message from peer a of 16 bytes takes about 80 bytes on disk.
    let pair = Pair::new("inbox_retention = { bytes = \"4KiB\" }");
    let (a, b) = pair.start_linked();
    send_ok(&a, &lines("retained", 1..=200));
    b.wait(LONG, "b trims its inbox", |b| {
        b.status()["journal"]["inbox_first"].as_u64().unwrap_or(1) > 100
    });
    let out = b.spec.ctl(&["tail", "--from", "1", "--json"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no longer in the inbox"), "{err}");
    let kept: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(kept.len() < 100 && !kept.is_empty(), "{}", kept.len());
    assert_eq!(
        kept.last().map(|e| e["body"].clone()),
        Some("retained-000200".into())
    );
}
