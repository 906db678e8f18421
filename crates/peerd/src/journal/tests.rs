//! Journal behaviour through its public handle: numbering, acks, limits,
//! duplicates and epochs, retention, and reopening after every kind of
//! write, cleanly or as a crash would leave the files.
//!
//! Test code only: `journal.rs` includes this file as `#[cfg(test)] mod
//! tests;`, so its `unwrap`s never reach the daemon.

use std::path::Path;

use super::*;

fn opts(dir: &Path) -> Options {
    Options {
        dir: dir.to_path_buf(),
        peers: vec!["b".into()],
        outbox_limit_bytes: 1 << 20,
        outbox_limit_messages: 5,
        inbox_retention_bytes: 1 << 20,
        inbox_retention_age: None,
        fsync: true,
        segment_bytes: 4096,
    }
}

/// Store `records` from `origin` as a session would: the stretch they
/// come from is from the first to just past the last.
async fn inbox(
    j: &Journal,
    origin: String,
    epoch: u64,
    records: Vec<Record>,
) -> Result<u64, JournalError> {
    let slot = j.reserve().await;
    let from = records.first().map(|r| r.seq).unwrap_or(1);
    let next = records.last().map(|r| r.seq + 1).unwrap_or(from);
    j.append_inbox(slot, origin, epoch, (from, next), records)
        .await
}

fn rec(seq: u64, body: &str) -> Record {
    Record {
        seq,
        sent_ms: 1,
        body: body.as_bytes().to_vec(),
    }
}

fn segments(dir: &Path, log: &str) -> usize {
    std::fs::read_dir(dir.join(log)).unwrap().count()
}

/// The files as a crash at this moment would leave them (the writer
/// thread does not get to write anything more).
fn crash_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            crash_copy(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Every message's origin seq, read as `tail` does: chunk after chunk
/// (a read stops at a segment's end), from where the last one stopped.
fn origin_seqs(j: &Journal) -> Vec<u64> {
    let (mut out, mut next) = (Vec::new(), 1);
    while next < j.status().inbox_next {
        let read = j.read_inbox(next, 10_000, 1 << 30).unwrap();
        assert!(read.next > next, "a read moves on");
        out.extend(read.entries.iter().map(|e| e.origin_seq));
        next = read.next;
    }
    out
}

#[tokio::test]
async fn outbox_numbers_reads_and_trims_by_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    assert!(j.durable());
    assert_eq!(
        j.append_outbox(
            j.reserve().await,
            vec![b"x".to_vec(), b"y".to_vec()],
            vec![]
        )
        .await,
        Ok((1, 2))
    );
    assert_eq!(
        j.append_outbox(j.reserve().await, vec![b"z".to_vec()], vec![])
            .await,
        Ok((3, 3))
    );
    let got = j.read_outbox(2, 1 << 20, "b").unwrap().records;
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(got[1].body, b"z");
    let (msgs, bytes, oldest) = j.queued("b");
    assert_eq!((msgs, bytes), (3, 3 * (24 + 1)));
    assert!(oldest.is_some());
    j.ack("b", 3);
    assert_eq!(j.queued("b").0, 1);
    assert!(j.delivered(&[], 2) && !j.delivered(&[], 3));
    j.ack("b", 99); // never beyond what exists
    assert_eq!(j.peer("b").acked_next, 4);
    assert_eq!(j.queued("b"), (0, 0, None));
}

#[tokio::test]
async fn acked_segments_are_deleted_and_numbering_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    o.outbox_limit_messages = 1_000_000;
    let j = Journal::open(o.clone()).unwrap();
    for _ in 0..10 {
        j.append_outbox(j.reserve().await, vec![vec![7u8; 100]; 50], vec![])
            .await
            .unwrap();
    }
    let before = segments(tmp.path(), "outbox");
    assert!(before > 5, "{before}");
    j.ack("b", 501);
    j.checkpoint().await.unwrap();
    assert_eq!(segments(tmp.path(), "outbox"), 1, "only the active segment");
    assert_eq!(j.read_outbox(501, 1 << 20, "b").unwrap().records, vec![]);
    j.close().await;
    drop(j);
    let j = Journal::open(o).unwrap();
    assert_eq!(
        j.append_outbox(j.reserve().await, vec![b"n".to_vec()], vec![])
            .await,
        Ok((501, 501))
    );
    assert_eq!(
        j.read_outbox(501, 1 << 20, "b").unwrap().records[0].seq,
        501
    );
}

#[tokio::test]
async fn outbox_limit_refuses_and_keeps_what_it_has() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    j.append_outbox(j.reserve().await, vec![vec![1]; 5], vec![])
        .await
        .unwrap();
    let e = j
        .append_outbox(j.reserve().await, vec![vec![2]], vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(e, JournalError::OutboxFull { queued_msgs: 5, .. }),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("5 messages") && text.contains("since 20"),
        "{text}"
    );
    assert_eq!(j.read_outbox(1, 1 << 20, "b").unwrap().records.len(), 5);
    // Acks make room again; a byte limit works the same way.
    j.ack("b", 3);
    assert_eq!(
        j.append_outbox(j.reserve().await, vec![vec![3]; 2], vec![])
            .await,
        Ok((6, 7))
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    o.outbox_limit_messages = 1000;
    o.outbox_limit_bytes = 100;
    let j = Journal::open(o).unwrap();
    j.append_outbox(j.reserve().await, vec![vec![0; 30]; 1], vec![])
        .await
        .unwrap();
    let e = j
        .append_outbox(j.reserve().await, vec![vec![0; 30]; 1], vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            JournalError::OutboxFull {
                queued_msgs: 1,
                queued_bytes: 54,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn inbox_drops_duplicates_and_handles_new_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    assert_eq!(
        inbox(&j, "b".into(), 7, vec![rec(1, "a"), rec(2, "b")]).await,
        Ok(3)
    );
    assert_eq!(
        inbox(&j, "b".into(), 7, vec![rec(2, "b"), rec(3, "c")]).await,
        Ok(4)
    );
    assert_eq!(origin_seqs(&j), [1, 2, 3]);
    let c = j.counters("b");
    assert_eq!((c.msgs_received, c.bytes_received), (3, 3));
    // The peer's journal was wiped: a new epoch starts over at its seq 1.
    assert_eq!(inbox(&j, "b".into(), 8, vec![rec(1, "n")]).await, Ok(2));
    assert_eq!(
        j.peer("b"),
        PeerState {
            acked_next: 1,
            recv_epoch: 8,
            recv_next: 2
        }
    );
    assert_eq!(origin_seqs(&j), [1, 2, 3, 1]);
}

#[tokio::test]
async fn the_epoch_is_made_once_and_kept() {
    let (t1, t2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let j1 = Journal::open(opts(t1.path())).unwrap();
    let j2 = Journal::open(opts(t2.path())).unwrap();
    let e1 = j1.epoch();
    assert_ne!(e1, j2.epoch());
    assert_ne!(e1, 0);
    // One journal, one daemon.
    let e = Journal::open(opts(t1.path())).err().unwrap().to_string();
    assert!(e.contains("in use by another peerd"), "{e}");
    j1.close().await;
    drop(j1);
    let j1 = Journal::open(opts(t1.path())).unwrap();
    assert_eq!(j1.epoch(), e1);
    assert_eq!(j1.status().epoch, e1);
    // Segments without a state file: refuse rather than guess an epoch.
    j1.append_outbox(j1.reserve().await, vec![b"x".to_vec()], vec![])
        .await
        .unwrap();
    j1.close().await;
    drop(j1);
    std::fs::remove_file(t1.path().join("state.toml")).unwrap();
    let e = Journal::open(opts(t1.path())).err().unwrap().to_string();
    assert!(e.contains("no state.toml"), "{e}");
}

#[tokio::test]
async fn an_outbox_behind_what_the_peer_acked_starts_a_new_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    let old = j.epoch();
    j.append_outbox(
        j.reserve().await,
        vec![b"x".to_vec(), b"y".to_vec()],
        vec![],
    )
    .await
    .unwrap();
    j.ack("b", 3);
    j.close().await;
    drop(j);
    // The outbox lost records the peer has: reusing their numbers would
    // make the peer drop new messages as duplicates.
    for e in std::fs::read_dir(tmp.path().join("outbox")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    // The numbers it reserved are voided: the next message is 3, same
    // epoch, nothing reused.
    let j = Journal::open(opts(tmp.path())).unwrap();
    assert_eq!(j.epoch(), old);
    assert_eq!(
        j.append_outbox(j.reserve().await, vec![b"z".to_vec()], vec![])
            .await,
        Ok((3, 3))
    );
    j.ack("b", 4);
    j.close().await;
    drop(j);
    // Without a reservation to go by (a state file of layout 1), a new
    // epoch makes every peer start over with us instead.
    for e in std::fs::read_dir(tmp.path().join("outbox")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let state = std::fs::read_to_string(tmp.path().join("state.toml")).unwrap();
    let state: String = state
        .lines()
        .filter(|l| !l.starts_with("outbox_reserved"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(tmp.path().join("state.toml"), state).unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    assert_ne!(j.epoch(), old);
    assert_eq!(
        j.append_outbox(j.reserve().await, vec![b"z".to_vec()], vec![])
            .await,
        Ok((1, 1))
    );
    j.close().await;
    drop(j);
    let again = Journal::open(opts(tmp.path())).unwrap();
    assert_ne!(again.epoch(), old, "the new epoch was written down");
}

#[tokio::test]
async fn reopen_after_every_kind_of_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let j = Journal::open(opts(&dir)).unwrap();
    let epoch = j.epoch();
    j.append_outbox(
        j.reserve().await,
        vec![b"o1".to_vec(), b"o2".to_vec(), b"o3".to_vec()],
        vec![],
    )
    .await
    .unwrap();
    inbox(&j, "b".into(), 7, vec![rec(1, "i1"), rec(2, "i2")])
        .await
        .unwrap();
    j.append_local("client:x".into(), b"l1".to_vec())
        .await
        .unwrap();
    j.ack("b", 2);
    j.count_sent("b", 3, 6);

    // A crash right now: the state file is the one written at creation
    // (or a housekeeping one); the records alone carry the truth.
    let crashed = tmp.path().join("crashed");
    crash_copy(&dir, &crashed);
    let c = Journal::open(opts(&crashed)).unwrap();
    assert_eq!(c.epoch(), epoch);
    // Numbers reserved before the crash (they may have been sent early)
    // are never reused.
    assert_eq!(c.status().outbox_next, 4 + (1 << 16));
    assert_eq!(c.read_outbox(1, 1 << 20, "b").unwrap().records.len(), 3);
    assert_eq!(c.peer("b").recv_epoch, 7);
    assert_eq!(
        c.peer("b").recv_next,
        3,
        "receive state replayed from the inbox"
    );
    assert_eq!(c.counters("b").msgs_received, 2);
    let tail = c.read_inbox(1, 100, 1 << 20).unwrap();
    assert_eq!(tail.entries.len(), 3);
    assert_eq!(tail.entries[2].origin, "client:x");
    assert_eq!(tail.entries[2].body, b"l1");
    // A resend after the crash is still dropped.
    assert_eq!(
        inbox(&c, "b".into(), 7, vec![rec(2, "i2"), rec(3, "i3")]).await,
        Ok(4)
    );
    assert_eq!(origin_seqs(&c), [1, 2, 0, 3]);
    drop(c);

    // A clean stop: everything, acks and counters included, survives.
    j.close().await;
    drop(j);
    let j = Journal::open(opts(&dir)).unwrap();
    assert_eq!(j.epoch(), epoch);
    assert_eq!(
        j.peer("b"),
        PeerState {
            acked_next: 2,
            recv_epoch: 7,
            recv_next: 3
        }
    );
    assert_eq!(j.queued("b").0, 2);
    assert!(j.delivered(&[], 1) && !j.delivered(&[], 2));
    let c = j.counters("b");
    assert_eq!((c.msgs_sent, c.bytes_sent, c.msgs_received), (3, 6, 2));
    assert_eq!(
        j.append_outbox(j.reserve().await, vec![b"o4".to_vec()], vec![])
            .await,
        Ok((4, 4))
    );
    assert_eq!(
        j.append_local("client:y".into(), b"l2".to_vec()).await,
        Ok(4)
    );
    let s = j.status();
    assert_eq!((s.outbox_next, s.inbox_next, s.inbox_first), (5, 5, 1));
}

#[tokio::test]
async fn a_torn_inbox_tail_loses_only_the_unacked_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let j = Journal::open(opts(&dir)).unwrap();
    for i in 1..=3 {
        inbox(&j, "b".into(), 7, vec![rec(i, "message")])
            .await
            .unwrap();
    }
    j.close().await;
    drop(j);
    let seg = std::fs::read_dir(dir.join("inbox"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let j = Journal::open(opts(&dir)).unwrap();
    // The state file's checkpoint covered record 3; the record itself is
    // gone, so "next expected" must not claim it.
    assert_eq!(origin_seqs(&j), [1, 2]);
    assert_eq!(j.peer("b").recv_next, 3);
    assert_eq!(inbox(&j, "b".into(), 7, vec![rec(3, "again")]).await, Ok(4));
    assert_eq!(origin_seqs(&j), [1, 2, 3]);
}

#[tokio::test]
async fn inbox_retention_trims_oldest_by_bytes_and_age() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    // Each local record of 4 bytes takes 8 (header) + 8 (seq) + 33
    // (fields) + 8 ("client:x") + 4 = 61 bytes.
    o.inbox_retention_bytes = 61 * 20;
    let j = Journal::open(o.clone()).unwrap();
    for _ in 0..200 {
        j.append_local("client:x".into(), b"abcd".to_vec())
            .await
            .unwrap();
    }
    assert_eq!(*j.watch_inbox().borrow(), 201);
    j.checkpoint().await.unwrap();
    let got = j.read_inbox(1, 1000, 1 << 20).unwrap();
    assert_eq!(got.first, 181, "the newest 20 are kept");
    assert_eq!(got.entries.len(), 20);
    assert_eq!(got.entries[0].seq, 181);
    assert!(
        segments(tmp.path(), "inbox") <= 2,
        "trimmed segments deleted"
    );
    j.close().await;
    drop(j);
    let j = Journal::open(o.clone()).unwrap();
    assert_eq!(j.read_inbox(1, 1000, 1 << 20).unwrap().first, 181);
    assert_eq!(j.status().inbox_first, 181);
    j.close().await;
    drop(j);
    // By age: everything is older than a millisecond soon enough.
    o.inbox_retention_age = Some(Duration::from_millis(1));
    let j = Journal::open(o).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    j.checkpoint().await.unwrap();
    let got = j.read_inbox(1, 1000, 1 << 20).unwrap();
    assert_eq!((got.first, got.entries.len()), (201, 0));
    assert_eq!(
        j.append_local("client:x".into(), b"new".to_vec()).await,
        Ok(201)
    );
}

#[tokio::test]
async fn a_large_backlog_lives_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    o.outbox_limit_messages = u64::MAX;
    o.outbox_limit_bytes = u64::MAX;
    o.segment_bytes = SEGMENT_BYTES;
    let j = Journal::open(o).unwrap();
    for _ in 0..20 {
        j.append_outbox(j.reserve().await, vec![vec![9u8; 64]; 10_000], vec![])
            .await
            .unwrap();
    }
    let st = j.lock();
    // 200k records: the index holds a mark per 256 records or 64 KiB.
    assert!(
        st.outbox.mark_count() <= 200_000 / 256 + 40,
        "{}",
        st.outbox.mark_count()
    );
    drop(st);
    let r = j.read_outbox(123_457, 1 << 20, "b").unwrap().records;
    assert_eq!(r[0].seq, 123_457);
    assert_eq!(j.queued("b").0, 200_000);
}

#[tokio::test]
async fn closed_journal_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    j.close().await;
    assert_eq!(
        j.append_outbox(j.reserve().await, vec![b"late".to_vec()], vec![])
            .await,
        Err(JournalError::Closed)
    );
}

/// Not a timed test: prints how fast the journal absorbs 64-byte messages
/// with one fsync per batch, on both sides. Run it with
/// `cargo test --release -p peerd journal_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn journal_throughput() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    o.outbox_limit_messages = u64::MAX;
    o.outbox_limit_bytes = u64::MAX;
    o.inbox_retention_bytes = u64::MAX;
    o.segment_bytes = SEGMENT_BYTES;
    let j = Journal::open(o).unwrap();
    const N: u64 = 2_000_000;
    // Sender side: `peerctl send` batches, a few in flight.
    let t = std::time::Instant::now();
    let mut pending = Vec::new();
    for _ in 0..N / 50_000 {
        let j = j.clone();
        pending.push(tokio::spawn(async move {
            j.append_outbox(j.reserve().await, vec![vec![7u8; 64]; 50_000], vec![])
                .await
        }));
        if pending.len() >= 8 {
            pending.remove(0).await.unwrap().unwrap();
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    let s = t.elapsed();
    // Receiver side: peer frames of ~256 KiB (about 3,000 records).
    let t = std::time::Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let mut seq = 1;
    while seq <= N {
        let records: Vec<Record> = (seq..seq + 3000)
            .map(|s| Record {
                seq: s,
                sent_ms: 1,
                body: vec![7u8; 64],
            })
            .collect();
        seq += 3000;
        pending.push_back(inbox(&j, "b".into(), 7, records));
        if pending.len() >= 64 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    while let Some(p) = pending.pop_front() {
        p.await.unwrap();
    }
    let r = t.elapsed();
    // Reading the outbox back, as a session sends it.
    let t = std::time::Instant::now();
    let mut next = 1;
    while next <= N {
        let recs = j.read_outbox(next, 256 << 10, "b").unwrap().records;
        next = recs.last().unwrap().seq + 1;
    }
    let rd = t.elapsed();
    eprintln!(
        "{N} x 64 B: outbox {:.2}M appends/s, inbox {:.2}M appends/s, outbox reads {:.2}M/s",
        N as f64 / s.as_secs_f64() / 1e6,
        (seq - 1) as f64 / r.as_secs_f64() / 1e6,
        N as f64 / rd.as_secs_f64() / 1e6
    );
}

/// Flip `n` bytes at `offset` of a file.
fn flip(path: &Path, offset: u64, n: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = vec![0u8; n];
    f.read_exact_at(&mut b, offset).unwrap();
    for x in &mut b {
        *x ^= 0xa5;
    }
    f.write_all_at(&b, offset).unwrap();
}

/// Byte offset of outbox record `seq` in a one-segment log of equal records.
fn record_offset(dir: &Path, log_name: &str, seq: u64) -> (std::path::PathBuf, u64) {
    let seg = dir.join(log_name).join(format!("{:020}.log", 1));
    let data = std::fs::read(&seg).unwrap();
    let mut off = 0usize;
    let mut s = 1;
    while s < seq {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        off += 8 + len;
        s += 1;
    }
    (seg, off as u64)
}

#[tokio::test]
async fn damage_inside_the_last_segment_refuses_and_repair_drops_exactly_it() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Options {
        outbox_limit_messages: 100,
        segment_bytes: 1 << 20,
        ..opts(tmp.path())
    };
    let j = Journal::open(o.clone()).unwrap();
    let bodies = (1..=20)
        .map(|i| format!("message {i:03}").into_bytes())
        .collect();
    assert_eq!(
        j.append_outbox(j.reserve().await, bodies, vec![]).await,
        Ok((1, 20))
    );
    j.ack("b", 5);
    j.close().await;
    drop(j);
    let (seg, off) = record_offset(tmp.path(), "outbox", 11);
    flip(&seg, off + 12, 4);
    // Valid records follow the bad one: corruption, not a torn tail.
    let e = Journal::open(o.clone()).err().unwrap().to_string();
    assert!(
        e.contains("00000000000000000001.log")
            && e.contains(&format!("offset {off}"))
            && e.contains("record 11")
            && e.contains("valid records follow"),
        "{e}"
    );
    // verify says what a repair drops, and changes nothing.
    let before = std::fs::read(&seg).unwrap();
    let report = repair::verify(tmp.path()).unwrap();
    assert!(!report.is_clean());
    let text = report.render(false);
    assert!(
        text.contains("a repair drops outbox records 11..11 (1 message)"),
        "{text}"
    );
    assert!(text.contains("1 never reached b"), "{text}");
    assert_eq!(std::fs::read(&seg).unwrap(), before);
    // repair drops exactly record 11.
    let report = repair::repair(tmp.path()).unwrap();
    assert!(
        report
            .render(true)
            .contains("dropped outbox records 11..11")
    );
    assert!(repair::verify(tmp.path()).unwrap().is_clean());
    let j = Journal::open(o).unwrap();
    assert_eq!(j.status().outbox_next, 21, "no number is reused");
    let r = j.read_outbox(5, 1 << 20, "b").unwrap();
    assert_eq!(
        r.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (5..=10).collect::<Vec<_>>()
    );
    assert_eq!(r.lost, None);
    let r = j.read_outbox(11, 1 << 20, "b").unwrap();
    assert_eq!((r.records.len(), r.lost), (0, Some((11, 12))));
    let r = j.read_outbox(12, 1 << 20, "b").unwrap();
    assert_eq!(
        r.records.first().map(|r| r.body.clone()),
        Some(b"message 012".to_vec())
    );
    assert_eq!(r.records.len(), 9);
    assert_eq!(
        j.append_outbox(j.reserve().await, vec![b"new".to_vec()], vec![])
            .await,
        Ok((21, 21))
    );
}

#[tokio::test]
async fn a_truncated_last_record_is_still_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    inbox(
        &j,
        "a".into(),
        7,
        (1..=3).map(|s| rec(s, "abcdef")).collect(),
    )
    .await
    .unwrap();
    j.close().await;
    drop(j);
    let seg = tmp.path().join("inbox").join(format!("{:020}.log", 1));
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let text = repair::verify(tmp.path()).unwrap().render(false);
    assert!(text.contains("torn tail"), "{text}");
    let j = Journal::open(opts(tmp.path())).unwrap();
    assert_eq!(origin_seqs(&j), [1, 2]);
    assert_eq!(
        j.peer("a").recv_next,
        3,
        "the cut record is asked for again"
    );
}

#[tokio::test]
async fn damaged_inbox_records_and_a_missing_segment_are_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    for s in 1..=300 {
        inbox(
            &j,
            "a".into(),
            7,
            vec![rec(s, "0123456789012345678901234567890123456789")],
        )
        .await
        .unwrap();
    }
    j.close().await;
    drop(j);
    // Flip a record in the middle of the first (sealed) segment and remove
    // the second segment.
    let (seg, off) = record_offset(tmp.path(), "inbox", 3);
    flip(&seg, off + 20, 2);
    let mut segs: Vec<_> = std::fs::read_dir(tmp.path().join("inbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let second = segs[1].clone();
    let base: u64 = second
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let third: u64 = segs[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    std::fs::remove_file(&second).unwrap();
    assert!(Journal::open(opts(tmp.path())).is_err());
    let text = repair::repair(tmp.path()).unwrap().render(true);
    assert!(
        text.contains("dropped inbox records 3..3 (1 message)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("dropped inbox records {base}..{}", third - 1)),
        "{text}"
    );
    let j = Journal::open(opts(tmp.path())).unwrap();
    let seqs = origin_seqs(&j);
    let expect: Vec<u64> = (1..=300)
        .filter(|s| *s != 3 && !(base..third).contains(s))
        .collect();
    assert_eq!(seqs, expect, "tail skips exactly the dropped records");
    assert_eq!(j.status().inbox_next, 301);
    assert_eq!(j.peer("a").recv_next, 301);
}

#[tokio::test]
async fn records_past_a_hole_are_never_stored_and_skips_are_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    assert_eq!(
        inbox(&j, "a".into(), 7, vec![rec(1, "x"), rec(2, "y")]).await,
        Ok(3)
    );
    // A stretch that does not start where we are: a hole, never stored.
    let e = j
        .append_inbox(j.reserve().await, "a".into(), 7, (5, 6), vec![rec(5, "z")])
        .await;
    assert_eq!(
        e,
        Err(JournalError::Gap {
            expected: 3,
            got: 5
        })
    );
    assert_eq!(origin_seqs(&j), [1, 2]);
    // A stretch from where we are, whose records 4, 5, 7 and 8 are for
    // other peers: 3 and 6 are stored, and "next expected" moves to 9.
    let r = j.append_inbox(
        j.reserve().await,
        "a".into(),
        7,
        (3, 9),
        vec![rec(3, "p"), rec(6, "q")],
    );
    assert_eq!(r.await, Ok(9));
    assert_eq!(origin_seqs(&j), [1, 2, 3, 6]);
    assert_eq!(j.peer("a").recv_next, 9);
    assert_eq!(j.counters("a").msgs_lost, 0, "a skip is no loss");
    // The skip at the end is durable by itself (a crash, no checkpoint).
    let copy = tempfile::tempdir().unwrap();
    crash_copy(tmp.path(), copy.path());
    let _ = std::fs::remove_file(copy.path().join("lock"));
    let c = Journal::open(opts(copy.path())).unwrap();
    assert_eq!(c.peer("a").recv_next, 9);
    assert_eq!(origin_seqs(&c), [1, 2, 3, 6]);
    assert_eq!(c.counters("a").msgs_received, 4);
}

#[tokio::test]
async fn a_loss_notice_moves_next_expected_durably_and_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts(tmp.path())).unwrap();
    inbox(&j, "a".into(), 7, vec![rec(1, "x")]).await.unwrap();
    // Not from where we are: refused like a gap.
    assert_eq!(
        j.append_lost(j.reserve().await, "a".into(), 7, 5, 9).await,
        Err(JournalError::Gap {
            expected: 2,
            got: 5
        })
    );
    assert_eq!(
        j.append_lost(j.reserve().await, "a".into(), 7, 2, 9).await,
        Ok(9)
    );
    assert_eq!(
        j.append_lost(j.reserve().await, "a".into(), 7, 2, 9).await,
        Ok(9),
        "told twice: once"
    );
    assert_eq!(j.counters("a").msgs_lost, 7);
    assert_eq!(inbox(&j, "a".into(), 7, vec![rec(9, "y")]).await, Ok(10));
    assert_eq!(origin_seqs(&j), [1, 9], "the notice is no message");
    // A crash before any checkpoint: the notice itself is the durable write.
    let copy = tempfile::tempdir().unwrap();
    crash_copy(tmp.path(), copy.path());
    let _ = std::fs::remove_file(copy.path().join("lock"));
    let c = Journal::open(opts(copy.path())).unwrap();
    assert_eq!(c.peer("a").recv_next, 10);
    assert_eq!(origin_seqs(&c), [1, 9]);
}

fn opts3(dir: &Path) -> Options {
    Options {
        peers: vec!["b".into(), "c".into(), "d".into()],
        outbox_limit_messages: 1000,
        ..opts(dir)
    }
}

fn seqs(r: &OutboxRead) -> Vec<u64> {
    r.records.iter().map(|r| r.seq).collect()
}

#[tokio::test]
async fn each_peer_has_its_own_cursor_and_queue_in_one_outbox() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(opts3(tmp.path())).unwrap();
    let to = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    j.append_outbox(j.reserve().await, vec![b"all".to_vec()], vec![])
        .await
        .unwrap(); // 1
    j.append_outbox(j.reserve().await, vec![b"to-b".to_vec()], to(&["b"]))
        .await
        .unwrap(); // 2
    j.append_outbox(j.reserve().await, vec![b"to-c-d".to_vec()], to(&["c", "d"]))
        .await
        .unwrap(); // 3
    j.append_outbox(j.reserve().await, vec![b"to-b2".to_vec()], to(&["b"]))
        .await
        .unwrap(); // 4
    let r = j.read_outbox(1, 1 << 20, "b").unwrap();
    assert_eq!((seqs(&r), r.next), (vec![1, 2, 4], 5));
    let r = j.read_outbox(1, 1 << 20, "c").unwrap();
    assert_eq!((seqs(&r), r.next), (vec![1, 3], 5));
    assert_eq!(j.queued("b").0, 3);
    assert_eq!(j.queued("c").0, 2);
    assert_eq!(j.queued("d").0, 2);
    // Acks are per peer, and count only what is for that peer.
    j.ack("b", 5);
    assert_eq!(j.queued("b"), (0, 0, None));
    assert_eq!(j.queued("c").0, 2);
    assert!(j.delivered(&to(&["b"]), 4));
    assert!(!j.delivered(&to(&["b", "c"]), 3));
    j.ack("c", 2);
    assert_eq!(j.queued("c").0, 1);
    // A reopen counts the same queues from the records.
    j.close().await;
    drop(j);
    let j = Journal::open(opts3(tmp.path())).unwrap();
    assert_eq!(
        (j.queued("b").0, j.queued("c").0, j.queued("d").0),
        (0, 1, 2)
    );
}

#[tokio::test]
async fn a_down_peer_holds_only_what_is_for_it_and_its_limit_is_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Options {
        outbox_limit_messages: 300,
        ..opts3(tmp.path())
    };
    let j = Journal::open(o).unwrap();
    let to = |p: &str| vec![p.to_string()];
    // d is down and nothing is for it: it holds no segment.
    for _ in 0..10 {
        j.append_outbox(j.reserve().await, vec![vec![7u8; 100]; 25], to("b"))
            .await
            .unwrap();
        j.append_outbox(j.reserve().await, vec![vec![7u8; 100]; 25], to("c"))
            .await
            .unwrap();
    }
    let before = segments(tmp.path(), "outbox");
    assert!(before > 5, "{before}");
    j.ack("b", 501);
    j.ack("c", 501);
    j.checkpoint().await.unwrap();
    assert_eq!(segments(tmp.path(), "outbox"), 1, "d holds nothing");
    // One message for d: now d holds from there on.
    assert_eq!(
        j.append_outbox(j.reserve().await, vec![b"d".to_vec()], to("d"))
            .await,
        Ok((501, 501))
    );
    for _ in 0..10 {
        j.append_outbox(j.reserve().await, vec![vec![7u8; 100]; 25], to("b"))
            .await
            .unwrap();
    }
    j.ack("b", 752);
    j.checkpoint().await.unwrap();
    let r = j.read_outbox(1, 1 << 20, "d").unwrap();
    assert_eq!(seqs(&r), [501], "d's message is kept for it");
    // d's limit fills with d's messages; b's sends go on.
    j.append_outbox(j.reserve().await, vec![vec![1]; 299], to("d"))
        .await
        .unwrap();
    let e = j
        .append_outbox(j.reserve().await, vec![vec![1]], to("d"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("outbox full for d: 300 messages"),
        "{e}"
    );
    let e = j
        .append_outbox(j.reserve().await, vec![vec![1]], vec![])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("outbox full for d"),
        "for every peer: d too"
    );
    j.append_outbox(j.reserve().await, vec![vec![1]; 200], to("b"))
        .await
        .unwrap();
}
