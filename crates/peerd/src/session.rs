//! One live peer session: records flow out from the journal's outbox and
//! in to its inbox, acks flow back, pings measure RTT and liveness.
//!
//! Three loops run together and the session ends when any of them does:
//!
//! - **receive**: reads frames; hands `Data` to the journal (without
//!   waiting for it to be stored) and queues the pending write for the ack
//!   loop; applies `Ack`s; measures RTT from pongs. Nothing it does can
//!   block on the sending side, so two nodes sending to each other at full
//!   speed cannot deadlock.
//! - **ack**: waits for each inbox write in order and publishes the
//!   cumulative ack: an ack never goes out before the write is stored. A
//!   write that fails (disk full, I/O error) ends the session with
//!   [`CLOSE_STORAGE`] and the reason, so the peer backs off and shows it.
//! - **send**: owns the socket's sending half; sends batches of outbox
//!   records within a window of unacknowledged bytes, the latest ack,
//!   pings, and the close frame.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::handshake::Established;
use crate::journal::{Cursor, Journal, JournalError, Log};
use crate::reload::Settings;
use crate::status::PeerBoard;
use crate::transport::{Liveness, Ws};
use crate::wire::{
    BATCH_TARGET, CLOSE_DUPLICATE, CLOSE_STORAGE, FRAME_OVERHEAD, PeerFrame, Record,
};

/// Unacknowledged bytes a sender may have in flight, counted as what the
/// records cost in the receiver's memory while they wait for its journal
/// ([`memory_cost`]), not only their bodies: with 64-byte messages the
/// bookkeeping is as large as the data.
const WINDOW_BYTES: u64 = 8 << 20;
/// What one record costs in memory beyond its body (the record and its
/// body's allocation), for [`memory_cost`].
const RECORD_MEMORY: u64 = 64;
/// Unacknowledged batches a sender may have in flight.
const WINDOW_BATCHES: usize = 256;
/// Bytes of received records that may wait for the journal at once: twice
/// a sender's window, so only a peer that ignores the window ever waits
/// here (and then it is slowed down instead of filling our memory).
const PENDING_BYTES: u64 = 2 * WINDOW_BYTES;

/// Inbox writes of one session waiting for their acks, at most (the
/// bytes they hold are bounded by [`PENDING_BYTES`] too).
const PENDING_WRITES: usize = 2 * WINDOW_BATCHES;

/// How long a session that sent its close frame waits for the answer.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why the link task closes a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// It lost the collision rule.
    Duplicate,
    /// The daemon is shutting down.
    GoingAway,
    /// Our journal cannot store what the peer sends (why).
    Storage(String),
}

/// How a session ended.
#[derive(Debug)]
pub struct Ended {
    /// Why, in one line (for the log and `status`).
    pub why: String,
    /// The peer closed it as the loser of a collision: the link is not
    /// down, the session the peer kept is on its way.
    pub duplicate: bool,
}

/// What a session runs with.
pub struct Session {
    /// The settings of the moment: a reload's `heartbeat` and
    /// `dead_after` reach a live session.
    pub settings: Settings,
    pub peer: String,
    pub journal: Journal,
    pub board: PeerBoard,
}

type Pending = std::pin::Pin<Box<dyn Future<Output = Result<u64, JournalError>> + Send>>;

impl Session {
    /// Run until the session ends; returns why, in one line.
    pub async fn run(self, est: Established, close: oneshot::Receiver<CloseReason>) -> Ended {
        let my_epoch = self.journal.epoch();
        let peer_epoch = est.hello.epoch;
        // Where to resume: the peer told us what it expects next. If it
        // knows our epoch, everything below that is in its inbox already.
        let resume = resume(
            my_epoch,
            (est.hello.expect_epoch, est.hello.expect_next),
            self.journal.peer(&self.peer).acked_next,
            self.journal.outbox_first(),
        );
        if est.hello.expect_epoch == my_epoch {
            self.journal.ack(&self.peer, est.hello.expect_next);
        }
        let start = resume.from;
        let peer_max_frame = est.hello.max_frame.max(FRAME_OVERHEAD + 1);
        self.board
            .update(|s| s.peer_max_message = Some(peer_max_frame - FRAME_OVERHEAD));
        let (sink, stream) = est.ws.split();
        let budget = Arc::new(Semaphore::new(PENDING_BYTES as usize));
        let (pending_tx, pending_rx) = mpsc::channel::<Pending>(PENDING_WRITES);
        let (ack_out_tx, ack_out_rx) = watch::channel(0u64);
        let (acked_tx, acked_rx) = watch::channel(start);
        let duplicate = AtomicBool::new(false);
        let (failed_tx, failed_rx) = oneshot::channel();
        let live = est.liveness.clone();
        let receive = self.receive(
            stream, &live, peer_epoch, budget, pending_tx, acked_tx, &duplicate,
        );
        tokio::pin!(receive);
        let send = self.send(
            sink,
            resume,
            peer_epoch,
            peer_max_frame,
            ack_out_rx,
            acked_rx,
            close,
            failed_rx,
        );
        let why = tokio::select! {
            r = &mut receive => r.err().unwrap_or_else(|| "connection closed".into()),
            () = acks(pending_rx, ack_out_tx, failed_tx) => "closed".into(),
            r = send => match r {
                Ok(why) => {
                    // We sent the close frame: read until the peer answers
                    // it, so our socket is not dropped with unread data
                    // (which resets the connection, and the peer would
                    // see a reset instead of our reason).
                    let _ = tokio::time::timeout(CLOSE_WAIT, &mut receive).await;
                    why
                }
                Err(e) => e,
            },
        };
        Ended {
            why,
            duplicate: duplicate.load(Ordering::Relaxed),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn receive(
        &self,
        mut stream: SplitStream<Ws>,
        live: &Liveness,
        peer_epoch: u64,
        budget: Arc<Semaphore>,
        pending: mpsc::Sender<Pending>,
        acked: watch::Sender<u64>,
        duplicate: &AtomicBool,
    ) -> Result<(), String> {
        loop {
            let dead_after = self.timers().1;
            // Alive while bytes arrive (see `transport::Liveness`), whole
            // messages or not.
            let next = loop {
                let idle = live.idle();
                if idle >= dead_after {
                    return Err(format!(
                        "nothing received for {}",
                        humantime::format_duration(dead_after)
                    ));
                }
                if let Ok(next) = tokio::time::timeout(dead_after - idle, stream.next()).await {
                    break next;
                }
            };
            let msg = match next {
                None => return Err("connection closed".into()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(m)) => m,
            };
            let mut lost = None;
            match msg {
                Message::Binary(bytes) => match PeerFrame::decode(&bytes)
                    .map_err(|e| format!("bad frame from peer: {e}"))?
                {
                    PeerFrame::Data {
                        epoch,
                        from,
                        next,
                        records,
                    } => {
                        if epoch != peer_epoch {
                            return Err(format!(
                                "data of epoch {epoch} in a session of epoch {peer_epoch}"
                            ));
                        }
                        // (The journal counts what it stores, duplicates
                        // dropped.)
                        // Within PENDING_BYTES, so a u32 always holds it.
                        let cost = memory_cost(&records).min(PENDING_BYTES) as u32;
                        let permit = budget
                            .clone()
                            .acquire_many_owned(cost)
                            .await
                            .map_err(|_| "session closing".to_string())?;
                        if from > next || records.iter().any(|r| r.seq < from || r.seq >= next) {
                            return Err(format!("bad Data {from}..{next} from peer"));
                        }
                        let slot = self.journal.reserve().await;
                        let write = self.journal.append_inbox(
                            slot,
                            self.peer.clone(),
                            epoch,
                            (from, next),
                            records,
                        );
                        let _ = pending
                            .send(Box::pin(async move {
                                let stored = write.await;
                                drop(permit);
                                stored
                            }))
                            .await;
                    }
                    PeerFrame::Lost { epoch, from, next } => {
                        if epoch != peer_epoch || from >= next {
                            return Err(format!(
                                "bad Lost {from}..{next} of epoch {epoch} in a session of epoch \
                                 {peer_epoch}"
                            ));
                        }
                        if self.journal.peer(&self.peer).recv_next < next {
                            lost = Some((from, next));
                        }
                        let slot = self.journal.reserve().await;
                        let write =
                            self.journal
                                .append_lost(slot, self.peer.clone(), epoch, from, next);
                        let _ = pending.send(Box::pin(write)).await;
                    }
                    PeerFrame::Ack { epoch, next } => {
                        if epoch == self.journal.epoch() {
                            self.journal.ack(&self.peer, next);
                            acked.send_if_modified(|v| {
                                let grew = next > *v;
                                *v = (*v).max(next);
                                grew
                            });
                        }
                    }
                    f @ (PeerFrame::Hello(_) | PeerFrame::Auth { .. }) => {
                        return Err(format!("unexpected {} in a live session", f.kind()));
                    }
                },
                Message::Pong(p) => {
                    if let Ok(sent) = <[u8; 8]>::try_from(&p[..]) {
                        let rtt = now_us().saturating_sub(u64::from_be_bytes(sent));
                        self.board.update(|s| s.rtt_us = Some(rtt));
                    }
                }
                Message::Close(f) => {
                    if f.as_ref()
                        .is_some_and(|f| u16::from(f.code) == CLOSE_DUPLICATE)
                    {
                        duplicate.store(true, Ordering::Relaxed);
                    }
                    if let Some(f) = f.as_ref().filter(|f| u16::from(f.code) == CLOSE_STORAGE) {
                        return Err(format!("paused: {}'s {}", self.peer, f.reason));
                    }
                    let why = f
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default();
                    return Err(format!("peer closed the link: {why}"));
                }
                Message::Ping(_) | Message::Frame(_) => {}
                Message::Text(_) => return Err("text frame in a peer session".into()),
            }
            if let Some((from, next)) = lost {
                self.board
                    .update(|s| s.msgs_lost_since_start += next - from);
                self.board.error(&format!(
                    "{} says its messages {from}..{} are lost (its journal was repaired, or ours \
                     went back in time)",
                    self.peer,
                    next - 1
                ));
            }
        }
    }

    /// `resume`: where the peer stands (and what it expects that we no
    /// longer hold); see [`Resume`].
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        mut sink: SplitSink<Ws, Message>,
        resume: Resume,
        peer_epoch: u64,
        peer_max_frame: u64,
        mut ack_out: watch::Receiver<u64>,
        mut acked: watch::Receiver<u64>,
        mut close: oneshot::Receiver<CloseReason>,
        mut failed: oneshot::Receiver<String>,
    ) -> Result<String, String> {
        let mut heartbeat = self.timers().0;
        let mut ping = tokio::time::interval(heartbeat);
        // A reload wakes the loop, which then takes the new heartbeat.
        let mut settings = self.settings.clone();
        settings.borrow_and_update();
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let my_epoch = self.journal.epoch();
        let batch_bytes = BATCH_TARGET.min(peer_max_frame - FRAME_OVERHEAD);
        // (last seq of a batch, its memory cost) for every unacknowledged batch.
        let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
        let mut in_flight_bytes = 0u64;
        // Where the peer stands: every record of ours below it that is for
        // it is in its inbox (as far as what we sent goes).
        let mut cursor = resume.from;
        // The record we are holding on (too big for the peer), if any.
        let mut held: Option<u64> = None;
        let peer_max_message = peer_max_frame - FRAME_OVERHEAD;
        if let Some((from, to)) = resume.lost {
            let why = "its inbox went back in time (restored from a backup?) past what we kept \
                       after it had acknowledged them";
            self.report_lost(&mut sink, my_epoch, (from, to), why)
                .await?;
            in_flight.push_back((to - 1, RECORD_MEMORY));
            in_flight_bytes += RECORD_MEMORY;
            cursor = to;
        }
        let mut reader = Cursor::new(&self.journal, Log::Outbox, cursor.max(resume.read_at));
        loop {
            // A close request wins over more data: under a steady stream
            // the select below is rarely reached, and SIGTERM must still
            // close the link with "going away" at once.
            if let Ok(why) = failed.try_recv() {
                return close_session(&mut sink, CloseReason::Storage(why)).await;
            }
            match close.try_recv() {
                Ok(reason) => return close_session(&mut sink, reason).await,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return close_session(&mut sink, CloseReason::GoingAway).await;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            if self.timers().0 != heartbeat {
                heartbeat = self.timers().0;
                ping = tokio::time::interval(heartbeat);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            let acked_to = *acked.borrow_and_update();
            while in_flight.front().is_some_and(|(last, _)| *last < acked_to) {
                if let Some((_, b)) = in_flight.pop_front() {
                    in_flight_bytes -= b;
                }
            }
            let window_open = in_flight_bytes < WINDOW_BYTES && in_flight.len() < WINDOW_BATCHES;
            if window_open {
                let read = reader
                    .read_outbox(batch_bytes, &self.peer)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some((from, to)) = read.lost {
                    // Tombstones: records `peerd journal repair` dropped.
                    let why = "`peerd journal repair` dropped them from our outbox as damaged";
                    self.report_lost(&mut sink, my_epoch, (from.max(cursor), to), why)
                        .await?;
                    cursor = to;
                    reader.seek(to);
                    in_flight.push_back((to - 1, RECORD_MEMORY));
                    in_flight_bytes += RECORD_MEMORY;
                    continue;
                }
                let mut records = read.records;
                let mut upto = read.next;
                // A record the operator dropped, or one the peer cannot
                // take, stops the batch: what comes before it goes now.
                let dropped = self.journal.dropped(&self.peer);
                let stop = records.iter().position(|r| {
                    dropped.contains(&r.seq) || r.body.len() as u64 > peer_max_message
                });
                let mut stopper = None;
                if let Some(i) = stop {
                    let r = &records[i];
                    stopper = Some((r.seq, r.body.len()));
                    upto = r.seq;
                    records.truncate(i);
                }
                if upto > cursor {
                    // Records for the peer, and the stretch they come from
                    // (the rest of it is for other peers).
                    let bytes = body_bytes(&records);
                    let cost = memory_cost(&records) + RECORD_MEMORY;
                    let n = records.len() as u64;
                    send(
                        &mut sink,
                        &PeerFrame::Data {
                            epoch: my_epoch,
                            from: cursor,
                            next: upto,
                            records,
                        },
                    )
                    .await?;
                    in_flight.push_back((upto - 1, cost));
                    in_flight_bytes += cost;
                    cursor = upto;
                    reader.seek(upto);
                    if n > 0 {
                        self.journal.count_sent(&self.peer, n, bytes);
                    }
                    if stopper.is_none() && held.take().is_some() {
                        self.board.update(|s| s.held = None);
                    }
                    continue;
                }
                if let Some((seq, len)) = stopper {
                    if dropped.contains(&seq) {
                        let why = "the operator dropped it (`peerctl drop`)";
                        self.report_lost(&mut sink, my_epoch, (seq, seq + 1), why)
                            .await?;
                        cursor = seq + 1;
                        reader.seek(seq + 1);
                        in_flight.push_back((seq, RECORD_MEMORY));
                        in_flight_bytes += RECORD_MEMORY;
                        continue;
                    }
                    if held != Some(seq) {
                        held = Some(seq);
                        let why = format!(
                            "message {seq} ({len} bytes) is larger than {}'s max_message ({} \
                             bytes): raise max_message on {} or drop that message with \
                             `peerctl drop --peer {} {seq}`",
                            self.peer, peer_max_message, self.peer, self.peer
                        );
                        tracing::warn!(peer = %self.peer, "queue held: {why}");
                        self.board.update(|s| s.held = Some(why));
                    }
                }
            }
            tokio::select! {
                reason = &mut close => {
                    return close_session(&mut sink, reason.unwrap_or(CloseReason::GoingAway)).await;
                }
                Ok(why) = &mut failed => {
                    return close_session(&mut sink, CloseReason::Storage(why)).await;
                }
                Ok(()) = ack_out.changed() => {
                    let next = *ack_out.borrow_and_update();
                    send(&mut sink, &PeerFrame::Ack { epoch: peer_epoch, next }).await?;
                }
                Ok(()) = acked.changed() => {}
                Ok(()) = settings.changed() => {}
                true = reader.wait(), if window_open => {}
                _ = ping.tick() => {
                    let stamp = now_us().to_be_bytes();
                    sink.send(Message::Ping(stamp.to_vec().into())).await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}

/// Where a session starts sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Where the peer stands: what it expects next from us.
    pub from: u64,
    /// Records it expects that are gone here (reported as lost first).
    pub lost: Option<(u64, u64)>,
    /// Where our outbox starts (reading starts at `from` or here).
    pub read_at: u64,
}

/// Where to resume, from the peer's Hello (`expects`: the epoch and seq
/// it expects of ours), what the peer had acknowledged before (`acked`)
/// and where our outbox starts (`first`). Pure, so the cases are tested.
///
/// When the peer knows our epoch it stands at what it expects. Records
/// below our outbox start are deleted; those it had acknowledged and now
/// expects again are lost to it (its inbox went back in time); any others
/// were for other peers (a segment is only deleted when every peer with
/// something queued in it has it). When it does not know our epoch, it
/// starts over with us from our oldest record it has not acknowledged.
pub fn resume(my_epoch: u64, expects: (u64, u64), acked: u64, first: u64) -> Resume {
    let (epoch, next) = expects;
    if epoch != my_epoch {
        let from = acked.max(first);
        return Resume {
            from,
            lost: None,
            read_at: from,
        };
    }
    let lost_end = acked.min(first);
    Resume {
        from: next,
        lost: (next < lost_end).then_some((next, lost_end)),
        read_at: next.max(first),
    }
}

impl Session {
    /// `heartbeat` and `dead_after` as they are now (a reload may have
    /// changed them).
    fn timers(&self) -> (Duration, Duration) {
        let cur = self.settings.borrow();
        (cur.cfg.heartbeat, cur.cfg.dead_after)
    }

    /// Tell the peer our records `from..next` are gone (`why`), log it and
    /// count it (once, whichever session tells it).
    async fn report_lost(
        &self,
        sink: &mut SplitSink<Ws, Message>,
        epoch: u64,
        (from, next): (u64, u64),
        why: &str,
    ) -> Result<(), String> {
        let n = self.journal.count_lost(&self.peer, from, next);
        if n > 0 {
            tracing::error!(
                peer = %self.peer,
                "{} expects our messages {from}..{}, which we no longer have: {why}. They are \
                 lost to it ({n} messages); exactly-once delivery of them cannot be kept",
                self.peer,
                next - 1
            );
            self.board.update(|s| s.msgs_lost_since_start += n);
            self.board.error(&format!(
                "our messages {from}..{} are lost to {} (see the log)",
                next - 1,
                self.peer
            ));
        }
        send(sink, &PeerFrame::Lost { epoch, from, next }).await
    }
}

/// Send the close frame for `reason` (bounded: the peer may be stuck); `Ok`
/// with why, to end the session.
async fn close_session(
    sink: &mut SplitSink<Ws, Message>,
    reason: CloseReason,
) -> Result<String, String> {
    let (code, why) = match reason {
        CloseReason::Duplicate => (CLOSE_DUPLICATE, "duplicate link".to_string()),
        CloseReason::GoingAway => (1001, "going away".to_string()),
        CloseReason::Storage(why) => (CLOSE_STORAGE, why),
    };
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: close_reason_text(&why).into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
    Ok(match code {
        CLOSE_STORAGE => format!("paused: our {why}"),
        _ => format!("closed: {why}"),
    })
}

/// A close frame's reason holds at most 123 bytes.
fn close_reason_text(why: &str) -> &str {
    let mut n = why.len().min(123);
    while !why.is_char_boundary(n) {
        n -= 1;
    }
    &why[..n]
}

/// Wait for each inbox write in order and publish the ack it earns. A write
/// that fails hands its reason to the send loop, which closes the session
/// with it; nothing after it is acked.
async fn acks(
    mut pending: mpsc::Receiver<Pending>,
    ack_out: watch::Sender<u64>,
    failed: oneshot::Sender<String>,
) {
    while let Some(write) = pending.recv().await {
        match write.await {
            Ok(next) => {
                ack_out.send_replace(next);
            }
            Err(e) => {
                let _ = failed.send(storage_reason(&e));
                break;
            }
        }
    }
    // The receive or send loop ends the session.
    std::future::pending().await
}

/// Why our journal cannot take the peer's records, as the close reason
/// the peer shows: "journal full: ..." when the disk is full.
fn storage_reason(e: &JournalError) -> String {
    let text = match e {
        JournalError::Storage(why) => why.clone(),
        e => e.to_string(),
    };
    if text.contains("No space left") || text.contains("os error 28") {
        format!("journal full ({text})")
    } else {
        format!("journal cannot store ({text})")
    }
}

async fn send(sink: &mut SplitSink<Ws, Message>, frame: &PeerFrame) -> Result<(), String> {
    let bytes = frame.encode().map_err(|e| e.to_string())?;
    sink.send(Message::Binary(bytes.into()))
        .await
        .map_err(|e| e.to_string())
}

/// Bytes of memory `records` hold while they wait to be stored.
fn memory_cost(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| r.body.len() as u64 + RECORD_MEMORY)
        .sum()
}

fn body_bytes(records: &[Record]) -> u64 {
    records.iter().map(|r| r.body.len() as u64).sum()
}

fn now_us() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::{Resume, resume};

    #[test]
    fn resume_points() {
        // A peer that knows our epoch stands where it says.
        assert_eq!(
            resume(7, (7, 40), 30, 1),
            Resume {
                from: 40,
                lost: None,
                read_at: 40
            }
        );
        // Records below our outbox start it never acknowledged were for
        // other peers: no loss, it just moves past them.
        assert_eq!(
            resume(7, (7, 40), 40, 100),
            Resume {
                from: 40,
                lost: None,
                read_at: 100
            }
        );
        // It acknowledged up to 90 before and now expects 40 again: what
        // is gone of that is lost to it.
        assert_eq!(
            resume(7, (7, 40), 90, 60),
            Resume {
                from: 40,
                lost: Some((40, 60)),
                read_at: 60
            }
        );
        // A peer that does not know our epoch starts over with us.
        assert_eq!(
            resume(7, (3, 5), 30, 10),
            Resume {
                from: 30,
                lost: None,
                read_at: 30
            }
        );
    }
}
