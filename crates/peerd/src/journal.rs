//! The journal: the one place messages are stored, and the only writer of
//! them. Sources (`peerctl send`, peer sessions, plain clients) append;
//! sinks (peer sessions sending, `tail`) read from a sequence number and
//! wait on a watch for more. Nothing else touches the data.
//!
//! - **outbox**: messages accepted for the peers, numbered 1, 2, ... within
//!   this journal's epoch; kept until every peer has acknowledged them.
//! - **inbox**: messages received, numbered in arrival order (what `tail
//!   --from` takes), with origin, the origin's epoch and sequence number,
//!   and times.
//! - **per-peer state**: how far each peer has acked our outbox, and which
//!   epoch and sequence we expect next from it. An inbox record carries its
//!   origin's epoch and seq, so storing it *is* moving "next expected": one
//!   atomic write, which is what makes delivery exactly-once. A resend of
//!   something already stored is dropped, and an ack is only sent for what
//!   is stored.
//! - **epoch**: random, made once when the journal is created. A journal
//!   that is wiped starts a new epoch, which tells receivers to start over.
//!
//! # On disk (in the instance's state directory)
//!
//! ```text
//! journal/lock         held while a peerd has the journal open
//! journal/state.toml   epoch, per-peer state, counters (see `state`)
//! journal/outbox/*.log segments of outbox records (see `log`, `records`)
//! journal/inbox/*.log  segments of inbox records
//! ```
//!
//! All appends go through one writer thread (`writer`), which takes every
//! write queued at that moment as one batch (group commit): one write and
//! one fsync per log per batch, then every waiter is answered and the
//! watches move. Nobody hears "stored" before the fsync (`fsync = batch`).
//! Outbox segments are deleted once every peer has acked them; inbox
//! segments once retention has trimmed past them. Memory stays small
//! whatever the backlog: records live on disk, RAM holds a sparse index.
//!
//! Sizes (`outbox_limit`, `inbox_retention`, queued bytes) count bytes on
//! disk: the body plus the record's framing and fields.

pub mod cursor;
mod log;
mod queues;
mod records;
pub mod repair;
mod state;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use peerlink::control::{Entry, Histogram, JournalStatus};

pub use self::cursor::{Cursor, Log};
use self::log::LogIndex;
use crate::wire::Record;

/// Default size at which a segment is sealed and a new one started.
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Why a journal operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error(
        "outbox full for {peer}: {queued_msgs} messages ({queued_bytes} bytes) queued for {peer} \
         since {since}; limit is {limit} per peer"
    )]
    OutboxFull {
        peer: String,
        queued_msgs: u64,
        queued_bytes: u64,
        since: String,
        limit: String,
    },
    #[error("the journal is closed (daemon shutting down)")]
    Closed,
    #[error("journal storage: {0}")]
    Storage(String),
    /// Opening found damage that is not a torn write.
    #[error("{0}")]
    Corrupt(String),
    /// Records from a peer that do not follow what is stored: never stored
    /// (an earlier write failed; the peer resends from what we have).
    #[error("records from the peer skip ahead: expected seq {expected}, got {got}; not stored")]
    Gap { expected: u64, got: u64 },
}

impl JournalError {
    fn storage(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        JournalError::Storage(format!("{context}: {e}"))
    }
}

/// What the journal is opened with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The journal's directory (`<state dir>/journal`); created if missing.
    pub dir: PathBuf,
    /// Names of the peers whose acks trim the outbox.
    pub peers: Vec<String>,
    pub outbox_limit_bytes: u64,
    pub outbox_limit_messages: u64,
    pub inbox_retention_bytes: u64,
    pub inbox_retention_age: Option<Duration>,
    /// Sync every batch before answering (`fsync = batch`), or never.
    pub fsync: bool,
    /// Seal a segment at this size ([`SEGMENT_BYTES`]).
    pub segment_bytes: u64,
}

/// The limits a reload may change: each peer's `outbox_limit`, and
/// `inbox_retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub outbox_bytes: u64,
    pub outbox_messages: u64,
    pub retention_bytes: u64,
    pub retention_age: Option<Duration>,
}

impl Limits {
    fn of(opts: &Options) -> Limits {
        Limits {
            outbox_bytes: opts.outbox_limit_bytes,
            outbox_messages: opts.outbox_limit_messages,
            retention_bytes: opts.inbox_retention_bytes,
            retention_age: opts.inbox_retention_age,
        }
    }
}

/// A cheap handle to the journal; clone it freely.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    writes: std_mpsc::Sender<(Write, Option<Slot>)>,
    /// Places in the writer's queue: every write takes one before it is
    /// queued (awaiting it is the back-pressure) and gives it back when the
    /// writer takes the write, so the queue between the async side and the
    /// writer thread is bounded.
    slots: Arc<tokio::sync::Semaphore>,
}

/// Writes queued for the writer thread at once, at most.
const WRITE_SLOTS: usize = 1024;

/// A place in the writer's queue ([`Journal::reserve`]). Taking it is
/// where a writer waits when the journal is behind; using it queues the
/// write at once, so writes keep the order of the calls.
pub struct Slot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

struct Shared {
    state: Mutex<State>,
    epoch: u64,
    opts: Options,
    /// Next outbox sequence number: everything below is readable.
    outbox_next: watch::Sender<u64>,
    /// Next inbox sequence number: everything below is readable.
    inbox_next: watch::Sender<u64>,
    /// Bumped whenever a peer acknowledges something (`send --wait`).
    acks: watch::Sender<u64>,
    /// Held (locked) while the journal is open.
    lock_file: File,
}

/// What readers see, under the lock. Only the writer thread appends and
/// trims; `ack` moves the acked positions.
struct State {
    outbox: LogIndex,
    inbox: LogIndex,
    /// The oldest inbox record retention has not trimmed (segments are
    /// deleted whole, so older ones may still be on disk).
    inbox_first: u64,
    /// Its position in the inbox's byte stream.
    inbox_first_pos: u64,
    /// No peer needs an outbox record below this (segments below it are
    /// deleted); see `queues`.
    floor: u64,
    /// The configured peers (changed by a reload).
    members: Vec<String>,
    /// `outbox_limit` and `inbox_retention` (changed by a reload).
    limits: Limits,
    /// Each peer's queue (see `queues`).
    queues: HashMap<String, queues::PeerQueue>,
    /// The outbox holds (or held since it opened) addressed records, so
    /// counting a queue means reading records back.
    addressed: bool,
    /// Outbox numbers below this may have been published (sent) and are
    /// never given to another message (see `writer::Writer::commit_logs`).
    outbox_reserved: u64,
    /// The last write that failed (and when), until a write succeeds.
    storage_error: Option<(String, u64)>,
    /// What the writer measured since start (for status and metrics).
    stats: Stats,
    /// Per peer: our records below this were reported lost to it.
    lost_told: HashMap<String, u64>,
    /// Per peer: queued records the operator dropped (`peerctl drop`),
    /// until the peer acknowledges past them.
    dropped: HashMap<String, std::collections::BTreeSet<u64>>,
    peers: HashMap<String, PeerState>,
    counters: HashMap<String, Counters>,
    /// Something the state file records has changed since it was written.
    dirty: bool,
}

/// What the journal knows about one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerState {
    /// Every outbox record below this is in the peer's inbox.
    pub acked_next: u64,
    /// The peer's epoch we last received from (0: none yet).
    pub recv_epoch: u64,
    /// The next sequence number of `recv_epoch` we expect.
    pub recv_next: u64,
}

/// Traffic counters of one peer, kept across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages (and body bytes) put on the wire to the peer, resends
    /// included.
    pub msgs_sent: u64,
    pub bytes_sent: u64,
    /// Messages (and body bytes) from the peer stored in the inbox,
    /// duplicates not counted.
    pub msgs_received: u64,
    pub bytes_received: u64,
    /// Messages known lost between us and the peer, either way.
    pub msgs_lost: u64,
}

/// The writer's measurements since start.
struct Stats {
    commit_us: Histogram,
    batch_records: Histogram,
    storage_errors: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            // 50 µs to 5 s: a page-cache write to a slow disk's fsync.
            commit_us: Histogram::new(&[
                50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
                500_000, 1_000_000, 5_000_000,
            ]),
            batch_records: Histogram::new(&[1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]),
            storage_errors: 0,
        }
    }
}

enum Write {
    Outbox {
        bodies: Vec<Vec<u8>>,
        /// The peers they are for; empty: every peer.
        to: Vec<String>,
        reply: oneshot::Sender<Result<(u64, u64), JournalError>>,
    },
    Inbox {
        origin: String,
        epoch: u64,
        /// The peer's records `from..next`: `records` are those for us.
        from: u64,
        next: u64,
        records: Vec<Record>,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    Local {
        origin: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// Peer `origin` says its records `from..next` of `epoch` are gone.
    Lost {
        origin: String,
        epoch: u64,
        from: u64,
        next: u64,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// Apply retention, delete what is trimmed, write the state file.
    Checkpoint {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Checkpoint, then stop taking writes.
    Close { reply: oneshot::Sender<()> },
}

/// What [`Journal::read_inbox`] found.
#[derive(Debug, Default)]
pub struct InboxRead {
    /// The oldest inbox sequence number still kept.
    pub first: u64,
    /// Where to read next: past every record looked at, messages or not
    /// (loss notices and tombstones are skipped, not returned).
    pub next: u64,
    pub entries: Vec<Entry>,
}

/// What [`Journal::read_outbox`] found for one peer: the records for it
/// among those it looked at (up to `next`), or a run of tombstones
/// (records `from..next` lost to disk damage and dropped by `peerd journal
/// repair`) to report to the peer instead.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OutboxRead {
    pub records: Vec<Record>,
    /// Where the next read starts: past every record looked at.
    pub next: u64,
    pub lost: Option<(u64, u64)>,
}

impl Journal {
    /// Open (or create) the journal in `opts.dir`, recover it, and start
    /// its writer thread.
    pub fn open(opts: Options) -> Result<Journal, JournalError> {
        let (shared, writer) = writer::recover(opts)?;
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("peerd-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| JournalError::storage("cannot start the journal thread", e))?;
        Ok(Journal {
            shared,
            writes: tx,
            slots: Arc::new(tokio::sync::Semaphore::new(WRITE_SLOTS)),
        })
    }

    /// This journal's epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// Whether accepted messages survive a crash of the machine (they are
    /// on disk either way; `fsync = never` leaves them to the page cache).
    pub fn durable(&self) -> bool {
        self.shared.opts.fsync
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Wait for a place in the writer's queue.
    pub async fn reserve(&self) -> Slot {
        match self.slots.clone().acquire_owned().await {
            Ok(p) => Slot(p),
            // The semaphore is never closed; if it were, the write would
            // find the journal closed anyway.
            Err(_) => std::future::pending().await,
        }
    }

    fn submit<T>(
        &self,
        write: Write,
        slot: Option<Slot>,
        rx: oneshot::Receiver<Result<T, JournalError>>,
    ) -> impl Future<Output = Result<T, JournalError>> + use<T> {
        let sent = self.writes.send((write, slot));
        async move {
            sent.map_err(|_| JournalError::Closed)?;
            rx.await.map_err(|_| JournalError::Closed)?
        }
    }

    /// Append messages to the outbox; resolves once they are durable, with
    /// their sequence numbers `first..=last`. The write is queued when this
    /// is called, not when the future is first polled, so appends get their
    /// numbers in the order of the calls (pipelined `send` requests).
    /// `to`: the peers they are for (`send --to`); empty: every peer.
    pub fn append_outbox(
        &self,
        slot: Slot,
        bodies: Vec<Vec<u8>>,
        to: Vec<String>,
    ) -> impl Future<Output = Result<(u64, u64), JournalError>> + use<> {
        let (reply, rx) = oneshot::channel();
        self.submit(Write::Outbox { bodies, to, reply }, Some(slot), rx)
    }

    /// Store records received from peer `origin` (of its epoch `epoch`),
    /// dropping ones already stored. Resolves, once durable, to the next
    /// sequence number expected from it: the cumulative ack to send.
    /// `from..next` is the stretch of the peer's outbox the records come
    /// from: the rest of it is for other peers.
    pub fn append_inbox(
        &self,
        slot: Slot,
        origin: String,
        epoch: u64,
        (from, next): (u64, u64),
        records: Vec<Record>,
    ) -> impl Future<Output = Result<u64, JournalError>> + use<> {
        let (reply, rx) = oneshot::channel();
        let write = Write::Inbox {
            origin,
            epoch,
            from,
            next,
            records,
            reply,
        };
        self.submit(write, Some(slot), rx)
    }

    /// Store one message from a local source (a plain WebSocket client);
    /// resolves to its inbox sequence number.
    pub async fn append_local(&self, origin: String, body: Vec<u8>) -> Result<u64, JournalError> {
        let (reply, rx) = oneshot::channel();
        let write = Write::Local {
            origin,
            body,
            reply,
        };
        let slot = self.reserve().await;
        self.submit(write, Some(slot), rx).await
    }

    /// Record that peer `origin`'s records `from..next` of `epoch` are
    /// gone (it said so): moves "next expected" past them in one durable
    /// write and counts them lost. Resolves to the ack to send.
    pub fn append_lost(
        &self,
        slot: Slot,
        origin: String,
        epoch: u64,
        from: u64,
        next: u64,
    ) -> impl Future<Output = Result<u64, JournalError>> + use<> {
        let (reply, rx) = oneshot::channel();
        let write = Write::Lost {
            origin,
            epoch,
            from,
            next,
            reply,
        };
        self.submit(write, Some(slot), rx)
    }

    /// Apply retention, delete segments nobody needs and write the state
    /// file now (the writer also does this every second).
    pub async fn checkpoint(&self) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Write::Checkpoint { reply }, None, rx).await
    }

    /// Write everything down and stop taking writes (shutdown). Later
    /// writes fail with [`JournalError::Closed`].
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.writes.send((Write::Close { reply }, None)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Peer `peer` has stored every record below `next` that is for it:
    /// move its cursor. Cheap (it runs on the async workers); the writer
    /// thread settles the queue and deletes what nobody needs.
    pub fn ack(&self, peer: &str, next: u64) {
        {
            let mut st = self.lock();
            let outbox_next = st.outbox.next();
            let Some(p) = st.peers.get_mut(peer) else {
                return;
            };
            let n = p.acked_next.max(next.min(outbox_next));
            if n == p.acked_next {
                return;
            }
            p.acked_next = n;
            st.dirty = true;
            if let Some(d) = st.dropped.get_mut(peer) {
                d.retain(|s| *s >= n);
            }
        }
        self.shared.acks.send_modify(|v| *v += 1);
    }

    /// Has every peer in `to` (every configured peer when empty) stored
    /// every record up to `last` that is for it?
    pub fn delivered(&self, to: &[String], last: u64) -> bool {
        let st = self.lock();
        let all = if to.is_empty() { &st.members[..] } else { to };
        all.iter()
            .all(|p| st.peers.get(p).is_some_and(|s| s.acked_next > last))
    }

    /// Watch acknowledgements (the value only changes).
    pub fn watch_acks(&self) -> watch::Receiver<u64> {
        self.shared.acks.subscribe()
    }

    /// The configured peers.
    pub fn members(&self) -> Vec<String> {
        self.lock().members.clone()
    }

    /// Change the limits (a reload): sends are checked against the new
    /// `outbox_limit` at once (what is queued stays queued), and the next
    /// housekeeping trims the inbox by the new retention.
    pub fn set_limits(&self, limits: Limits) {
        self.lock().limits = limits;
    }

    /// Change the configured peers (a reload). A peer new to the journal
    /// gets the messages accepted from now on; a removed one no longer
    /// holds any segment. What the journal knows of a removed peer (what it
    /// acked, what we expect from it) is kept in case it comes back.
    pub fn set_peers(&self, peers: Vec<String>) {
        let mut st = self.lock();
        let next = st.outbox.next();
        for p in &peers {
            if !st.members.contains(p) {
                let s = st.peers.entry(p.clone()).or_default();
                s.acked_next = s.acked_next.max(next);
                st.queues.insert(
                    p.clone(),
                    queues::PeerQueue {
                        counted_to: next,
                        ..queues::PeerQueue::default()
                    },
                );
            }
        }
        st.queues.retain(|p, _| peers.contains(p));
        st.members = peers;
        st.dirty = true;
    }

    /// The oldest outbox record still kept (or the next to be assigned).
    pub fn outbox_first(&self) -> u64 {
        self.lock().outbox.first()
    }

    /// Records for `peer` from `from` on, looking at about `max_bytes` of
    /// the outbox (always at least one record if there is one); or, where a
    /// run of tombstones starts at `from`, that run. Reads the disk: call
    /// it off the async workers.
    pub fn read_outbox(
        &self,
        from: u64,
        max_bytes: u64,
        peer: &str,
    ) -> Result<OutboxRead, JournalError> {
        let (span, from) = {
            let st = self.lock();
            let from = from.max(st.outbox.first());
            (st.outbox.span(from), from)
        };
        let mut read = OutboxRead {
            next: from,
            ..OutboxRead::default()
        };
        let Some(span) = span else {
            return Ok(read);
        };
        // (seq, None: tombstone | Some(None): not for the peer | Some(Some(record)))
        let items = span
            .read_map(from, usize::MAX, max_bytes, |seq, _, data| {
                if log::is_tombstone(data) {
                    return Ok((seq, None));
                }
                let v = records::view_outbox(data).ok_or_else(|| {
                    JournalError::Storage(format!("outbox record {seq} is undecodable"))
                })?;
                let rec = v.is_for(peer).then(|| Record {
                    seq,
                    sent_ms: v.sent_ms,
                    body: v.body.to_vec(),
                });
                Ok((seq, Some(rec)))
            })
            .map_err(|e| JournalError::storage("reading the outbox", e))?;
        for item in items {
            let (seq, item) = item?;
            match (item, read.lost.as_mut()) {
                (Some(rec), None) => read.records.extend(rec),
                (Some(_), Some(_)) => break,
                (None, None) if read.next == from => read.lost = Some((seq, seq + 1)),
                (None, None) => break,
                (None, Some(run)) => run.1 = seq + 1,
            }
            read.next = seq + 1;
        }
        Ok(read)
    }

    /// Our records `from..next` will never reach `peer` (we are telling
    /// it so): count those not counted yet (two sessions of a collision
    /// both tell it). Returns how many were new.
    pub fn count_lost(&self, peer: &str, from: u64, next: u64) -> u64 {
        let mut st = self.lock();
        let told = st.lost_told.entry(peer.to_string()).or_default();
        let new = next.saturating_sub(from.max(*told));
        *told = (*told).max(next);
        if new > 0 {
            st.counters.entry(peer.to_string()).or_default().msgs_lost += new;
            st.dirty = true;
        }
        new
    }

    /// Drop queued record `seq` for `peer` (`peerctl drop`): it is never
    /// sent; the peer is told it is lost instead. Only a record still
    /// queued for that peer can be dropped.
    pub fn drop_record(&self, peer: &str, seq: u64) -> Result<(), String> {
        {
            let mut st = self.lock();
            let Some(p) = st.peers.get(peer).copied() else {
                return Err(format!("no peer {peer:?} in this journal"));
            };
            let (first, next) = (p.acked_next.max(st.outbox.first()), st.outbox.next());
            if seq < first || seq >= next {
                return Err(format!(
                    "message {seq} is not queued for {peer} (its queue holds {})",
                    if first < next {
                        format!("{first}..{}", next - 1)
                    } else {
                        "nothing".into()
                    }
                ));
            }
            st.dropped.entry(peer.to_string()).or_default().insert(seq);
            st.dirty = true;
        }
        // Wake the peer's session, which may be holding on that record.
        self.shared.outbox_next.send_modify(|_| {});
        Ok(())
    }

    /// Queued records the operator dropped for `peer`.
    pub fn dropped(&self, peer: &str) -> std::collections::BTreeSet<u64> {
        self.lock().dropped.get(peer).cloned().unwrap_or_default()
    }

    /// What the journal knows about `peer`.
    pub fn peer(&self, peer: &str) -> PeerState {
        self.lock().peers.get(peer).copied().unwrap_or_default()
    }

    /// The traffic counters of `peer`.
    pub fn counters(&self, peer: &str) -> Counters {
        self.lock().counters.get(peer).copied().unwrap_or_default()
    }

    /// Count messages put on the wire to `peer`.
    pub fn count_sent(&self, peer: &str, msgs: u64, bytes: u64) {
        let mut st = self.lock();
        let c = st.counters.entry(peer.to_string()).or_default();
        c.msgs_sent += msgs;
        c.bytes_sent += bytes;
        st.dirty = true;
    }

    /// Messages, bytes (on disk) and the oldest accept time still queued
    /// for `peer`. Best effort: a read error shows as what was counted.
    pub fn queued(&self, peer: &str) -> (u64, u64, Option<u64>) {
        if let Err(e) = queues::settle(&self.shared, peer) {
            tracing::debug!("journal: counting {peer}'s queue: {e}");
        }
        let (q, from) = {
            let st = self.lock();
            let q = st.queues.get(peer).copied().unwrap_or_default();
            let acked = st.peers.get(peer).map(|p| p.acked_next).unwrap_or(0);
            (q, acked.max(q.pending_from.unwrap_or(0)))
        };
        if q.msgs == 0 {
            return (0, 0, None);
        }
        let oldest = queues::oldest(&self.shared, peer, from).unwrap_or(None);
        (q.msgs, q.bytes, oldest)
    }

    /// Inbox entries from `from` on: at most `max_count` and about
    /// `max_bytes`. `first` says where the kept history starts.
    pub fn read_inbox(
        &self,
        from: u64,
        max_count: usize,
        max_bytes: u64,
    ) -> Result<InboxRead, JournalError> {
        let (first, span) = {
            let st = self.lock();
            let first = st.inbox_first;
            (first, st.inbox.span(from.max(first)))
        };
        let from = from.max(first);
        let Some(span) = span else {
            return Ok(InboxRead {
                first,
                next: from,
                entries: Vec::new(),
            });
        };
        let mut next = from;
        let mut entries = Vec::new();
        let items = span
            .read_map(from, max_count, max_bytes, |seq, _, data| {
                records::get_inbox(seq, data)
                    .map(|e| (seq, e))
                    .ok_or_else(|| {
                        JournalError::Storage(format!("inbox record {seq} is undecodable"))
                    })
            })
            .map_err(|e| JournalError::storage("reading the inbox", e))?;
        for item in items {
            let (seq, entry) = item?;
            next = seq + 1;
            entries.extend(entry);
        }
        Ok(InboxRead {
            first,
            next,
            entries,
        })
    }

    /// Where `tail -n N --from-peer ORIGIN` starts: the inbox sequence of
    /// the N-th last message from `origin` below `head` (`head` when there
    /// is none). Reads the kept inbox from its start: call it off the async
    /// workers.
    pub fn last_from(&self, n: u64, origin: &str, head: u64) -> Result<u64, JournalError> {
        let mut last = std::collections::VecDeque::with_capacity(n.min(4096) as usize);
        let mut next = 1;
        while next < head {
            let read = self.read_inbox(next, 4096, 1 << 20)?;
            if read.next <= next {
                break;
            }
            for e in read
                .entries
                .iter()
                .filter(|e| e.origin == origin && e.seq < head)
            {
                if last.len() as u64 == n {
                    last.pop_front();
                }
                if n > 0 {
                    last.push_back(e.seq);
                }
            }
            next = read.next;
        }
        Ok(last.front().copied().unwrap_or(head))
    }

    /// Watch the next outbox sequence number.
    pub fn watch_outbox(&self) -> watch::Receiver<u64> {
        self.shared.outbox_next.subscribe()
    }

    /// Watch the next inbox sequence number.
    pub fn watch_inbox(&self) -> watch::Receiver<u64> {
        self.shared.inbox_next.subscribe()
    }

    /// Our messages `peer` has acknowledged since this daemon started, and
    /// their bytes on disk (counted as its queue is settled).
    pub fn acked(&self, peer: &str) -> (u64, u64) {
        if let Err(e) = queues::settle(&self.shared, peer) {
            tracing::debug!("journal: counting {peer}'s queue: {e}");
        }
        let st = self.lock();
        let q = st.queues.get(peer).copied().unwrap_or_default();
        (q.acked_msgs, q.acked_bytes)
    }

    pub fn status(&self) -> JournalStatus {
        let floor = self.lock().floor;
        // Where the floor is in bytes: found outside the lock (it may read
        // the disk).
        let floor_pos = pos_of(&self.shared, |st| &st.outbox, floor);
        let st = self.lock();
        let outbox_end = st.outbox.end_pos();
        JournalStatus {
            storage_errors: st.stats.storage_errors,
            outbox_msgs: st.outbox.next().saturating_sub(st.floor),
            outbox_bytes: floor_pos.map_or(0, |p| outbox_end.saturating_sub(p)),
            inbox_msgs: st.inbox.next().saturating_sub(st.inbox_first),
            inbox_bytes: st.inbox.end_pos().saturating_sub(st.inbox_first_pos),
            commit_us: st.stats.commit_us.clone(),
            batch_records: st.stats.batch_records.clone(),
            durable: self.durable(),
            epoch: self.shared.epoch,
            outbox_next: st.outbox.next(),
            inbox_next: st.inbox.next(),
            inbox_first: st.inbox_first,
            storage_error: st.storage_error.clone().map(|(e, _)| e),
            storage_error_ms: st.storage_error.as_ref().map(|(_, t)| *t),
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the state half-updated in
    // a way later readers could misread (every update is a few field
    // writes), so a poisoned lock is simply taken over.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Position of record `seq` in a log's byte stream (its end if `seq` is
/// past the last record); reads the disk outside the lock.
fn pos_of(shared: &Shared, log: fn(&State) -> &LogIndex, seq: u64) -> io::Result<u64> {
    let (span, first, end) = {
        let st = lock(shared);
        let l = log(&st);
        let seq = seq.max(l.first());
        (l.span(seq), seq, l.end_pos())
    };
    match span {
        Some(s) => s.pos_of(first),
        None => Ok(end),
    }
}

#[cfg(test)]
mod tests;
