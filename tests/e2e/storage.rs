//! The disk is a fault like any other (SPEC §4, README "Durability"): a
//! receiver or a sender whose filesystem fills mid-stream and then frees,
//! an inbox whose writes fail with EIO, damaged segments, a repaired
//! journal, and an inbox restored from an old backup. Nothing acknowledged
//! is lost without a loud, precise report.
//!
//! The full-disk cases mount a small tmpfs, so they need root (CI runs as
//! root); elsewhere they print one SKIPPED line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use peerlink_e2e::{Daemon, EXIT_LOST, Pair, Value, copy_tree, peerd_bin};

const LONG: Duration = Duration::from_secs(60);

fn inbox_len(d: &Daemon) -> u64 {
    d.status()["journal"]["inbox_next"].as_u64().unwrap_or(1) - 1
}

/// The origin seqs of every message in the inbox, in order.
fn origin_seqs(d: &Daemon) -> Vec<u64> {
    d.inbox()
        .iter()
        .map(|e| e["origin_seq"].as_u64().unwrap_or(0))
        .collect()
}

/// `n` numbered ~210-byte lines.
fn lines(tag: &str, range: std::ops::RangeInclusive<u64>) -> String {
    let pad = "x".repeat(200);
    range.map(|i| format!("{tag}-{i:06}-{pad}\n")).collect()
}

/// A tmpfs of `size` mounted on `dir` (created), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (after printing why) where this cannot run.
    fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            println!("SKIPPED: {test}: needs root to mount a small tmpfs");
            return None;
        }
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("SKIPPED: {test}: cannot mount a tmpfs here");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill(path: &Path, bytes: usize) {
    std::fs::write(path, vec![7u8; bytes]).expect("write the filler");
}

/// The fixtures' fast timers already redial within 300 ms, so a freed
/// disk is seen at once.
const QUICK: &str = "";

#[test]
fn a_receiver_whose_disk_fills_mid_stream_gets_everything_once_when_it_frees() {
    let pair = Pair::new(QUICK);
    let Some(_fs) = Tmpfs::mount(&pair.b.state, "6m", "receiver disk full") else {
        return;
    };
    let (a, b) = pair.start_linked();
    let filler = pair.b.state.join("filler");
    fill(&filler, 4 << 20);
    const N: u64 = 20_000;
    let out = a.send_stdin(&lines("full", 1..=N));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // b cannot store it all: both sides say why, and the link pauses.
    a.wait(LONG, "a says b's journal is full", |a| {
        a.peer("b")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("b's journal full") && e.contains("No space left"))
    });
    b.wait(LONG, "b says its journal cannot be written", |b| {
        b.status()["journal"]["storage_error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left"))
    });
    let stored_while_full = inbox_len(&b);
    assert!(stored_while_full < N, "the disk never filled");
    std::fs::remove_file(&filler).expect("free the disk");
    b.wait(LONG, "b receives everything once the disk frees", |b| {
        inbox_len(b) >= N
    });
    assert_eq!(
        origin_seqs(&b),
        (1..=N).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    a.wait(LONG, "a's queue drains", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
    assert_eq!(b.status()["journal"]["storage_error"], Value::Null);
    // Loud, not a storm: each side says "link down" for this reason once
    // (again only after another kind of failure came in between).
    for d in [&a, &b] {
        let log = d.spec.log();
        let warned = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("link down") && l.contains("journal full"))
            .count();
        assert!(warned <= 3, "{} warned {warned} times:\n{log}", d.spec.name);
    }
}

#[test]
fn a_sender_whose_disk_fills_refuses_sends_and_delivers_every_accepted_one_once() {
    let pair = Pair::new(QUICK);
    let Some(_fs) = Tmpfs::mount(&pair.a.state, "6m", "sender disk full") else {
        return;
    };
    let (a, b) = pair.start_linked();
    let filler = pair.a.state.join("filler");
    fill(&filler, 4 << 20);
    let mut stored: Vec<String> = Vec::new();
    let mut refused = None;
    let pad = "y".repeat(200);
    for k in 0..200u64 {
        let batch: Vec<String> = (0..200).map(|i| format!("s{k:03}-{i:03}-{pad}")).collect();
        let mut args = vec!["send"];
        args.extend(batch.iter().map(String::as_str));
        let out = a.spec.ctl(&args);
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).to_string());
            break;
        }
        stored.extend(batch);
    }
    let refused = refused.expect("the sender's disk never filled");
    assert!(refused.contains("No space left on device"), "{refused}");
    assert!(
        a.status()["journal"]["storage_error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left")),
        "status says why"
    );
    std::fs::remove_file(&filler).expect("free the disk");
    let tail: Vec<String> = (0..50).map(|i| format!("after-{i}")).collect();
    a.send(&tail.iter().map(String::as_str).collect::<Vec<_>>());
    stored.extend(tail);
    b.wait(LONG, "b receives every accepted message", |b| {
        inbox_len(b) >= stored.len() as u64
    });
    assert_eq!(
        b.bodies(),
        stored,
        "every accepted message once, in order, nothing else"
    );
}

#[test]
fn an_inbox_failing_with_eio_pauses_the_link_and_resumes_without_a_gap() {
    let pair = Pair::new(QUICK);
    let fault = pair.sandbox.path().join("fault");
    let a = Daemon::start(&pair.a);
    let mut b = Daemon::spawn_env(&pair.b, &[], &[("PEERD_FAULT_FILE", fault.as_os_str())]);
    b.wait_ready();
    a.wait_connected("b");
    const N: u64 = 30_000;
    let out = a.send_stdin(&lines("eio", 1..=N));
    assert!(out.status.success());
    b.wait(LONG, "b stores part of the stream", |b| {
        inbox_len(b) >= 1_000
    });
    std::fs::write(&fault, "inbox EIO\n").expect("arm the fault");
    a.wait(LONG, "a says b cannot store", |a| {
        a.peer("b")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("b's journal cannot store") && e.contains("os error 5"))
    });
    let during = inbox_len(&b);
    assert!(
        b.peer("a")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("paused: our journal cannot store")),
        "{}",
        b.peer("a")
    );
    std::fs::remove_file(&fault).expect("disarm the fault");
    b.wait(LONG, "b gets everything", |b| inbox_len(b) >= N);
    assert!(during < N, "the fault landed after the stream");
    assert_eq!(
        origin_seqs(&b),
        (1..=N).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
}

/// Flip 4 bytes at `offset` of `path`.
fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, offset).expect("read");
    for x in &mut b {
        *x ^= 0x5a;
    }
    f.write_all_at(&b, offset).expect("write");
}

/// Offset of record `seq` in the first segment of a log (records walked by
/// their length fields).
fn record_offset(seg: &Path, seq: u64) -> u64 {
    let data = std::fs::read(seg).expect("read segment");
    let mut off = 0usize;
    for _ in 1..seq {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
        off += 8 + len;
    }
    off as u64
}

fn peerd_journal(verb: &str, spec: &peerlink_e2e::Spec) -> std::process::Output {
    Command::new(peerd_bin())
        .args(["journal", verb, &spec.name, "--state-dir"])
        .arg(&spec.state)
        .output()
        .expect("run peerd journal")
}

#[test]
fn damage_in_the_last_segment_refuses_to_start_and_repair_says_what_it_drops() {
    let pair = Pair::new(QUICK);
    let mut a = Daemon::start(&pair.a);
    let numbered: Vec<String> = (1..=2000).map(|i| format!("queued-{i:04}")).collect();
    let out = a.send_stdin(&(numbered.join("\n") + "\n"));
    assert!(out.status.success());
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(5)), Some(0));
    let seg = pair.a.state.join("journal/outbox/00000000000000000001.log");
    let off = record_offset(&seg, 1001);
    flip(&seg, off + 14);
    // Refuses to start, naming file and offset; nothing is cut.
    let size = std::fs::metadata(&seg).expect("segment").len();
    let mut a = Daemon::spawn(&pair.a, &[]);
    assert_eq!(a.wait_exit(Duration::from_secs(10)), Some(1));
    let log = pair.a.log();
    assert!(
        log.contains("00000000000000000001.log")
            && log.contains(&format!("offset {off}"))
            && log.contains("record 1001")
            && log.contains("peerd journal verify a"),
        "{log}"
    );
    assert!(!log.contains("torn tail"), "{log}");
    assert_eq!(std::fs::metadata(&seg).expect("segment").len(), size);
    // verify: the damage and what a repair would drop.
    let v = peerd_journal("verify", &pair.a);
    let text = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{text}");
    assert!(
        text.contains("a repair drops outbox records 1001..1001 (1 message)"),
        "{text}"
    );
    // repair drops exactly that record.
    let r = peerd_journal("repair", &pair.a);
    let text = String::from_utf8_lossy(&r.stdout);
    // README "Durability" shows this run (transcript "journal-repair"),
    // in the default state directory.
    let shown = text.replace(&pair.a.state.display().to_string(), "/var/lib/peerd/a");
    let mut want = peerlink_e2e::readme_block("journal-repair");
    assert_eq!(want.remove(0), "$ peerd journal repair a");
    assert_eq!(
        shown.lines().collect::<Vec<_>>(),
        want,
        "README's repair transcript"
    );
    assert!(
        r.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        text.contains("dropped outbox records 1001..1001 (1 message)"),
        "{text}"
    );
    assert!(
        text.contains("1 never reached b, which will be told they are lost"),
        "{text}"
    );
    assert!(peerd_journal("verify", &pair.a).status.success());
    // Both sides say what was lost; every other message arrives once.
    let a = Daemon::start(&pair.a);
    let b = Daemon::start(&pair.b);
    b.wait(LONG, "b receives the rest", |b| inbox_len(b) >= 2000);
    let mut expect = numbered.clone();
    expect.remove(1000);
    assert_eq!(b.bodies(), expect);
    for (d, peer) in [(&a, "b"), (&b, "a")] {
        let p = d.peer(peer);
        assert_eq!(p["msgs_lost"], 1, "{p}");
        assert_eq!(d.spec.ctl(&["status"]).status.code(), Some(EXIT_LOST));
    }
    assert!(
        b.spec.log().contains("messages 1001..1001 of a"),
        "{}",
        b.spec.log()
    );
    // The numbering went on: a new message is 2001, delivered as such.
    a.send(&["after repair"]);
    b.wait(LONG, "b receives the new one", |b| inbox_len(b) >= 2001);
    assert_eq!(origin_seqs(&b).last(), Some(&2001));
}

#[test]
fn damage_in_the_inbox_refuses_to_start_naming_the_offset() {
    let pair = Pair::new(QUICK);
    let (a, mut b) = pair.start_linked();
    a.send(&["one", "two", "three", "four"]);
    b.wait(LONG, "b has them", |b| inbox_len(b) >= 4);
    b.signal("TERM");
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    let seg = pair.b.state.join("journal/inbox/00000000000000000001.log");
    let off = record_offset(&seg, 2);
    flip(&seg, off + 12);
    let mut b = Daemon::spawn(&pair.b, &[]);
    assert_eq!(b.wait_exit(Duration::from_secs(10)), Some(1));
    let log = pair.b.log();
    assert!(
        log.contains(&format!("offset {off}")) && log.contains("record 2") && log.contains("inbox"),
        "{log}"
    );
    let r = peerd_journal("repair", &pair.b);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.contains("dropped inbox records 2..2 (1 message)"),
        "{text}"
    );
    let b = Daemon::start(&pair.b);
    assert_eq!(b.bodies(), ["one", "three", "four"]);
}

#[test]
fn an_inbox_restored_from_an_old_backup_gets_the_lost_range_reported() {
    let pair = Pair::new(QUICK);
    let (a, mut b) = pair.start_linked();
    a.send(&["before-1", "before-2", "before-3"]);
    b.wait(LONG, "b has the first three", |b| inbox_len(b) >= 3);
    b.signal("TERM");
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    let backup = pair.sandbox.path().join("b-backup");
    copy_tree(&pair.b.state, &backup);
    let mut b = Daemon::start(&pair.b);
    // More than one 16 MiB segment, so a deletes what b acknowledged.
    let big = "z".repeat(4000);
    let input: String = (1..=5000).map(|i| format!("m{i:05}-{big}\n")).collect();
    assert!(a.send_stdin(&input).status.success());
    b.wait(LONG, "b has everything", |b| inbox_len(b) >= 5003);
    let outbox = pair.a.state.join("journal/outbox");
    a.wait(LONG, "a deletes the acknowledged first segment", |_| {
        !outbox.join("00000000000000000001.log").exists()
    });
    let first_kept: u64 = std::fs::read_dir(&outbox)
        .expect("outbox")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .min()
        .expect("a segment");
    // b's state goes back in time: it expects 4 again, a starts at first_kept.
    b.signal("TERM");
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    std::fs::remove_dir_all(&pair.b.state).expect("rm state");
    copy_tree(&backup, &pair.b.state);
    let b = Daemon::start(&pair.b);
    let lost = first_kept - 4;
    b.wait(LONG, "b receives what a still has", |b| {
        inbox_len(b) >= 3 + 1 + (5003 - first_kept + 1)
    });
    let seqs = origin_seqs(&b);
    let expect: Vec<u64> = (1..=3).chain(first_kept..=5003).collect();
    assert_eq!(seqs, expect, "no gap beyond the reported one, no duplicate");
    let log = a.spec.log();
    let range = format!("messages 4..{}", first_kept - 1);
    assert!(
        log.contains("went back in time") && log.contains(&range),
        "{log}"
    );
    for (d, peer) in [(&a, "b"), (&b, "a")] {
        assert_eq!(d.peer(peer)["msgs_lost"], lost, "{}", d.peer(peer));
        assert_eq!(d.spec.ctl(&["status"]).status.code(), Some(EXIT_LOST));
    }
}
