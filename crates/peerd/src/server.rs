//! The control server: `peerctl`'s side of the control socket (protocol in
//! `peerlink::control`). One task per client; a misbehaving client gets an
//! error reply and is disconnected, and nothing it does reaches another
//! client or the links.
//!
//! Requests are pipelined: a client may send many `Send`s without waiting,
//! and replies come back in order. A `Tail` turns the connection into a
//! stream that reads the journal at the client's own pace, so a slow reader
//! holds no buffer and stalls nobody.
//!
//! Bounds: at most [`MAX_CLIENTS`] connections at once (more are closed at
//! once, logged once per episode); the first frame (Hello) must come
//! within `handshake_timeout`; every frame is at most `MAX_FRAME`; at most
//! [`MAX_PIPELINED`] requests of one client wait for their replies before
//! its next request is read.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use futures_util::stream::{FuturesOrdered, StreamExt};
use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use peerlink::control::{
    ErrorKind, MAX_FRAME, PROTOCOL_VERSION, Request, Response, Status, TailStart,
};
use peerlink::endpoint::{RecvHalf, SendHalf};
use peerlink::frame::{self, FrameError, Reader, Writer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::journal::{Journal, JournalError};
use crate::status::PeerBoard;

/// Entries per `Entries` reply while catching up.
const TAIL_CHUNK: usize = 1000;
/// Control connections served at once.
pub const MAX_CLIENTS: usize = 256;
/// Requests of one client whose replies may be pending at once.
pub const MAX_PIPELINED: usize = 64;

/// What the control server answers from.
pub struct Control {
    pub cfg: Arc<Config>,
    pub journal: Journal,
    pub boards: Vec<PeerBoard>,
    pub started_ms: u64,
    pub listen: String,
    pub socket: String,
    pub state_dir: String,
}

/// Serve clients until `shutdown`.
pub async fn run(
    listener: Listener,
    ctx: Arc<Control>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut refused_logged = false;
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok(conn) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    if !refused_logged {
                        tracing::warn!(
                            "too many control clients ({MAX_CLIENTS}); closing new ones until some leave"
                        );
                        refused_logged = true;
                    }
                    drop(conn);
                    continue;
                };
                refused_logged = false;
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = serve(conn, &ctx) => {}
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

type Replies = std::pin::Pin<Box<dyn Future<Output = Vec<Response>> + Send>>;

async fn serve(conn: Stream, ctx: &Control) {
    let (rx, tx) = peerlink::endpoint::split(conn);
    let mut reader = frame::reader(rx, MAX_FRAME);
    let mut writer = frame::writer(tx, MAX_FRAME);
    // Hello first, and soon: a client that connects and says nothing does
    // not get to hold a connection.
    let first = tokio::time::timeout(
        ctx.cfg.handshake_timeout,
        frame::recv::<Request, _>(&mut reader),
    )
    .await;
    let Ok(first) = first else {
        tracing::info!(
            "control client sent no Hello within {}; closed",
            humantime::format_duration(ctx.cfg.handshake_timeout)
        );
        return;
    };
    match first {
        Ok(Some(Request::Hello { version, .. })) if version == PROTOCOL_VERSION => {
            let hello = Response::Hello {
                version: PROTOCOL_VERSION,
                daemon_version: peerlink::VERSION.to_string(),
                instance: ctx.cfg.instance.clone(),
            };
            if frame::send(&mut writer, &hello).await.is_err() {
                return;
            }
        }
        Ok(Some(Request::Hello { version, .. })) => {
            let message = format!(
                "control protocol version mismatch: peerctl speaks {version}, peerd {} speaks {PROTOCOL_VERSION}",
                peerlink::VERSION
            );
            let _ = frame::send(
                &mut writer,
                &Response::Error {
                    kind: ErrorKind::Version,
                    message,
                },
            )
            .await;
            return;
        }
        Ok(Some(_)) => {
            return bad_request(&mut writer, "the first request must be Hello".into()).await;
        }
        Ok(None) => return,
        Err(e) => return bad_request(&mut writer, e.to_string()).await,
    }
    let mut replies: FuturesOrdered<Replies> = FuturesOrdered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            req = frame::recv::<Request, _>(&mut reader), if reading && replies.len() < MAX_PIPELINED => match req {
                Ok(None) => reading = false,
                Err(FrameError::Io(_)) => return,
                Err(e) => {
                    flush_replies(&mut replies, &mut writer).await;
                    return bad_request(&mut writer, e.to_string()).await;
                }
                Ok(Some(Request::Send { bodies, wait })) => replies.push_back(Box::pin(send(ctx.journal.clone(), ctx.cfg.max_message, bodies, wait))),
                Ok(Some(Request::Drop { peer, seq })) => {
                    let out = drop_record(ctx, peer, seq);
                    replies.push_back(Box::pin(async move { vec![out] }));
                }
                Ok(Some(Request::Status)) => {
                    let status = status(ctx);
                    replies.push_back(Box::pin(async move { vec![Response::Status(Box::new(status))] }));
                }
                Ok(Some(Request::Tail { start, follow })) => {
                    flush_replies(&mut replies, &mut writer).await;
                    return tail(ctx, start, follow, reader, writer).await;
                }
                Ok(Some(Request::Hello { .. })) => {
                    flush_replies(&mut replies, &mut writer).await;
                    return bad_request(&mut writer, "Hello sent twice".into()).await;
                }
            },
            Some(out) = replies.next() => {
                for r in &out {
                    if frame::send(&mut writer, r).await.is_err() {
                        return;
                    }
                }
            }
            else => return,
        }
    }
}

async fn flush_replies(replies: &mut FuturesOrdered<Replies>, writer: &mut Writer<SendHalf>) {
    while let Some(out) = replies.next().await {
        for r in &out {
            let _ = frame::send(writer, r).await;
        }
    }
}

async fn bad_request(writer: &mut Writer<SendHalf>, message: String) {
    tracing::info!("control client refused: {message}");
    let _ = frame::send(
        writer,
        &Response::Error {
            kind: ErrorKind::BadRequest,
            message,
        },
    )
    .await;
}

async fn send(
    journal: Journal,
    max_message: u64,
    bodies: Vec<Vec<u8>>,
    wait: bool,
) -> Vec<Response> {
    if let Some((i, b)) = bodies
        .iter()
        .enumerate()
        .find(|(_, b)| b.len() as u64 > max_message)
    {
        let message = format!(
            "message {} is {} bytes, over max_message ({max_message} bytes); nothing in this batch was queued",
            i + 1,
            b.len()
        );
        return vec![Response::Error {
            kind: ErrorKind::Rejected,
            message,
        }];
    }
    if bodies.is_empty() {
        let next = *journal.watch_outbox().borrow();
        return vec![Response::Sent {
            first: next,
            last: next - 1,
        }];
    }
    let mut acked = journal.watch_acked();
    match journal.append_outbox(bodies).await {
        Ok((first, last)) => {
            let mut out = vec![Response::Sent { first, last }];
            if wait {
                if acked.wait_for(|v| *v > last).await.is_err() {
                    out.push(Response::Error {
                        kind: ErrorKind::ShuttingDown,
                        message: "daemon shutting down".into(),
                    });
                } else {
                    out.push(Response::Delivered { upto: last });
                }
            }
            out
        }
        Err(e @ JournalError::OutboxFull { .. }) => vec![Response::Error {
            kind: ErrorKind::OutboxFull,
            message: e.to_string(),
        }],
        Err(e @ JournalError::Closed) => vec![Response::Error {
            kind: ErrorKind::ShuttingDown,
            message: e.to_string(),
        }],
        Err(
            e @ (JournalError::Storage(_) | JournalError::Corrupt(_) | JournalError::Gap { .. }),
        ) => vec![Response::Error {
            kind: ErrorKind::Internal,
            message: e.to_string(),
        }],
    }
}

/// `peerctl drop`: the operator gives up on one queued message for a peer.
fn drop_record(ctx: &Control, peer: String, seq: u64) -> Response {
    if !ctx.cfg.peers.iter().any(|p| p.name == peer) {
        let names: Vec<&str> = ctx.cfg.peers.iter().map(|p| p.name.as_str()).collect();
        return Response::Error {
            kind: ErrorKind::Rejected,
            message: format!("no peer {peer:?}; the peers are {}", names.join(", ")),
        };
    }
    match ctx.journal.drop_record(&peer, seq) {
        Ok(()) => {
            tracing::warn!(
                peer = %peer,
                "the operator dropped queued message {seq} for {peer} (peerctl drop): it will not \
                 be delivered, and {peer} is told it is lost"
            );
            Response::Dropped { peer, seq }
        }
        Err(message) => Response::Error {
            kind: ErrorKind::Rejected,
            message,
        },
    }
}

fn status(ctx: &Control) -> Status {
    let peers = ctx
        .boards
        .iter()
        .map(|b| {
            let mut s = b.snapshot();
            let (msgs, bytes, oldest) = ctx.journal.queued(&s.name);
            s.queued_msgs = msgs;
            s.queued_bytes = bytes;
            s.oldest_queued_ms = oldest;
            // Traffic counters live in the journal, so they survive restarts.
            let c = ctx.journal.counters(&s.name);
            s.msgs_sent = c.msgs_sent;
            s.bytes_sent = c.bytes_sent;
            s.msgs_received = c.msgs_received;
            s.bytes_received = c.bytes_received;
            s.msgs_lost = c.msgs_lost;
            s
        })
        .collect();
    Status {
        instance: ctx.cfg.instance.clone(),
        node: ctx.cfg.node.clone(),
        version: peerlink::VERSION.to_string(),
        pid: std::process::id(),
        started_ms: ctx.started_ms,
        now_ms: peerlink::now_ms(),
        listen: ctx.listen.clone(),
        socket: ctx.socket.clone(),
        state_dir: ctx.state_dir.clone(),
        journal: ctx.journal.status(),
        peers,
    }
}

/// Stream inbox entries from `start`, then (with `follow`) live ones.
async fn tail(
    ctx: &Control,
    start: TailStart,
    follow: bool,
    mut reader: Reader<RecvHalf>,
    mut writer: Writer<SendHalf>,
) {
    let mut watch = ctx.journal.watch_inbox();
    let head = *watch.borrow_and_update();
    let mut next = match start {
        TailStart::From(seq) => seq.max(1),
        TailStart::Last(n) => head.saturating_sub(n).max(1),
    };
    let mut caught_up = false;
    loop {
        let read = match ctx
            .journal
            .read_inbox(next, TAIL_CHUNK, (MAX_FRAME / 2) as u64)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("tail: {e}");
                let _ = frame::send(
                    &mut writer,
                    &Response::Error {
                        kind: ErrorKind::Internal,
                        message: e.to_string(),
                    },
                )
                .await;
                return;
            }
        };
        if read.first > next {
            // Only a gap in what was asked for: history before the inbox
            // began at 1 was never there to lose.
            let gap = Response::Gap {
                from: next,
                resume_at: read.first,
            };
            if frame::send(&mut writer, &gap).await.is_err() {
                return;
            }
            next = read.first;
        }
        if read.next > next {
            // (Loss notices and tombstones move `next` without entries.)
            next = read.next;
            if !read.entries.is_empty()
                && frame::send(&mut writer, &Response::Entries(read.entries))
                    .await
                    .is_err()
            {
                return;
            }
            continue;
        }
        if !caught_up {
            caught_up = true;
            if frame::send(&mut writer, &Response::CaughtUp { next })
                .await
                .is_err()
                || !follow
            {
                return;
            }
        }
        // Wait for more, or for the client to go away.
        tokio::select! {
            changed = watch.changed() => if changed.is_err() { return },
            r = frame::recv::<Request, _>(&mut reader) => {
                if let Ok(Some(_)) = r {
                    bad_request(&mut writer, "no requests are taken while tailing".into()).await;
                }
                return;
            }
        }
    }
}
