//! The journal: the one place messages are stored, and the only writer of
//! them. Sources (`peerctl send`, peer sessions, plain clients) append;
//! sinks (peer sessions sending, `tail`) read from a sequence number and
//! wait on a watch for more. Nothing else touches the data.
//!
//! - **outbox**: messages accepted for the peers, numbered 1, 2, ... within
//!   this journal's epoch; kept until every peer has acknowledged them.
//! - **inbox**: messages received, numbered in arrival order (what `tail
//!   --from` takes), with origin, the origin's sequence number and times.
//! - **per-peer state**: how far each peer has acked our outbox, and which
//!   epoch and sequence we expect next from it. The inbox append and that
//!   "next expected" move together in one write, which is what makes
//!   delivery exactly-once: a resend of something already stored is
//!   dropped, and an ack is only sent for what is stored.
//!
//! All appends go through one writer task, which takes every write queued
//! at that moment as one batch (group commit): one storage flush per batch,
//! then every waiter is answered and the watches move.
//!
//! Storage in this version is in memory (bounded by `outbox_limit` and
//! `inbox_retention`); the interface is what the durable store keeps.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use peerlink::control::{Entry, JournalStatus};

use crate::wire::Record;

/// Why a journal operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error(
        "outbox full: {queued_msgs} messages ({queued_bytes} bytes) queued for the peer since {since}; \
         limit is {limit}"
    )]
    OutboxFull {
        queued_msgs: u64,
        queued_bytes: u64,
        since: String,
        limit: String,
    },
    #[error("the journal is closed (daemon shutting down)")]
    Closed,
}

/// What the journal is opened with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names of the peers whose acks trim the outbox.
    pub peers: Vec<String>,
    pub outbox_limit_bytes: u64,
    pub outbox_limit_messages: u64,
    pub inbox_retention_bytes: u64,
    pub inbox_retention_age: Option<Duration>,
}

/// A cheap handle to the journal; clone it freely.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    writes: mpsc::UnboundedSender<Write>,
}

struct Shared {
    state: Mutex<State>,
    epoch: u64,
    opts: Options,
    /// Next outbox sequence number: everything below is readable.
    outbox_next: watch::Sender<u64>,
    /// Next inbox sequence number: everything below is readable.
    inbox_next: watch::Sender<u64>,
    /// Everything below this has been acknowledged by every peer.
    acked_all: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    outbox: VecDeque<Record>,
    outbox_next: u64,
    outbox_bytes: u64,
    inbox: VecDeque<Entry>,
    inbox_next: u64,
    inbox_bytes: u64,
    peers: HashMap<String, PeerState>,
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

enum Write {
    Outbox {
        bodies: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<(u64, u64), JournalError>>,
    },
    Inbox {
        origin: String,
        epoch: u64,
        records: Vec<Record>,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    Local {
        origin: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
}

/// What [`Journal::read_inbox`] found.
#[derive(Debug, Default)]
pub struct InboxRead {
    /// The oldest inbox sequence number still kept.
    pub first: u64,
    pub entries: Vec<Entry>,
}

impl Journal {
    /// Open the journal and start its writer task.
    pub fn open(opts: Options) -> Journal {
        let mut state = State {
            outbox_next: 1,
            inbox_next: 1,
            ..State::default()
        };
        for p in &opts.peers {
            state.peers.insert(
                p.clone(),
                PeerState {
                    acked_next: 1,
                    ..PeerState::default()
                },
            );
        }
        let epoch = loop {
            let e: u64 = rand::random();
            if e != 0 {
                break e;
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            epoch,
            opts,
            outbox_next: watch::Sender::new(1),
            inbox_next: watch::Sender::new(1),
            acked_all: watch::Sender::new(1),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(shared.clone(), rx));
        Journal { shared, writes: tx }
    }

    /// This journal's epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// Whether accepted messages survive a crash.
    pub fn durable(&self) -> bool {
        false
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Append messages to the outbox; resolves once they are stored, with
    /// their sequence numbers `first..=last`.
    pub async fn append_outbox(&self, bodies: Vec<Vec<u8>>) -> Result<(u64, u64), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(Write::Outbox { bodies, reply })
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Store records received from peer `origin` (of its epoch `epoch`),
    /// dropping ones already stored. Resolves, once stored, to the next
    /// sequence number expected from it: the cumulative ack to send.
    pub fn append_inbox(
        &self,
        origin: String,
        epoch: u64,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<u64, JournalError>> + use<> {
        let (reply, rx) = oneshot::channel();
        let sent = self.writes.send(Write::Inbox {
            origin,
            epoch,
            records,
            reply,
        });
        async move {
            sent.map_err(|_| JournalError::Closed)?;
            rx.await.map_err(|_| JournalError::Closed)?
        }
    }

    /// Store one message from a local source (a plain WebSocket client);
    /// resolves to its inbox sequence number.
    pub async fn append_local(&self, origin: String, body: Vec<u8>) -> Result<u64, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(Write::Local {
                origin,
                body,
                reply,
            })
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Peer `peer` has stored every record below `next`: trim what every
    /// peer has.
    pub fn ack(&self, peer: &str, next: u64) {
        let mut st = self.lock();
        let outbox_next = st.outbox_next;
        if let Some(p) = st.peers.get_mut(peer) {
            p.acked_next = p.acked_next.max(next.min(outbox_next));
        }
        let floor = st
            .peers
            .values()
            .map(|p| p.acked_next)
            .min()
            .unwrap_or(outbox_next);
        while st.outbox.front().is_some_and(|r| r.seq < floor) {
            if let Some(r) = st.outbox.pop_front() {
                st.outbox_bytes -= r.body.len() as u64;
            }
        }
        drop(st);
        self.shared.acked_all.send_if_modified(|v| {
            let changed = *v != floor;
            *v = floor;
            changed
        });
    }

    /// The oldest outbox record still kept (or the next to be assigned).
    pub fn outbox_first(&self) -> u64 {
        let st = self.lock();
        st.outbox.front().map(|r| r.seq).unwrap_or(st.outbox_next)
    }

    /// Outbox records from `from` on, at most about `max_bytes` (always at
    /// least one if there is one).
    pub fn read_outbox(&self, from: u64, max_bytes: u64) -> Vec<Record> {
        let st = self.lock();
        let Some(front) = st.outbox.front().map(|r| r.seq) else {
            return Vec::new();
        };
        let start = from.saturating_sub(front) as usize;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for r in st.outbox.range(start.min(st.outbox.len())..) {
            if !out.is_empty() && bytes + r.body.len() as u64 > max_bytes {
                break;
            }
            bytes += r.body.len() as u64 + 16;
            out.push(r.clone());
        }
        out
    }

    /// What the journal knows about `peer`.
    pub fn peer(&self, peer: &str) -> PeerState {
        self.lock().peers.get(peer).copied().unwrap_or_default()
    }

    /// Messages, bytes and the oldest accept time still queued for `peer`.
    pub fn queued(&self, peer: &str) -> (u64, u64, Option<u64>) {
        let st = self.lock();
        let acked = st.peers.get(peer).map(|p| p.acked_next).unwrap_or(0);
        let front = st.outbox.front().map(|r| r.seq).unwrap_or(st.outbox_next);
        let skip = acked.saturating_sub(front) as usize;
        let mut bytes = 0;
        let mut oldest = None;
        for r in st.outbox.range(skip.min(st.outbox.len())..) {
            oldest.get_or_insert(r.sent_ms);
            bytes += r.body.len() as u64;
        }
        (
            st.outbox_next.saturating_sub(acked.max(front)),
            bytes,
            oldest,
        )
    }

    /// Inbox entries from `from` on: at most `max_count` and about
    /// `max_bytes`. Trims by age first, so a reader never sees expired ones.
    pub fn read_inbox(&self, from: u64, max_count: usize, max_bytes: u64) -> InboxRead {
        let mut st = self.lock();
        self.shared.trim_inbox(&mut st);
        let first = st.inbox.front().map(|e| e.seq).unwrap_or(st.inbox_next);
        let start = from.saturating_sub(first) as usize;
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        for e in st.inbox.range(start.min(st.inbox.len())..).take(max_count) {
            if !entries.is_empty() && bytes + e.body.len() as u64 > max_bytes {
                break;
            }
            bytes += e.body.len() as u64;
            entries.push(e.clone());
        }
        InboxRead { first, entries }
    }

    /// Watch the next outbox sequence number.
    pub fn watch_outbox(&self) -> watch::Receiver<u64> {
        self.shared.outbox_next.subscribe()
    }

    /// Watch the next inbox sequence number.
    pub fn watch_inbox(&self) -> watch::Receiver<u64> {
        self.shared.inbox_next.subscribe()
    }

    /// Watch the point below which every peer has acknowledged everything.
    pub fn watch_acked(&self) -> watch::Receiver<u64> {
        self.shared.acked_all.subscribe()
    }

    pub fn status(&self) -> JournalStatus {
        let st = self.lock();
        JournalStatus {
            durable: self.durable(),
            epoch: self.shared.epoch,
            outbox_next: st.outbox_next,
            inbox_next: st.inbox_next,
            inbox_first: st.inbox.front().map(|e| e.seq).unwrap_or(st.inbox_next),
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the state half-updated in
    // a way later readers could misread (every update is a few field
    // writes), so a poisoned lock is simply taken over.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn apply_outbox(
        &self,
        st: &mut State,
        bodies: Vec<Vec<u8>>,
    ) -> Result<(u64, u64), JournalError> {
        let n = bodies.len() as u64;
        let bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();
        let queued = st.outbox.len() as u64;
        if queued + n > self.opts.outbox_limit_messages
            || st.outbox_bytes + bytes > self.opts.outbox_limit_bytes
        {
            let since = st
                .outbox
                .front()
                .map(|r| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(r.sent_ms),
                    )
                    .to_string()
                })
                .unwrap_or_else(|| "now".into());
            return Err(JournalError::OutboxFull {
                queued_msgs: queued,
                queued_bytes: st.outbox_bytes,
                since,
                limit: format!(
                    "{} messages / {} bytes",
                    self.opts.outbox_limit_messages, self.opts.outbox_limit_bytes
                ),
            });
        }
        let first = st.outbox_next;
        let now = peerlink::now_ms();
        for body in bodies {
            st.outbox_bytes += body.len() as u64;
            st.outbox.push_back(Record {
                seq: st.outbox_next,
                sent_ms: now,
                body,
            });
            st.outbox_next += 1;
        }
        Ok((first, st.outbox_next - 1))
    }

    fn push_inbox(
        &self,
        st: &mut State,
        origin: &str,
        origin_seq: u64,
        sent_ms: u64,
        body: Vec<u8>,
    ) -> u64 {
        let seq = st.inbox_next;
        st.inbox_bytes += body.len() as u64;
        st.inbox.push_back(Entry {
            seq,
            received_ms: peerlink::now_ms(),
            sent_ms,
            origin: origin.to_string(),
            origin_seq,
            body,
        });
        st.inbox_next += 1;
        seq
    }

    fn apply_inbox(&self, st: &mut State, origin: &str, epoch: u64, records: Vec<Record>) -> u64 {
        let Some(first) = records.first().map(|r| r.seq) else {
            return st.peers.get(origin).map(|p| p.recv_next).unwrap_or(0);
        };
        let mut p = st.peers.get(origin).copied().unwrap_or_default();
        if p.recv_epoch != epoch {
            if p.recv_epoch != 0 {
                tracing::warn!(
                    peer = origin,
                    old_epoch = p.recv_epoch,
                    new_epoch = epoch,
                    "peer started a new journal epoch (its journal was reset); starting over from its seq {first}"
                );
            }
            p.recv_epoch = epoch;
            p.recv_next = first;
        }
        for r in records {
            if r.seq < p.recv_next {
                continue; // a resend of something we already have
            }
            if r.seq > p.recv_next {
                tracing::warn!(
                    peer = origin,
                    expected = p.recv_next,
                    got = r.seq,
                    "gap in peer's sequence numbers"
                );
            }
            self.push_inbox(st, origin, r.seq, r.sent_ms, r.body);
            p.recv_next = r.seq.saturating_add(1); // a hostile u64::MAX must not overflow
        }
        st.peers.insert(origin.to_string(), p);
        p.recv_next
    }

    fn trim_inbox(&self, st: &mut State) {
        let cutoff = self
            .opts
            .inbox_retention_age
            .map(|a| peerlink::now_ms().saturating_sub(a.as_millis() as u64));
        while let Some(e) = st.inbox.front() {
            let too_big = st.inbox_bytes > self.opts.inbox_retention_bytes;
            let too_old = cutoff.is_some_and(|c| e.received_ms < c);
            if !(too_big || too_old) {
                break;
            }
            st.inbox_bytes -= e.body.len() as u64;
            st.inbox.pop_front();
        }
    }
}

/// The writer task: group commit of everything queued at once.
async fn writer(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let mut replies: Vec<Box<dyn FnOnce() + Send>> = Vec::with_capacity(batch.len());
        {
            let mut st = lock(&shared);
            for w in batch.drain(..) {
                match w {
                    Write::Outbox { bodies, reply } => {
                        let r = shared.apply_outbox(&mut st, bodies);
                        replies.push(Box::new(move || {
                            let _ = reply.send(r);
                        }));
                    }
                    Write::Inbox {
                        origin,
                        epoch,
                        records,
                        reply,
                    } => {
                        let next = shared.apply_inbox(&mut st, &origin, epoch, records);
                        replies.push(Box::new(move || {
                            let _ = reply.send(Ok(next));
                        }));
                    }
                    Write::Local {
                        origin,
                        body,
                        reply,
                    } => {
                        let seq = shared.push_inbox(&mut st, &origin, 0, peerlink::now_ms(), body);
                        replies.push(Box::new(move || {
                            let _ = reply.send(Ok(seq));
                        }));
                    }
                }
            }
            shared.trim_inbox(&mut st);
            // (A durable store flushes and syncs the batch here, before
            // anyone is told it is stored.)
            let (o, i) = (st.outbox_next, st.inbox_next);
            drop(st);
            shared
                .outbox_next
                .send_if_modified(|v| std::mem::replace(v, o) != o);
            shared
                .inbox_next
                .send_if_modified(|v| std::mem::replace(v, i) != i);
        }
        for r in replies {
            r();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            peers: vec!["b".into()],
            outbox_limit_bytes: 1 << 20,
            outbox_limit_messages: 5,
            inbox_retention_bytes: 10,
            inbox_retention_age: None,
        }
    }

    fn rec(seq: u64, body: &str) -> Record {
        Record {
            seq,
            sent_ms: 1,
            body: body.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn outbox_numbers_reads_and_trims_by_ack() {
        let j = Journal::open(opts());
        assert_eq!(
            j.append_outbox(vec![b"x".to_vec(), b"y".to_vec()]).await,
            Ok((1, 2))
        );
        assert_eq!(j.append_outbox(vec![b"z".to_vec()]).await, Ok((3, 3)));
        assert_eq!(
            j.read_outbox(2, 1 << 20)
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(j.queued("b").0, 3);
        j.ack("b", 3);
        assert_eq!(j.outbox_first(), 3);
        assert_eq!(j.queued("b").0, 1);
        assert_eq!(*j.watch_acked().borrow(), 3);
        j.ack("b", 99); // never beyond what exists
        assert_eq!(j.peer("b").acked_next, 4);
    }

    #[tokio::test]
    async fn outbox_limit_refuses_and_keeps_what_it_has() {
        let j = Journal::open(opts());
        j.append_outbox(vec![vec![1]; 5]).await.unwrap();
        let e = j.append_outbox(vec![vec![2]]).await.unwrap_err();
        assert!(
            matches!(e, JournalError::OutboxFull { queued_msgs: 5, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("5 messages"));
        assert_eq!(j.read_outbox(1, 1 << 20).len(), 5);
    }

    #[tokio::test]
    async fn inbox_drops_duplicates_and_handles_new_epochs() {
        let j = Journal::open(opts());
        assert_eq!(
            j.append_inbox("b".into(), 7, vec![rec(1, "a"), rec(2, "b")])
                .await,
            Ok(3)
        );
        assert_eq!(
            j.append_inbox("b".into(), 7, vec![rec(2, "b"), rec(3, "c")])
                .await,
            Ok(4)
        );
        let got = j.read_inbox(1, 100, 1 << 20);
        assert_eq!(
            got.entries.iter().map(|e| e.origin_seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // The peer's journal was wiped: a new epoch starts over at its seq 1.
        assert_eq!(
            j.append_inbox("b".into(), 8, vec![rec(1, "n")]).await,
            Ok(2)
        );
        assert_eq!(
            j.peer("b"),
            PeerState {
                acked_next: 1,
                recv_epoch: 8,
                recv_next: 2
            }
        );
    }

    #[tokio::test]
    async fn inbox_retention_trims_oldest() {
        let j = Journal::open(opts());
        for i in 1..=4 {
            j.append_local("client:x".into(), b"abcd".to_vec())
                .await
                .unwrap();
            assert_eq!(*j.watch_inbox().borrow(), i + 1);
        }
        let got = j.read_inbox(1, 100, 1 << 20);
        assert_eq!(got.first, 3, "10 bytes keep two 4-byte messages");
        assert_eq!(got.entries.len(), 2);
    }
}
