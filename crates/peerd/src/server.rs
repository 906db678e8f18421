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
//! within `handshake_timeout`; a request frame is at most
//! `control::request_limit(max_message)` (a `Send` of one message of
//! `max_message`, or a batch), checked before its body is read; at most
//! [`MAX_PIPELINED`] requests of one client wait for their replies before
//! its next request is read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use futures_util::stream::{FuturesOrdered, StreamExt};
use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use peerlink::control::{
    ErrorKind, MAX_FRAME, PROTOCOL_VERSION, ReloadReport, Request, Response, Status,
    TAIL_BATCH_BYTES, TailStart, request_limit,
};
use peerlink::endpoint::{RecvHalf, SendHalf};
use peerlink::frame::{self, FrameError, Reader, Writer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::journal::{Cursor, Journal, JournalError, Log};
use crate::reload::{self, Settings};

/// Entries per `Entries` reply while catching up.
const TAIL_CHUNK: usize = 1000;
/// Control connections served at once.
pub const MAX_CLIENTS: usize = 256;
/// Requests of one client whose replies may be pending at once.
pub const MAX_PIPELINED: usize = 64;

/// What the control server answers from.
pub struct Control {
    /// The config and the peer links of the moment (see `reload`).
    pub settings: Settings,
    pub journal: Journal,
    /// Where `peerctl reload` asks for a reload.
    pub reload: mpsc::Sender<reload::Ask>,
    /// What the last reload did.
    pub last_reload: Arc<Mutex<Option<ReloadReport>>>,
    pub started_ms: u64,
    pub listen: String,
    pub socket: String,
    pub state_dir: String,
}

impl Control {
    fn cfg(&self) -> Arc<Config> {
        self.settings.borrow().cfg.clone()
    }
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
    let mut reader = frame::reader(rx, request_limit(ctx.cfg().max_message));
    let mut writer = frame::writer(tx, MAX_FRAME);
    // Hello first, and soon: a client that connects and says nothing does
    // not get to hold a connection.
    let first = tokio::time::timeout(
        ctx.cfg().handshake_timeout,
        frame::recv::<Request, _>(&mut reader),
    )
    .await;
    let Ok(first) = first else {
        tracing::info!(
            "control client sent no Hello within {}; closed",
            humantime::format_duration(ctx.cfg().handshake_timeout)
        );
        return;
    };
    match first {
        Ok(Some(Request::Hello { version, .. })) if version == PROTOCOL_VERSION => {
            let hello = Response::Hello {
                version: PROTOCOL_VERSION,
                daemon_version: peerlink::VERSION.to_string(),
                instance: ctx.cfg().instance.clone(),
                max_message: ctx.cfg().max_message,
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
        Err(e) => return bad_request(&mut writer, frame_error(ctx, e)).await,
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
                    return bad_request(&mut writer, frame_error(ctx, e)).await;
                }
                // The append is queued here, in arrival order; only the
                // wait for its reply is deferred.
                Ok(Some(Request::Send { bodies, wait, to })) => {
                    // A place in the journal's queue first: waiting for it
                    // is the back-pressure when the disk is behind.
                    let slot = ctx.journal.reserve().await;
                    let (stored, delivered) = send(ctx, slot, bodies, wait, to);
                    replies.push_back(stored);
                    if let Some(d) = delivered {
                        replies.push_back(d);
                    }
                }
                Ok(Some(Request::Drop { peer, seq })) => {
                    let out = drop_record(ctx, peer, seq);
                    replies.push_back(Box::pin(async move { vec![out] }));
                }
                Ok(Some(Request::Reload)) => {
                    let (tx, rx) = oneshot::channel();
                    let asked = ctx.reload.send(reload::Ask { reply: Some(tx) }).await.is_ok();
                    replies.push_back(Box::pin(async move {
                        match (asked, rx.await) {
                            (true, Ok(report)) => vec![Response::Reloaded(report)],
                            _ => vec![Response::Error {
                                kind: ErrorKind::ShuttingDown,
                                message: "the daemon is shutting down; no reload".into(),
                            }],
                        }
                    }));
                }
                Ok(Some(Request::Status)) => {
                    let status = status(ctx);
                    replies.push_back(Box::pin(async move { vec![Response::Status(Box::new(status))] }));
                }
                Ok(Some(Request::Tail { start, follow, origin })) => {
                    flush_replies(&mut replies, &mut writer).await;
                    return tail(ctx, start, follow, origin, reader, writer).await;
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

/// What is wrong with a request frame, for the client: an oversized one
/// names `max_message`, which sets the limit.
fn frame_error(ctx: &Control, e: FrameError) -> String {
    match e {
        FrameError::TooLarge { limit } => format!(
            "request larger than {limit} bytes, the limit for max_message ({}) of instance {}",
            crate::units::Size(ctx.cfg().max_message),
            ctx.cfg().instance
        ),
        e => e.to_string(),
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

/// Check a `Send` request and queue its append to the journal now, so
/// pipelined requests get their sequence numbers in arrival order by
/// construction; the returned future waits for the replies.
/// Queue one `Send`: the reply once it is stored and, with `wait`, a
/// second one once every peer has it. `Sent` goes out as soon as the
/// messages are durable, not with `Delivered`, so a client whose daemon
/// goes away mid-wait knows they were stored (and will be delivered).
fn send(
    ctx: &Control,
    slot: crate::journal::Slot,
    bodies: Vec<Vec<u8>>,
    wait: bool,
    mut to: Vec<String>,
) -> (Replies, Option<Replies>) {
    to.sort();
    to.dedup();
    let refused = unknown_peer(&to, ctx)
        .or_else(|| refusal(&bodies, ctx.cfg().max_message, &ctx.cfg().instance))
        .or_else(|| peer_refusal(&bodies, &to, ctx));
    if let Some(message) = refused {
        let error = Response::Error {
            kind: ErrorKind::Rejected,
            message,
        };
        return (Box::pin(async move { vec![error] }), None);
    }
    let journal = &ctx.journal;
    if bodies.is_empty() {
        let next = *journal.watch_outbox().borrow();
        return (
            Box::pin(async move {
                vec![Response::Sent {
                    first: next,
                    last: next - 1,
                }]
            }),
            None,
        );
    }
    let mut acks = journal.watch_acks();
    let appended = journal.append_outbox(slot, bodies, to.clone());
    let waiting = journal.clone();
    let (stored_tx, stored_rx) = tokio::sync::oneshot::channel::<u64>();
    let delivered: Option<Replies> = wait.then(|| -> Replies {
        Box::pin(async move {
            // No `last`: the append failed, and its error was the reply.
            let Ok(last) = stored_rx.await else {
                return Vec::new();
            };
            if acks
                .wait_for(|_| waiting.delivered(&to, last))
                .await
                .is_err()
            {
                vec![Response::Error {
                    kind: ErrorKind::ShuttingDown,
                    message: "daemon shutting down".into(),
                }]
            } else {
                vec![Response::Delivered { upto: last }]
            }
        })
    });
    let stored = Box::pin(async move {
        match appended.await {
            Ok((first, last)) => {
                let _ = stored_tx.send(last);
                vec![Response::Sent { first, last }]
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
                e
                @ (JournalError::Storage(_) | JournalError::Corrupt(_) | JournalError::Gap { .. }),
            ) => vec![Response::Error {
                kind: ErrorKind::Internal,
                message: e.to_string(),
            }],
        }
    });
    (stored, delivered)
}

/// A message larger than a peer takes (its `max_message`, learned in the
/// handshake) is refused here, naming both limits, rather than queued to
/// hold that peer's queue.
fn peer_refusal(bodies: &[Vec<u8>], to: &[String], ctx: &Control) -> Option<String> {
    let biggest = bodies.iter().map(Vec::len).max()? as u64;
    let current = ctx.settings.borrow().clone();
    current.boards.iter().find_map(|b| {
        let s = b.snapshot();
        if !to.is_empty() && !to.contains(&s.name) {
            return None;
        }
        let limit = s.peer_max_message?;
        (biggest > limit).then(|| {
            format!(
                "a message of {biggest} bytes is larger than {}'s max_message ({}), though within \
                 this node's ({}); nothing was queued. Raise max_message on {} or send smaller \
                 messages",
                s.name,
                crate::units::Size(limit),
                crate::units::Size(ctx.cfg().max_message),
                s.name
            )
        })
    })
}

/// `send --to` a peer that is not configured: refused, naming the ones
/// that are.
fn unknown_peer(to: &[String], ctx: &Control) -> Option<String> {
    let cfg = ctx.cfg();
    let unknown: Vec<&str> = to
        .iter()
        .filter(|n| !cfg.peers.iter().any(|p| &&p.name == n))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return None;
    }
    let names: Vec<&str> = cfg.peers.iter().map(|p| p.name.as_str()).collect();
    Some(format!(
        "no peer named {}; the configured peers are: {}",
        unknown.join(", "),
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    ))
}

/// Why a batch of bodies is refused whole, if it is: an empty message
/// (never stored) or one over `max_message`.
fn refusal(bodies: &[Vec<u8>], max_message: u64, instance: &str) -> Option<String> {
    let (i, b) = bodies
        .iter()
        .enumerate()
        .find(|(_, b)| b.is_empty() || b.len() as u64 > max_message)?;
    let which = if bodies.len() > 1 {
        format!("message {} of this batch", i + 1)
    } else {
        "message".to_string()
    };
    let why = if b.is_empty() {
        format!("{which} is empty; empty messages are never stored")
    } else {
        format!(
            "{which} of {} bytes is larger than max_message ({}) of instance {instance}",
            b.len(),
            crate::units::Size(max_message)
        )
    };
    Some(if bodies.len() > 1 {
        format!("{why}; nothing in this batch was queued")
    } else {
        why
    })
}

/// `peerctl drop`: the operator gives up on one queued message for a peer.
fn drop_record(ctx: &Control, peer: String, seq: u64) -> Response {
    let cfg = ctx.cfg();
    if !cfg.peers.iter().any(|p| p.name == peer) {
        let names: Vec<&str> = cfg.peers.iter().map(|p| p.name.as_str()).collect();
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
    let current = ctx.settings.borrow().clone();
    let peers = current
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
        instance: ctx.cfg().instance.clone(),
        node: ctx.cfg().node.clone(),
        version: peerlink::VERSION.to_string(),
        pid: std::process::id(),
        started_ms: ctx.started_ms,
        now_ms: peerlink::now_ms(),
        listen: ctx.listen.clone(),
        socket: ctx.socket.clone(),
        state_dir: ctx.state_dir.clone(),
        journal: ctx.journal.status(),
        peers,
        last_reload: ctx
            .last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    }
}

/// Stream inbox entries from `start`, then (with `follow`) live ones.
async fn tail(
    ctx: &Control,
    start: TailStart,
    follow: bool,
    origin: Option<String>,
    mut reader: Reader<RecvHalf>,
    mut writer: Writer<SendHalf>,
) {
    let mut cursor = Cursor::new(&ctx.journal, Log::Inbox, 0);
    let head = cursor.end();
    cursor.seek(match (start, &origin) {
        (TailStart::From(seq), _) => seq.max(1),
        (TailStart::Last(n), None) => head.saturating_sub(n).max(1),
        (TailStart::Last(n), Some(o)) => {
            let (journal, o) = (ctx.journal.clone(), o.clone());
            tokio::task::spawn_blocking(move || journal.last_from(n, &o, head))
                .await
                .unwrap_or(Ok(head))
                .unwrap_or(head)
        }
    });
    let mut caught_up = false;
    loop {
        let at = cursor.next;
        let mut chunk = match cursor.read_inbox(TAIL_CHUNK, TAIL_BATCH_BYTES as u64).await {
            Ok(c) => c,
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
        if let Some((from, resume_at)) = chunk.gap {
            // Only a gap in what was asked for: history before the inbox
            // began at 1 was never there to lose.
            if frame::send(&mut writer, &Response::Gap { from, resume_at })
                .await
                .is_err()
            {
                return;
            }
        }
        if cursor.next > at.max(chunk.gap.map_or(0, |g| g.1)) {
            // (Loss notices and tombstones move the cursor without entries.)
            if let Some(o) = &origin {
                chunk.entries.retain(|e| &e.origin == o);
            }
            if !chunk.entries.is_empty()
                && frame::send(&mut writer, &Response::Entries(chunk.entries))
                    .await
                    .is_err()
            {
                return;
            }
            continue;
        }
        if !caught_up {
            caught_up = true;
            let next = cursor.next;
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
            more = cursor.wait() => if !more { return },
            r = frame::recv::<Request, _>(&mut reader) => {
                if let Ok(Some(_)) = r {
                    bad_request(&mut writer, "no requests are taken while tailing".into()).await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Options;

    fn control(dir: &std::path::Path, extra: &str) -> Control {
        let cfg = Config::parse("a", extra, "a.toml").unwrap();
        let journal = Journal::open(Options {
            dir: dir.to_path_buf(),
            peers: vec!["b".into()],
            outbox_limit_bytes: 1 << 30,
            outbox_limit_messages: 1 << 20,
            inbox_retention_bytes: 1 << 30,
            inbox_retention_age: None,
            fsync: false,
            segment_bytes: 1 << 20,
        })
        .unwrap();
        let current = crate::reload::Current {
            cfg: Arc::new(cfg),
            tls: Arc::new(crate::tls::Tls::none()),
            links: Default::default(),
            boards: Vec::new(),
            key_ages: Default::default(),
        };
        let (_, settings) = tokio::sync::watch::channel(Arc::new(current));
        Control {
            settings,
            journal,
            reload: tokio::sync::mpsc::channel(1).0,
            last_reload: Default::default(),
            started_ms: 0,
            listen: String::new(),
            socket: String::new(),
            state_dir: String::new(),
        }
    }

    #[tokio::test]
    async fn sends_are_numbered_in_the_order_they_arrive_whichever_reply_is_awaited_first() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = control(dir.path(), "");
        let (first, _) = send(
            &ctx,
            ctx.journal.reserve().await,
            vec![b"1".to_vec(), b"2".to_vec()],
            false,
            Vec::new(),
        );
        let (second, _) = send(
            &ctx,
            ctx.journal.reserve().await,
            vec![b"3".to_vec()],
            false,
            Vec::new(),
        );
        // The second reply is polled first: the numbers do not follow.
        assert_eq!(second.await, [Response::Sent { first: 3, last: 3 }]);
        assert_eq!(first.await, [Response::Sent { first: 1, last: 2 }]);
        ctx.journal.close().await;
    }

    #[tokio::test]
    async fn empty_and_oversized_messages_are_refused_naming_max_message() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = control(dir.path(), "max_message = \"1KiB\"");
        let refused = |r: Vec<Response>| match &r[..] {
            [
                Response::Error {
                    kind: ErrorKind::Rejected,
                    message,
                },
            ] => message.clone(),
            other => panic!("{other:?}"),
        };
        let m = refused(
            send(
                &ctx,
                ctx.journal.reserve().await,
                vec![vec![0; 1025]],
                false,
                Vec::new(),
            )
            .0
            .await,
        );
        assert_eq!(
            m,
            "message of 1025 bytes is larger than max_message (1KiB) of instance a"
        );
        let m = refused(
            send(
                &ctx,
                ctx.journal.reserve().await,
                vec![b"x".to_vec(), Vec::new()],
                false,
                Vec::new(),
            )
            .0
            .await,
        );
        assert_eq!(
            m,
            "message 2 of this batch is empty; empty messages are never stored; nothing in this batch was queued"
        );
        // Nothing of either was stored; exactly max_message is fine.
        assert_eq!(
            send(
                &ctx,
                ctx.journal.reserve().await,
                vec![vec![0; 1024]],
                false,
                Vec::new()
            )
            .0
            .await,
            [Response::Sent { first: 1, last: 1 }]
        );
        ctx.journal.close().await;
    }
}
