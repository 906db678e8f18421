//! The journal's writer thread, and recovery when the journal opens.
//!
//! The writer is a plain OS thread (fsync blocks; it must not hold up the
//! async runtime). It takes every write queued at once as one batch:
//! assigns sequence numbers, drops duplicates, appends to the logs, then
//! one commit per log (the two fsyncs run in parallel), then publishes to
//! the readers' index, answers every waiter and moves the watches. If the
//! commit fails, everything in the batch is rolled back (durably: the
//! files are cut back and synced) and every waiter gets the error: nothing
//! is half-stored and nothing is acked.
//!
//! Records from a peer are stored only in order: one that does not follow
//! what is stored from that peer (an earlier batch failed, so the stream
//! has a hole) is refused with [`JournalError::Gap`], never stored past the
//! hole. The session ends; the peer resumes from what is stored.
//!
//! Every second (and on [`Write::Checkpoint`] / [`Write::Close`]) it does
//! the housekeeping: inbox retention, the state file, and deleting
//! segments that are fully acked (outbox) or trimmed (inbox), in that
//! order, so the state file always covers what is deleted.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::log::{self, Appender, HEADER, SegUpdate};
use super::records::{self, InboxMeta};
use super::state::{self, PeerFile, StateFile};
use super::{
    Counters, JournalError, Options, PeerState, Shared, State, Write, lock, pos_of, queues,
};

/// How often the writer does its housekeeping.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Writes taken into one batch, at most.
const MAX_BATCH: usize = 4096;

pub(super) struct Writer {
    shared: Arc<Shared>,
    outbox: Appender,
    inbox: Appender,
    last_housekeeping: Instant,
    /// Set when a failed batch could not be rolled back: the logs are in an
    /// unknown state, so no more writes are taken.
    broken: Option<String>,
}

/// Outbox numbers reserved ahead of use (see `Writer::commit_logs`).
const RESERVE: u64 = 1 << 16;

/// How a batch's commit failed.
enum Failed {
    /// Nothing was published: roll both logs back.
    Before(std::io::Error),
    /// The outbox part is stored and published; the inbox part failed.
    InboxOnly(std::io::Error),
    /// Outbox records were published but could not be synced.
    Broken(std::io::Error),
}

/// What a batch owes its writers once it is committed.
enum Reply {
    Outbox(
        oneshot::Sender<Result<(u64, u64), JournalError>>,
        Result<(u64, u64), JournalError>,
    ),
    Seq(oneshot::Sender<Result<u64, JournalError>>, u64),
    /// Not stored, for a reason of its own (the rest of the batch is).
    Refused(oneshot::Sender<Result<u64, JournalError>>, JournalError),
}

/// Open the journal in `opts.dir`: lock it, read or create the state file,
/// open both logs (cutting torn tails), and replay the inbox records the
/// state file does not cover yet.
pub(super) fn recover(opts: Options) -> Result<(Arc<Shared>, Writer), JournalError> {
    let dir = opts.dir.clone();
    let err = |what: &str, e: std::io::Error| {
        JournalError::storage(format!("{what} {}", dir.display()), e)
    };
    create_private_dir(&dir).map_err(|e| err("cannot create", e))?;
    let lock_file = std::fs::File::create(dir.join("lock")).map_err(|e| err("cannot open", e))?;
    if let Err(e) = lock_file.try_lock() {
        return Err(JournalError::Storage(format!(
            "journal {} is in use by another peerd ({e}); one instance per state directory",
            dir.display()
        )));
    }
    let file = match state::load(&dir).map_err(|e| err("cannot read the state of", e))? {
        Some(f) => f,
        None => create(&dir, opts.fsync)?,
    };
    let epoch = state::unhex(&file.epoch, "epoch").map_err(|e| err("bad state in", e))?;
    let mut peers: HashMap<String, PeerState> = HashMap::new();
    let mut counters: HashMap<String, Counters> = HashMap::new();
    let mut dropped: HashMap<String, std::collections::BTreeSet<u64>> = HashMap::new();
    for (name, p) in &file.peer {
        if !p.dropped.is_empty() {
            dropped.insert(name.clone(), p.dropped.iter().copied().collect());
        }
        let recv_epoch =
            state::unhex(&p.recv_epoch, "recv_epoch").map_err(|e| err("bad state in", e))?;
        peers.insert(
            name.clone(),
            PeerState {
                acked_next: p.acked_next,
                recv_epoch,
                recv_next: p.recv_next,
            },
        );
        counters.insert(
            name.clone(),
            Counters {
                msgs_sent: p.msgs_sent,
                bytes_sent: p.bytes_sent,
                msgs_received: p.msgs_received,
                bytes_received: p.bytes_received,
                msgs_lost: p.msgs_lost,
            },
        );
    }
    // Each peer's queue, counted from the records themselves.
    let mut counting = queues::Counting::new(&opts.peers, &peers);
    let (mut outbox, mut outbox_w) = log::open(
        &dir.join("outbox"),
        1,
        opts.segment_bytes,
        opts.fsync,
        &mut |seq, data| counting.visit(seq, data),
    )
    .map_err(|e| damaged(&dir, e).unwrap_or_else(|e| err("cannot open the outbox of", e)))?;
    if file.outbox_reserved > outbox.next() {
        // Not a clean stop: numbers up to the reservation may have been
        // sent early and lost here (see `Writer::commit_logs`). Void them.
        let (from, to) = (outbox.next(), file.outbox_reserved);
        let now = peerlink::now_ms();
        for _ in from..to {
            outbox_w
                .append(|b| records::put_void(b, now))
                .map_err(|e| err("cannot write the outbox of", e))?;
        }
        outbox.apply(
            outbox_w
                .commit()
                .map_err(|e| err("cannot write the outbox of", e))?,
        );
        tracing::warn!(
            "journal {}: peerd did not stop cleanly: outbox numbers {from}..{} may have been sent \
             before the crash and are never reused",
            dir.display(),
            to - 1
        );
    }
    // The inbox records are the truth about what we received: the last
    // record kept from a peer says what we expect from it next (the state
    // file only matters for peers whose records retention has trimmed).
    // Records past the checkpoint are added to the counters.
    let checkpoint = file.inbox_checkpoint;
    let mut replayed = 0u64;
    let mut notices = 0u64;
    let mut last_from: HashMap<String, (u64, u64)> = HashMap::new();
    let (inbox, inbox_w) = log::open(
        &dir.join("inbox"),
        1,
        opts.segment_bytes,
        opts.fsync,
        &mut |seq, data| {
            let Some((m, body)) = records::get_inbox_meta(data) else {
                return;
            };
            if m.origin_epoch == 0 {
                return;
            }
            match last_from.get_mut(m.origin) {
                Some(last) => *last = (m.origin_epoch, m.origin_seq.saturating_add(1)),
                None => {
                    last_from.insert(
                        m.origin.to_string(),
                        (m.origin_epoch, m.origin_seq.saturating_add(1)),
                    );
                }
            }
            if m.lost {
                notices += 1;
            }
            if seq >= checkpoint {
                replayed += 1;
                let c = counters.entry(m.origin.to_string()).or_default();
                if m.lost {
                    // A notice: a loss counts, a skip does not.
                    c.msgs_lost += records::lost_range(&m, body).map_or(0, |(_, n)| n);
                } else {
                    c.msgs_received += 1;
                    c.bytes_received += body.len() as u64;
                }
            }
        },
    )
    .map_err(|e| damaged(&dir, e).unwrap_or_else(|e| err("cannot open the inbox of", e)))?;
    if notices > 0 {
        tracing::warn!(
            "journal {}: the inbox holds {notices} loss notices (messages peers reported \
             lost; see README \"Durability\")",
            dir.display()
        );
    }
    for (origin, (epoch, next)) in last_from {
        let p = peers.entry(origin).or_default();
        p.recv_epoch = epoch;
        p.recv_next = next;
    }
    for name in &opts.peers {
        peers.entry(name.clone()).or_default();
    }
    let (mut epoch, old_epoch) = (epoch, epoch);
    if let Some((name, p)) = peers.iter().find(|(_, p)| p.acked_next > outbox.next()) {
        // Records a peer acknowledged are gone (a disk that lost synced
        // data, or a copied-back journal): their numbers would be reused,
        // and the peer would drop the new messages as duplicates. A new
        // epoch makes every peer start over with us instead.
        epoch = new_epoch();
        tracing::error!(
            "journal {}: peer {name} acked up to {} but the outbox ends at {}; \
             starting a new epoch {epoch:016x}",
            dir.display(),
            p.acked_next,
            outbox.next()
        );
    }
    let addressed = counting.addressed;
    let mut queues = counting.finish(&peers);
    for (name, p) in peers.iter_mut() {
        p.acked_next = p.acked_next.max(outbox.first()).min(outbox.next());
        if let Some(q) = queues.get_mut(name) {
            q.counted_to = q.counted_to.max(outbox.first()).min(p.acked_next);
        }
    }
    let floor = queues::floor(&opts.peers, &peers, &queues, outbox.next());
    let inbox_first = file.inbox_first.max(inbox.first()).min(inbox.next());
    tracing::info!(
        "journal {}: epoch {epoch:016x}, outbox {}..{}, inbox {}..{} ({replayed} records replayed)",
        dir.display(),
        outbox.first(),
        outbox.next(),
        inbox_first,
        inbox.next()
    );
    let state = State {
        outbox,
        inbox,
        inbox_first,
        inbox_first_pos: 0,
        floor,
        members: opts.peers.clone(),
        limits: super::Limits::of(&opts),
        queues,
        addressed,
        outbox_reserved: file.outbox_reserved,
        storage_error: None,
        stats: super::Stats::default(),
        lost_told: HashMap::new(),
        dropped,
        peers,
        counters,
        dirty: true,
    };
    let shared = Arc::new(Shared {
        outbox_next: watch::Sender::new(state.outbox.next()),
        inbox_next: watch::Sender::new(state.inbox.next()),
        acks: watch::Sender::new(0),
        state: Mutex::new(state),
        epoch,
        opts,
        lock_file,
    });
    let first_pos =
        pos_of(&shared, |st| &st.inbox, inbox_first).map_err(|e| err("cannot read", e))?;
    {
        let mut st = lock(&shared);
        st.inbox_first_pos = first_pos;
        if epoch != old_epoch {
            let file = snapshot(&st, epoch);
            state::save(&dir, &file, shared.opts.fsync).map_err(|e| err("cannot write", e))?;
        }
    }
    let writer = Writer {
        shared: shared.clone(),
        outbox: outbox_w,
        inbox: inbox_w,
        last_housekeeping: Instant::now(),
        broken: None,
    };
    Ok((shared, writer))
}

/// A log that would not open because it is damaged (not a torn write):
/// say so, and what to do. Other errors are passed back.
fn damaged(dir: &Path, e: std::io::Error) -> Result<JournalError, std::io::Error> {
    if e.kind() != std::io::ErrorKind::InvalidData {
        return Err(e);
    }
    Ok(JournalError::Corrupt(format!(
        "the journal is damaged: {e}. Nothing was changed. `peerd journal verify {i}` shows \
         the damage and `peerd journal repair {i}` drops the damaged records, saying which (see \
         README \"Durability\")",
        i = opts_instance(dir)
    )))
}

/// The instance a journal directory belongs to, for the hint in an error:
/// `<state dir>/journal`, and the state dir is named after the instance
/// unless `--state-dir` chose another name.
fn opts_instance(dir: &Path) -> String {
    dir.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| peerlink::valid_instance_name(n))
        .unwrap_or_else(|| "<instance>".into())
}

/// A new journal: a fresh epoch, written down before any record exists.
/// Records (messages and loss notices) a batch of writes stores, for the
/// batch-size histogram.
fn records_in(writes: &[Write]) -> u64 {
    writes
        .iter()
        .map(|w| match w {
            Write::Outbox { bodies, .. } => bodies.len() as u64,
            Write::Inbox { records, .. } => records.len() as u64,
            Write::Local { .. } | Write::Lost { .. } => 1,
            Write::Checkpoint { .. } | Write::Close { .. } => 0,
        })
        .sum()
}

fn create(dir: &Path, fsync: bool) -> Result<StateFile, JournalError> {
    for sub in ["outbox", "inbox"] {
        let has_segments = std::fs::read_dir(dir.join(sub))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .unwrap_or(false);
        if has_segments {
            return Err(JournalError::Storage(format!(
                "{} has {sub} segments but no state.toml: the journal is damaged; \
                 move the directory aside to start a new journal (a new epoch)",
                dir.display()
            )));
        }
    }
    let epoch = new_epoch();
    let file = StateFile {
        version: state::VERSION,
        epoch: state::hex(epoch),
        inbox_checkpoint: 1,
        inbox_first: 1,
        outbox_reserved: 0,
        peer: Default::default(),
    };
    state::save(dir, &file, fsync).map_err(|e| JournalError::storage(dir.display(), e))?;
    tracing::info!("journal {}: created, epoch {epoch:016x}", dir.display());
    Ok(file)
}

/// A random non-zero epoch (0 means "none" in a Hello).
fn new_epoch() -> u64 {
    loop {
        let e: u64 = rand::random();
        if e != 0 {
            return e;
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

impl Writer {
    pub(super) fn run(mut self, rx: Receiver<(Write, Option<super::Slot>)>) {
        let mut batch = Vec::new();
        loop {
            match rx.recv_timeout(HOUSEKEEPING) {
                Ok((w, _slot)) => batch.push(w), // the slot is free again
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok((w, _slot)) => batch.push(w), // the slot is free again
                    Err(_) => break,
                }
            }
            let mut checkpoints = Vec::new();
            let mut closing = Vec::new();
            let writes: Vec<Write> = batch
                .drain(..)
                .filter_map(|w| match w {
                    Write::Checkpoint { reply } => {
                        checkpoints.push(reply);
                        None
                    }
                    Write::Close { reply } => {
                        closing.push(reply);
                        None
                    }
                    w => Some(w),
                })
                .collect();
            if !writes.is_empty() {
                self.commit(writes);
            }
            if !closing.is_empty() {
                self.stop_cleanly();
            }
            let asked = !checkpoints.is_empty() || !closing.is_empty();
            if asked || self.last_housekeeping.elapsed() >= HOUSEKEEPING {
                let r = self.housekeeping(asked);
                for reply in checkpoints {
                    let _ = reply.send(r.clone());
                }
            }
            if !closing.is_empty() {
                // Let a new journal open the directory at once, even while
                // handles to this one are still being dropped.
                let _ = self.shared.lock_file.unlock();
                tracing::info!("journal closed");
                for reply in closing {
                    let _ = reply.send(());
                }
                return;
            }
        }
        self.stop_cleanly();
        let _ = self.housekeeping(true);
    }

    /// A clean stop: every published record is synced, so the reservation
    /// ends where the outbox does and the next start voids nothing.
    fn stop_cleanly(&mut self) {
        let mut st = lock(&self.shared);
        st.outbox_reserved = self.outbox.next();
        st.dirty = true;
    }

    /// Store one batch, then answer everyone in it.
    fn commit(&mut self, writes: Vec<Write>) {
        if let Some(why) = &self.broken {
            let e = JournalError::Storage(why.clone());
            for w in writes {
                fail(w, &e);
            }
            return;
        }
        // The queues as last counted: a count not settled since acks came
        // is too high, never too low, so it is settled (which may read the
        // disk) only when a limit seems reached, off the common path.
        let (members, limits, mut qs, mut recv) = {
            let st = lock(&self.shared);
            (
                st.members.clone(),
                st.limits,
                st.queues.clone(),
                st.peers.clone(),
            )
        };
        let mut qs0 = qs.clone();
        let mut addressed = false;
        let mut received: HashMap<String, (u64, u64)> = HashMap::new();
        let mut lost: Vec<(String, u64)> = Vec::new();
        let mut replies = Vec::with_capacity(writes.len());
        let mut failed: Option<std::io::Error> = None;
        let mut skipped = Vec::new();
        let now = peerlink::now_ms();
        let records = records_in(&writes);
        for w in writes {
            if failed.is_some() {
                skipped.push(w);
                continue;
            }
            match w {
                Write::Outbox { bodies, to, reply } => {
                    let dests: Vec<String> = if to.is_empty() {
                        members.clone()
                    } else {
                        to.iter().filter(|p| members.contains(p)).cloned().collect()
                    };
                    let n = bodies.len() as u64;
                    let to_len: usize = if to.is_empty() {
                        0
                    } else {
                        1 + to.iter().map(|p| 1 + p.len()).sum::<usize>()
                    };
                    let bytes: u64 = bodies
                        .iter()
                        .map(|b| queues::disk_bytes(8 + to_len + b.len()))
                        .sum();
                    let over = |q: queues::PeerQueue| {
                        q.msgs + n > limits.outbox_messages || q.bytes + bytes > limits.outbox_bytes
                    };
                    let mut full = None;
                    for p in &dests {
                        if !over(qs.get(p).copied().unwrap_or_default()) {
                            continue;
                        }
                        // Settle, keeping what this batch added.
                        if let Err(e) = queues::settle(&self.shared, p) {
                            tracing::warn!("journal: counting {p}'s queue: {e}");
                        }
                        let settled = lock(&self.shared).queues.get(p).copied();
                        if let Some(settled) = settled {
                            let before = qs0.get(p).copied().unwrap_or_default();
                            let q = qs.entry(p.clone()).or_default();
                            q.msgs = settled.msgs + (q.msgs - before.msgs);
                            q.bytes = settled.bytes + (q.bytes - before.bytes);
                            q.counted_to = settled.counted_to;
                            q.pending_from = if q.msgs == settled.msgs {
                                settled.pending_from // nothing of this batch yet
                            } else {
                                q.pending_from.or(settled.pending_from)
                            };
                            q.full_warned = settled.full_warned;
                            qs0.insert(p.clone(), settled);
                        }
                        let q = qs.get(p).copied().unwrap_or_default();
                        if over(q) {
                            full = Some((p.clone(), q));
                            break;
                        }
                    }
                    if let Some((peer, q)) = full {
                        let e = self.outbox_full(&peer, q);
                        replies.push(Reply::Outbox(reply, Err(e)));
                        continue;
                    }
                    let first = self.outbox.next();
                    for body in &bodies {
                        if let Err(e) = self
                            .outbox
                            .append(|b| records::put_outbox(b, now, &to, body))
                        {
                            failed = Some(e);
                            break;
                        }
                    }
                    addressed |= !to.is_empty();
                    for p in &dests {
                        let q = qs.entry(p.clone()).or_default();
                        if q.msgs == 0 {
                            q.pending_from = Some(first);
                        }
                        q.msgs += n;
                        q.bytes += bytes;
                    }
                    let last = self.outbox.next() - 1;
                    replies.push(Reply::Outbox(reply, Ok((first, last))));
                }
                Write::Inbox {
                    origin,
                    epoch,
                    from,
                    next,
                    records,
                    reply,
                } => {
                    let p = recv.entry(origin.clone()).or_default();
                    if let Err(e) = follow(p, &origin, epoch, from) {
                        replies.push(Reply::Refused(reply, e));
                        continue;
                    }
                    let counted = received.entry(origin.clone()).or_default();
                    let mut stored_to = p.recv_next;
                    let mut bad = None;
                    for r in &records {
                        if r.seq < p.recv_next {
                            continue; // a resend of something we already have
                        }
                        if r.seq >= next {
                            bad = Some(format!(
                                "record {} outside the batch's {from}..{next}",
                                r.seq
                            ));
                            break;
                        }
                        let meta = InboxMeta {
                            received_ms: now,
                            sent_ms: r.sent_ms,
                            origin_epoch: epoch,
                            origin_seq: r.seq,
                            origin: &origin,
                            lost: false,
                        };
                        if let Err(e) = self.inbox.append(|b| records::put_inbox(b, &meta, &r.body))
                        {
                            failed = Some(e);
                            break;
                        }
                        // (Records in between are for other peers.)
                        p.recv_next = r.seq.saturating_add(1); // a hostile u64::MAX must not overflow
                        stored_to = p.recv_next;
                        counted.0 += 1;
                        counted.1 += r.body.len() as u64;
                    }
                    if let Some(why) = bad {
                        replies.push(Reply::Refused(reply, JournalError::Storage(why)));
                        continue;
                    }
                    if failed.is_none() && next > stored_to {
                        // The batch ends with records for other peers: a
                        // skip notice moves "next expected" past them in
                        // the same durable write.
                        let meta = InboxMeta {
                            received_ms: now,
                            sent_ms: now,
                            origin_epoch: epoch,
                            origin_seq: next - 1,
                            origin: &origin,
                            lost: true,
                        };
                        if let Err(e) = self
                            .inbox
                            .append(|b| records::put_skip(b, &meta, stored_to))
                        {
                            failed = Some(e);
                        } else {
                            p.recv_next = next;
                        }
                    }
                    replies.push(Reply::Seq(reply, p.recv_next));
                }
                Write::Lost {
                    origin,
                    epoch,
                    from,
                    next,
                    reply,
                } => {
                    let p = recv.entry(origin.clone()).or_default();
                    if let Err(e) = follow(p, &origin, epoch, from) {
                        replies.push(Reply::Refused(reply, e));
                        continue;
                    }
                    if next <= p.recv_next {
                        replies.push(Reply::Seq(reply, p.recv_next)); // told already
                        continue;
                    }
                    let first = p.recv_next;
                    let meta = InboxMeta {
                        received_ms: now,
                        sent_ms: now,
                        origin_epoch: epoch,
                        origin_seq: next - 1,
                        origin: &origin,
                        lost: true,
                    };
                    if let Err(e) = self.inbox.append(|b| records::put_lost(b, &meta, first)) {
                        failed = Some(e);
                        replies.push(Reply::Seq(reply, 0)); // answered with the error
                        continue;
                    }
                    tracing::error!(
                        peer = %origin,
                        "messages {first}..{} of {origin} (epoch {epoch:016x}) are lost: {origin} \
                         says they will never come (dropped or damaged there, or our inbox went \
                         back in time; see its log); these {} messages are not delivered",
                        next - 1,
                        next - first
                    );
                    p.recv_next = next;
                    lost.push((origin, next - first));
                    replies.push(Reply::Seq(reply, p.recv_next));
                }
                Write::Local {
                    origin,
                    body,
                    reply,
                } => {
                    let meta = InboxMeta {
                        received_ms: now,
                        sent_ms: now,
                        origin_epoch: 0,
                        origin_seq: 0,
                        origin: &origin,
                        lost: false,
                    };
                    match self.inbox.append(|b| records::put_inbox(b, &meta, &body)) {
                        Ok(seq) => replies.push(Reply::Seq(reply, seq)),
                        Err(e) => {
                            failed = Some(e);
                            replies.push(Reply::Seq(reply, 0)); // answered with the error
                        }
                    }
                }
                Write::Checkpoint { .. } | Write::Close { .. } => {}
            }
        }
        let started = Instant::now();
        let committed = match failed {
            Some(e) => Err(Failed::Before(e)),
            None => self.commit_logs(),
        };
        let took = started.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
        let inbox_updates = match committed {
            Ok(u) => u,
            Err(Failed::InboxOnly(e)) => {
                // The outbox part is stored (and may be on its way to the
                // peers); the inbox part is rolled back.
                tracing::error!("journal: inbox write failed, those records not stored: {e}");
                self.record_failure(&e, now);
                {
                    let mut st = lock(&self.shared);
                    st.addressed |= addressed;
                    for (name, q) in qs {
                        if st.members.contains(&name) {
                            st.queues.insert(name, q);
                        }
                    }
                }
                let undone = self.inbox.rollback();
                self.undone(undone);
                answer_failed(
                    skipped,
                    replies,
                    &JournalError::storage("write failed", e),
                    true,
                );
                return;
            }
            Err(Failed::Broken(e)) => {
                let why = format!(
                    "the journal could not sync written outbox records ({e}); they may have \
                     been sent already, so their numbers are never reused: restart peerd"
                );
                tracing::error!("{why}");
                self.record_failure(&e, now);
                let _ = self.inbox.rollback();
                self.broken = Some(why.clone());
                answer_failed(skipped, replies, &JournalError::Storage(why), false);
                return;
            }
            Err(Failed::Before(e)) => {
                if lock(&self.shared).storage_error.is_none() {
                    tracing::error!("journal: write failed, batch not stored: {e}");
                } else {
                    tracing::debug!("journal: write failed again, batch not stored: {e}");
                }
                self.record_failure(&e, now);
                let undone = self.outbox.rollback().and(self.inbox.rollback());
                self.undone(undone);
                answer_failed(
                    skipped,
                    replies,
                    &JournalError::storage("write failed", e),
                    false,
                );
                return;
            }
        };
        let (o, i) = {
            let mut st = lock(&self.shared);
            st.inbox.apply(inbox_updates);
            st.stats.commit_us.observe(took);
            st.stats.batch_records.observe(records);
            st.addressed |= addressed;
            for (name, q) in qs {
                if st.members.contains(&name) {
                    st.queues.insert(name, q);
                }
            }
            if let Some((e, _)) = st.storage_error.take() {
                tracing::info!("journal: writing works again (after: {e})");
            }
            for (name, n) in lost {
                st.counters.entry(name).or_default().msgs_lost += n;
                st.dirty = true;
            }
            for (name, r) in recv {
                let p = st.peers.entry(name).or_default();
                p.recv_epoch = r.recv_epoch;
                p.recv_next = r.recv_next;
            }
            for (name, (n, b)) in received {
                let c = st.counters.entry(name).or_default();
                c.msgs_received += n;
                c.bytes_received += b;
                st.dirty = true;
            }
            (st.outbox.next(), st.inbox.next())
        };
        self.shared
            .outbox_next
            .send_if_modified(|v| std::mem::replace(v, o) != o);
        self.shared
            .inbox_next
            .send_if_modified(|v| std::mem::replace(v, i) != i);
        for r in replies {
            match r {
                Reply::Outbox(tx, r) => {
                    let _ = tx.send(r);
                }
                Reply::Seq(tx, v) => {
                    let _ = tx.send(Ok(v));
                }
                Reply::Refused(tx, e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
    }

    /// Show a failed write in `status` until one works again.
    fn record_failure(&self, e: &std::io::Error, now: u64) {
        let mut st = lock(&self.shared);
        st.storage_error = Some((e.to_string(), now));
        st.stats.storage_errors += 1;
    }

    /// After a rollback: if it failed, the logs are in an unknown state and
    /// no more writes are taken.
    fn undone(&mut self, rollback: std::io::Result<()>) {
        if let Err(r) = rollback {
            let why = format!("the journal could not undo a failed write ({r}); restart peerd");
            tracing::error!("{why}");
            self.broken = Some(why);
        }
    }

    /// Commit both logs. The outbox's records are **sent early**: they are
    /// written, then published to the readers (the peer sessions may send
    /// them) while the two fsyncs run in parallel; only then is anyone told
    /// "stored" (`send`) or acked (the inbox). So a message waits for one
    /// fsync in series (the receiver's), not two.
    ///
    /// Why that keeps exactly-once: a record the peer stored may still be
    /// lost here by a power loss before our fsync. Its number must never
    /// go to another message (the peer would drop that one as a resend).
    /// So numbers are *reserved* in the state file ahead of use
    /// ([`RESERVE`] at a time, durably, before any record past the old
    /// reservation is published); after a shutdown that was not clean, the
    /// journal voids every number up to the reservation that its outbox no
    /// longer holds (see `recover`) and goes on past it. The client was
    /// never told such a record was stored; the peer may have it once.
    fn commit_logs(&mut self) -> Result<Vec<SegUpdate>, Failed> {
        if self.outbox.next() > lock(&self.shared).outbox_reserved {
            let reserved = self.outbox.next() + RESERVE;
            let file = {
                let mut st = lock(&self.shared);
                st.outbox_reserved = reserved;
                snapshot(&st, self.shared.epoch)
            };
            state::save(&self.shared.opts.dir, &file, self.shared.opts.fsync)
                .map_err(Failed::Before)?;
        }
        let out = self.outbox.write_out().map_err(Failed::Before)?;
        if !out.is_empty() {
            let o = {
                let mut st = lock(&self.shared);
                st.outbox.apply(out);
                st.outbox.next()
            };
            self.shared
                .outbox_next
                .send_if_modified(|v| std::mem::replace(v, o) != o);
        }
        let (outbox, inbox) = (&mut self.outbox, &mut self.inbox);
        let (o, i) = if inbox.pending_bytes() > 0 {
            std::thread::scope(|s| {
                let other = s.spawn(|| inbox.commit());
                let o = outbox.sync();
                let i = other
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("inbox commit panicked")));
                (o, i)
            })
        } else {
            (outbox.sync(), inbox.commit())
        };
        o.map_err(Failed::Broken)?;
        i.map_err(Failed::InboxOnly)
    }

    /// The error for a send that `peer`'s queue has no room for; logged
    /// once per time the queue fills (loud, not a storm).
    fn outbox_full(&self, peer: &str, q: queues::PeerQueue) -> JournalError {
        let from = {
            let st = lock(&self.shared);
            let acked = st.peers.get(peer).map(|p| p.acked_next).unwrap_or(0);
            acked.max(q.pending_from.unwrap_or(0))
        };
        let since = match queues::oldest(&self.shared, peer, from).ok().flatten() {
            Some(ms) => {
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string()
            }
            None => "now".into(),
        };
        let limits = lock(&self.shared).limits;
        let e = JournalError::OutboxFull {
            peer: peer.to_string(),
            queued_msgs: q.msgs,
            queued_bytes: q.bytes,
            since,
            limit: format!(
                "{} messages / {} bytes",
                limits.outbox_messages, limits.outbox_bytes
            ),
        };
        let mut st = lock(&self.shared);
        if let Some(q) = st.queues.get_mut(peer)
            && !q.full_warned
        {
            q.full_warned = true;
            tracing::warn!(peer = %peer, "{e}; sends to {peer} are refused until it catches up");
        }
        e
    }

    /// Settle every peer's queue (see `queues`) and move the floor.
    fn settle_all(&mut self) {
        let members = lock(&self.shared).members.clone();
        for p in &members {
            if let Err(e) = queues::settle(&self.shared, p) {
                tracing::warn!("journal: counting {p}'s queue: {e}");
            }
        }
        let mut st = lock(&self.shared);
        let floor = queues::floor(&st.members, &st.peers, &st.queues, st.outbox.next());
        st.floor = st.floor.max(floor);
    }

    /// Retention, the state file, then deleting what nobody needs.
    fn housekeeping(&mut self, force: bool) -> Result<(), JournalError> {
        self.last_housekeeping = Instant::now();
        self.settle_all();
        if let Err(e) = self.trim_inbox() {
            tracing::warn!("journal: inbox retention: {e}");
        }
        let (file, deletable) = {
            let mut st = lock(&self.shared);
            let deletable =
                st.outbox.removable_below(st.floor) || st.inbox.removable_below(st.inbox_first);
            if !(st.dirty || deletable || force) {
                return Ok(());
            }
            st.dirty = false;
            (snapshot(&st, self.shared.epoch), deletable)
        };
        let dir = &self.shared.opts.dir;
        if let Err(e) = state::save(dir, &file, self.shared.opts.fsync) {
            let mut st = lock(&self.shared);
            st.dirty = true;
            // Once, not every second while the disk stays full.
            if st.storage_error.is_none() {
                tracing::warn!("journal: cannot write {}/state.toml: {e}", dir.display());
            }
            st.storage_error = Some((format!("writing state.toml: {e}"), peerlink::now_ms()));
            st.stats.storage_errors += 1;
            return Err(JournalError::storage("writing the state file", e));
        }
        if deletable {
            let gone = {
                let mut st = lock(&self.shared);
                let (floor, first) = (st.floor, st.inbox_first);
                let mut gone = st.outbox.remove_below(floor);
                gone.extend(st.inbox.remove_below(first));
                gone
            };
            for path in &gone {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!("journal: cannot delete {}: {e}", path.display());
                }
            }
            tracing::debug!("journal: deleted {} segments", gone.len());
        }
        Ok(())
    }

    /// Move `inbox_first` past what retention (age, bytes) no longer keeps.
    fn trim_inbox(&mut self) -> Result<(), JournalError> {
        let limits = lock(&self.shared).limits;
        let cutoff = limits
            .retention_age
            .map(|a| peerlink::now_ms().saturating_sub(a.as_millis() as u64));
        loop {
            let (first, first_pos, end, span) = {
                let st = lock(&self.shared);
                let first = st.inbox_first;
                (
                    first,
                    st.inbox_first_pos,
                    st.inbox.end_pos(),
                    st.inbox.span(first),
                )
            };
            let too_big = end.saturating_sub(first_pos) > limits.retention_bytes;
            let Some(span) = span.filter(|_| too_big || cutoff.is_some()) else {
                return Ok(());
            };
            // Only the oldest records can be too old: look at a few unless
            // the size alone already trims.
            let n = if too_big { 4096 } else { 64 };
            let recs = span
                .read(first, n, 1 << 20)
                .map_err(|e| JournalError::storage("reading the inbox", e))?;
            let (mut new_first, mut new_pos, mut done) = (first, first_pos, recs.is_empty());
            for r in &recs {
                let received = records::get_inbox_meta(&r.data).map(|(m, _)| m.received_ms);
                let too_big = end.saturating_sub(r.pos) > limits.retention_bytes;
                let too_old = matches!((cutoff, received), (Some(c), Some(t)) if t < c);
                if !(too_big || too_old) {
                    done = true;
                    break;
                }
                new_first = r.seq + 1;
                new_pos = r.pos + HEADER + 8 + r.data.len() as u64;
            }
            if new_first != first {
                let mut st = lock(&self.shared);
                st.inbox_first = new_first;
                st.inbox_first_pos = new_pos;
                st.dirty = true;
            }
            if done {
                return Ok(());
            }
        }
    }
}

/// The state file for what is committed now (call with the lock held, from
/// the writer thread between batches, so the receive state matches the
/// inbox records below `inbox_checkpoint` exactly).
fn snapshot(st: &State, epoch: u64) -> StateFile {
    let mut peer = std::collections::BTreeMap::new();
    for (name, p) in &st.peers {
        let c = st.counters.get(name).copied().unwrap_or_default();
        peer.insert(
            name.clone(),
            PeerFile {
                acked_next: p.acked_next,
                recv_epoch: state::hex(p.recv_epoch),
                recv_next: p.recv_next,
                msgs_sent: c.msgs_sent,
                bytes_sent: c.bytes_sent,
                msgs_received: c.msgs_received,
                bytes_received: c.bytes_received,
                msgs_lost: c.msgs_lost,
                dropped: st
                    .dropped
                    .get(name)
                    .map(|d| d.iter().copied().collect())
                    .unwrap_or_default(),
            },
        );
    }
    StateFile {
        version: state::VERSION,
        epoch: state::hex(epoch),
        inbox_checkpoint: st.inbox.next(),
        inbox_first: st.inbox_first,
        outbox_reserved: st.outbox_reserved,
        peer,
    }
}

/// A peer's stretch of records (or loss) from `from` of its `epoch`: take
/// a new epoch (its journal was reset: start over where it starts), and
/// refuse a stretch that does not start where we are. Never store past a
/// hole: what is missing was never stored here, so nothing may be acked
/// beyond it; the peer resends from `recv_next`.
fn follow(p: &mut PeerState, origin: &str, epoch: u64, from: u64) -> Result<(), JournalError> {
    if p.recv_epoch != epoch {
        if p.recv_epoch != 0 {
            tracing::warn!(
                peer = %origin,
                old_epoch = format_args!("{:016x}", p.recv_epoch),
                new_epoch = format_args!("{epoch:016x}"),
                "peer started a new journal epoch (its journal was reset); \
                 starting over from its seq {from}"
            );
        }
        p.recv_epoch = epoch;
        p.recv_next = from;
    }
    if from > p.recv_next {
        return Err(JournalError::Gap {
            expected: p.recv_next,
            got: from,
        });
    }
    Ok(())
}

/// Answer a batch whose commit failed with `e`: everything in it, except
/// (with `outbox_stored`) the outbox appends, which are stored, and refusals
/// decided before the commit, which keep their own answer.
fn answer_failed(skipped: Vec<Write>, replies: Vec<Reply>, e: &JournalError, outbox_stored: bool) {
    for w in skipped {
        fail(w, e);
    }
    for r in replies {
        match r {
            Reply::Outbox(tx, r @ Err(_)) => {
                let _ = tx.send(r);
            }
            Reply::Outbox(tx, r) if outbox_stored => {
                let _ = tx.send(r);
            }
            Reply::Outbox(tx, _) => {
                let _ = tx.send(Err(e.clone()));
            }
            Reply::Seq(tx, _) | Reply::Refused(tx, _) => {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

/// Answer a write that was not stored.
fn fail(w: Write, e: &JournalError) {
    match w {
        Write::Outbox { reply, .. } => {
            let _ = reply.send(Err(e.clone()));
        }
        Write::Inbox { reply, .. } | Write::Local { reply, .. } | Write::Lost { reply, .. } => {
            let _ = reply.send(Err(e.clone()));
        }
        Write::Checkpoint { reply } => {
            let _ = reply.send(Err(e.clone()));
        }
        Write::Close { reply } => {
            let _ = reply.send(());
        }
    }
}
