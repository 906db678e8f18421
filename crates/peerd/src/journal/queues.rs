//! One delivery cursor per peer over the one outbox (issue 15, the Kafka /
//! JetStream consumer-position design): every message is written once,
//! whatever the number of peers, and each peer has its own position, queue
//! and limit.
//!
//! A peer's cursor is its `acked_next` (`PeerState`): everything below it
//! that is addressed to the peer is in its inbox. Its queue is the records
//! at or past the cursor that are addressed to it (a record with no `to`
//! list is for every peer): counted exactly, in messages and bytes on disk.
//!
//! Counting: appends add to the queues of the peers a record is for; acks
//! only move cursors (they come in on the async workers and must stay
//! cheap). The writer thread (and `status`) then *settle* a queue: they
//! subtract what lies between where the count stood (`counted_to`) and the
//! cursor, reading those records back when the journal holds addressed
//! ones (while it holds none, the arithmetic of sequence numbers and byte
//! positions is enough).
//!
//! Deleting: segments are deleted from the front, below the *floor*: the
//! smallest position any peer still needs. A peer with nothing queued
//! needs nothing (a down peer that no message is for holds no segment); a
//! peer with something queued needs its records from its cursor on (or
//! from its first queued record, `pending_from`, when that is later).

use std::collections::HashMap;
use std::io;

use super::log::{self, HEADER};
use super::records;
use super::{PeerState, Shared, lock};

/// The queue of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerQueue {
    /// Records for this peer at or past `counted_to`, and their bytes on
    /// disk.
    pub msgs: u64,
    pub bytes: u64,
    /// Where the count starts (≤ the peer's cursor; equal once settled).
    pub counted_to: u64,
    /// The first record queued for the peer when its queue last went from
    /// empty to not empty.
    pub pending_from: Option<u64>,
    /// The queue is at `outbox_limit` and that was logged.
    pub full_warned: bool,
}

/// Bytes on disk of a record whose payload (after the seq) is `len` bytes.
pub fn disk_bytes(len: usize) -> u64 {
    HEADER + 8 + len as u64
}

/// What the queues look like from the records of an outbox being opened:
/// `visit` each record in order, then `finish`.
pub struct Counting<'a> {
    peers: &'a [String],
    acked: HashMap<String, u64>,
    queues: HashMap<String, PeerQueue>,
    pub addressed: bool,
}

impl<'a> Counting<'a> {
    pub fn new(peers: &'a [String], state: &HashMap<String, PeerState>) -> Self {
        let acked = peers
            .iter()
            .map(|p| (p.clone(), state.get(p).map(|s| s.acked_next).unwrap_or(0)))
            .collect();
        Counting {
            peers,
            acked,
            queues: HashMap::new(),
            addressed: false,
        }
    }

    pub fn visit(&mut self, seq: u64, data: &[u8]) {
        let Some(v) = records::view_outbox(data) else {
            return; // a tombstone, or damage `open` reports
        };
        self.addressed |= v.is_addressed();
        for p in self.peers {
            if seq >= self.acked[p] && v.is_for(p) {
                let q = self.queues.entry(p.clone()).or_default();
                q.msgs += 1;
                q.bytes += disk_bytes(data.len());
                q.pending_from.get_or_insert(seq);
            }
        }
    }

    /// The queues, counted to each peer's cursor (clamped to the log).
    pub fn finish(mut self, state: &HashMap<String, PeerState>) -> HashMap<String, PeerQueue> {
        for p in self.peers {
            let q = self.queues.entry(p.clone()).or_default();
            q.counted_to = state.get(p).map(|s| s.acked_next).unwrap_or(0);
        }
        self.queues
    }
}

/// Where the floor may be: the smallest position a peer with something
/// queued still needs; `next` when none has anything queued.
pub fn floor(
    peers: &[String],
    state: &HashMap<String, PeerState>,
    queues: &HashMap<String, PeerQueue>,
    next: u64,
) -> u64 {
    peers
        .iter()
        .filter_map(|p| {
            let q = queues.get(p)?;
            if q.msgs == 0 {
                return None;
            }
            let acked = state.get(p).map(|s| s.acked_next).unwrap_or(0);
            Some(acked.max(q.pending_from.unwrap_or(0)))
        })
        .min()
        .unwrap_or(next)
}

/// Settle `peer`'s queue: subtract the records between where its count
/// stands and its cursor. Reads the disk outside the lock.
pub fn settle(shared: &Shared, peer: &str) -> io::Result<()> {
    let (from, to, addressed, span) = {
        let st = lock(shared);
        let Some(q) = st.queues.get(peer) else {
            return Ok(());
        };
        let acked = st.peers.get(peer).map(|p| p.acked_next).unwrap_or(0);
        if q.counted_to >= acked {
            return Ok(());
        }
        if q.msgs == 0 {
            drop(st);
            let mut st = lock(shared);
            if let Some(q) = st.queues.get_mut(peer) {
                q.counted_to = q.counted_to.max(acked);
                q.pending_from = None;
            }
            return Ok(());
        }
        let from = q.counted_to.max(st.outbox.first());
        (from, acked, st.addressed, st.outbox.span(from))
    };
    let (msgs, bytes) = if addressed {
        count_for(shared, peer, from, to, span)?
    } else {
        // Every record is for every peer: count by numbers and positions.
        let a = pos(shared, from)?;
        let b = pos(shared, to)?;
        (to - from, b.saturating_sub(a))
    };
    let mut st = lock(shared);
    if let Some(q) = st.queues.get_mut(peer)
        && q.counted_to < to
    {
        q.msgs = q.msgs.saturating_sub(msgs);
        q.bytes = q.bytes.saturating_sub(bytes);
        q.counted_to = to;
        if q.msgs == 0 {
            q.pending_from = None;
            q.full_warned = false;
        }
    }
    Ok(())
}

/// Records for `peer` in `from..to`, and their bytes on disk.
fn count_for(
    shared: &Shared,
    peer: &str,
    mut from: u64,
    to: u64,
    mut span: Option<log::Span>,
) -> io::Result<(u64, u64)> {
    let (mut msgs, mut bytes) = (0, 0);
    while from < to {
        let Some(s) = span else { break };
        let mut last = None;
        for (seq, n) in s.read_map(from, usize::MAX, 1 << 20, |seq, _, data| {
            let n = records::view_outbox(data)
                .filter(|v| v.is_for(peer))
                .map(|_| disk_bytes(data.len()));
            (seq, n)
        })? {
            if seq >= to {
                break;
            }
            last = Some(seq);
            if let Some(n) = n {
                msgs += 1;
                bytes += n;
            }
        }
        let Some(last) = last else { break };
        from = last + 1;
        span = lock(shared).outbox.span(from);
    }
    Ok((msgs, bytes))
}

/// Position of outbox record `seq` (the log's end past the last record).
fn pos(shared: &Shared, seq: u64) -> io::Result<u64> {
    super::pos_of(shared, |st| &st.outbox, seq)
}

/// The oldest queued record for `peer`, at or past `from`: its accept
/// time. Reads until it finds one (there is one when the queue is not
/// empty).
pub fn oldest(shared: &Shared, peer: &str, mut from: u64) -> io::Result<Option<u64>> {
    loop {
        let span = {
            let st = lock(shared);
            from = from.max(st.outbox.first());
            st.outbox.span(from)
        };
        let Some(span) = span else { return Ok(None) };
        let mut last = None;
        for (seq, found) in span.read_map(from, usize::MAX, 1 << 20, |seq, _, data| {
            let found = records::view_outbox(data)
                .filter(|v| v.is_for(peer))
                .map(|v| v.sent_ms);
            (seq, found)
        })? {
            if found.is_some() {
                return Ok(found);
            }
            last = Some(seq);
        }
        match last {
            Some(l) => from = l + 1,
            None => return Ok(None),
        }
    }
}
