//! The control protocol between `peerctl` and `peerd`.
//!
//! # Wire format
//!
//! | layer   | what                                                          |
//! |---------|---------------------------------------------------------------|
//! | socket  | Unix socket (named pipe `peerd-<i>` on Windows), see `paths`  |
//! | frame   | 4-byte big-endian length, then the body ([`crate::frame`])    |
//! | body    | one [`Request`] or [`Response`], [`crate::codec`]-encoded     |
//!
//! # Conversation
//!
//! 1. The client sends [`Request::Hello`] with [`PROTOCOL_VERSION`]; the
//!    daemon answers [`Response::Hello`] with its own. Versions must be
//!    equal; on a mismatch the daemon replies [`ErrorKind::Version`] and
//!    closes, and `peerctl` says which versions differ. The Hello is the
//!    one message whose layout is frozen across versions (it is the first
//!    variant of each enum), so the mismatch is always readable.
//! 2. Then any number of requests. Replies come in request order, so a
//!    client may pipeline (`peerctl send` streams batches without waiting).
//!    - `Send` → `Sent` once the bodies are durable in the outbox, and with
//!      `wait` a later `Delivered` once every peer has acknowledged them.
//!    - `Tail` → `Entries` (possibly several), `Gap` where history was
//!      trimmed or a follower fell behind, `CaughtUp` once the history is
//!      out; with `follow`, `Entries` keep coming until the client closes.
//!    - `Status` → `Status`.
//!    - `Reload` → `Reloaded` once the daemon re-read its config and
//!      applied it or refused it (the same as SIGHUP).
//!
//! # Limits and trust
//!
//! The socket is mode 0600 (0660 under a service manager): whoever can open
//! it may send and read messages. Even so, every frame is bounded, and the
//! length prefix is checked before the body is read: a request by
//! [`request_limit`] of the daemon's `max_message` (which its Hello states,
//! so `peerctl` refuses a too-big message itself, naming `max_message`), a
//! response by [`MAX_FRAME`]. A frame over the limit, an undecodable frame
//! or an unexpected request gets an [`Response::Error`] and the connection
//! is closed, while the daemon and its other clients carry on.
//!
//! Every message up to `max_message` fits in one frame: a `Send` of one
//! body, and a `Tail`'s `Entries` (the daemon puts at most
//! [`TAIL_BATCH_BYTES`] of bodies in one, or a single entry of any size).

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to [`Request`] or [`Response`].
/// 2: [`Response::Hello`] states the daemon's `max_message`; `Status` has
/// the journal's storage error, loss counters, peer limits and held queues;
/// `Drop`; `Send` has `to` and `Tail` `origin`. 3: `Reload`; `Status` has
/// the last reload and each peer's secret id.
pub const PROTOCOL_VERSION: u32 = 3;

/// The largest `max_message` a daemon may be configured with.
pub const MAX_MESSAGE_LIMIT: u64 = 64 * 1024 * 1024;

/// Room in a frame for everything but message bodies: the frame's value,
/// and per body its length and (for `Entries`) its fields.
pub const FRAME_OVERHEAD: usize = 1024 * 1024;

/// How many bytes of bodies `peerctl` puts in one `Send` request (one body
/// larger than this goes alone).
pub const SEND_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// How many bytes of bodies the daemon puts in one `Entries` reply (one
/// entry larger than this goes alone).
pub const TAIL_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Largest control frame either side sends, and the largest response
/// `peerctl` accepts: one message of the largest `max_message`, or a batch,
/// plus overhead.
pub const MAX_FRAME: usize = MAX_MESSAGE_LIMIT as usize + FRAME_OVERHEAD;

/// Largest request a daemon with this `max_message` reads: a `Send` of one
/// message that size, or a batch of [`SEND_BATCH_BYTES`], plus overhead.
pub fn request_limit(max_message: u64) -> usize {
    let max_message = max_message.min(MAX_MESSAGE_LIMIT) as usize;
    max_message.max(SEND_BATCH_BYTES) + FRAME_OVERHEAD
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Must be first; states the client's protocol version.
    Hello { version: u32, client: String },
    /// Append these messages to the outbox, for the peers in `to` (every
    /// peer when empty).
    Send {
        #[serde(with = "crate::codec::byte_lists")]
        bodies: Vec<Vec<u8>>,
        wait: bool,
        to: Vec<String>,
    },
    /// Read the inbox (only what came from `origin`, when given).
    Tail {
        start: TailStart,
        follow: bool,
        origin: Option<String>,
    },
    /// The daemon's and its links' state.
    Status,
    /// Never send queued message `seq` to `peer` (one it cannot take);
    /// the peer is told it is lost.
    Drop { peer: String, seq: u64 },
    /// Re-read the config and apply what can change live (like SIGHUP).
    Reload,
}

/// Where a `Tail` starts reading the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TailStart {
    /// The last N messages (N = 0: only new ones).
    Last(u64),
    /// From this inbox sequence number on.
    From(u64),
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        version: u32,
        daemon_version: String,
        instance: String,
        /// The daemon's `max_message`: larger messages are refused.
        max_message: u64,
    },
    /// The bodies of one `Send` are durable with outbox sequence numbers
    /// `first..=last` (`first > last` for an empty request).
    Sent {
        first: u64,
        last: u64,
    },
    /// Every peer has acknowledged everything up to and including `upto`.
    Delivered {
        upto: u64,
    },
    Entries(Vec<Entry>),
    /// Messages `from..resume_at` are not available (trimmed by retention,
    /// or the follower fell too far behind); reading resumes at `resume_at`.
    Gap {
        from: u64,
        resume_at: u64,
    },
    /// History is out; with `follow`, live messages follow.
    CaughtUp {
        next: u64,
    },
    Status(Box<Status>),
    /// A `Drop` was done.
    Dropped {
        peer: String,
        seq: u64,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// What the reload asked for did.
    Reloaded(ReloadReport),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// When it happened (ms since the epoch).
    pub at_ms: u64,
    /// Applied (true), or refused whole with the old config kept.
    pub applied: bool,
    /// What changed, one line each (empty: nothing did).
    pub changes: Vec<String>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// Why a request failed; `peerctl` maps these to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Protocol versions differ.
    Version,
    /// Undecodable, oversized or unexpected frame.
    BadRequest,
    /// A message is larger than `max_message` or empty.
    Rejected,
    /// The outbox is at `outbox_limit`.
    OutboxFull,
    /// The daemon is shutting down.
    ShuttingDown,
    /// Something inside the daemon failed (disk, ...).
    Internal,
}

/// One received message, as `tail` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in this node's inbox (what `tail --from` takes).
    pub seq: u64,
    /// When this node received it (ms since the epoch).
    pub received_ms: u64,
    /// When the sender accepted it (ms since the epoch).
    pub sent_ms: u64,
    /// Who sent it: a peer's node name or `client:<addr>`.
    pub origin: String,
    /// The sender's sequence number (0 for plain clients).
    pub origin_seq: u64,
    #[serde(with = "crate::codec::bytes")]
    pub body: Vec<u8>,
}

/// An [`Entry`] read in place from a received frame: the origin and body
/// point into the frame, so a client showing a batch copies and allocates
/// nothing per entry. Same fields, same order, same encoding as [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct EntryRef<'a> {
    pub seq: u64,
    pub received_ms: u64,
    pub sent_ms: u64,
    pub origin: &'a str,
    pub origin_seq: u64,
    pub body: &'a [u8],
}

impl<'a> From<&'a Entry> for EntryRef<'a> {
    fn from(e: &'a Entry) -> Self {
        EntryRef {
            seq: e.seq,
            received_ms: e.received_ms,
            sent_ms: e.sent_ms,
            origin: &e.origin,
            origin_seq: e.origin_seq,
            body: &e.body,
        }
    }
}

/// If `frame` holds a [`Response::Entries`], its entries read in place;
/// `None` for any other response (decode those with [`codec::decode`]).
/// The wire format is [`Response`]'s: this only reads it without copying.
///
/// [`codec::decode`]: crate::codec::decode
pub fn entries_view(frame: &[u8]) -> Option<Result<Vec<EntryRef<'_>>, crate::codec::CodecError>> {
    // The variant's tag, as the codec writes it: an empty `Entries` is the
    // tag followed by a zero length (one byte).
    static TAG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let tag = TAG.get_or_init(|| {
        let mut t = crate::codec::encode(&Response::Entries(Vec::new())).unwrap_or_default();
        t.pop();
        t
    });
    if tag.is_empty() {
        return None;
    }
    let rest = frame.strip_prefix(tag.as_slice())?;
    Some(crate::codec::decode_borrowed(rest))
}

/// `peerctl status`: the daemon and each of its links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub node: String,
    pub version: String,
    pub pid: u32,
    pub started_ms: u64,
    pub now_ms: u64,
    pub listen: String,
    pub socket: String,
    pub state_dir: String,
    pub journal: JournalStatus,
    pub peers: Vec<PeerStatus>,
    /// The last reload since start, if any.
    pub last_reload: Option<ReloadReport>,
}

/// Journal counters shown in status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStatus {
    pub durable: bool,
    pub epoch: u64,
    /// Next outbox sequence number to be assigned.
    pub outbox_next: u64,
    /// Next inbox sequence number to be assigned.
    pub inbox_next: u64,
    /// Oldest inbox sequence number still kept.
    pub inbox_first: u64,
    /// Why the last write to the journal failed (disk full, I/O error,
    /// read-only), until one succeeds again; and when.
    pub storage_error: Option<String>,
    pub storage_error_ms: Option<u64>,
}

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkState {
    Connected,
    Connecting,
    Backoff,
}

/// Who opened the live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// We dialled the peer.
    Outbound,
    /// The peer dialled us.
    Inbound,
}

/// One peer link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub url: String,
    pub state: LinkState,
    pub direction: Option<Direction>,
    pub remote_addr: Option<String>,
    /// Our end of the live session's TCP connection.
    pub local_addr: Option<String>,
    pub connected_since_ms: Option<u64>,
    pub last_handshake_ms: Option<u64>,
    pub rtt_us: Option<u64>,
    pub next_attempt_ms: Option<u64>,
    pub msgs_sent: u64,
    pub bytes_sent: u64,
    pub msgs_received: u64,
    pub bytes_received: u64,
    pub queued_msgs: u64,
    pub queued_bytes: u64,
    pub oldest_queued_ms: Option<u64>,
    pub reconnects: u64,
    /// Messages known lost between us and this peer, either way (kept in
    /// the journal), and how many of them since this daemon started.
    pub msgs_lost: u64,
    pub msgs_lost_since_start: u64,
    /// The largest message the peer takes (its `max_message`, from its
    /// last handshake); `None` until it has connected once.
    pub peer_max_message: Option<u64>,
    /// Why the queue to this peer is held (a message it cannot take), and
    /// how to unblock it.
    pub held: Option<String>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// The id of the secret the live session was authenticated with (see
    /// peerd's `auth`), and since when this node holds that secret.
    pub key_id: Option<String>,
    pub key_added_ms: Option<u64>,
}

impl PeerStatus {
    /// A link to `name` at `url` that has not connected yet.
    pub fn new(name: &str, url: &str) -> Self {
        PeerStatus {
            name: name.to_string(),
            url: url.to_string(),
            state: LinkState::Connecting,
            direction: None,
            remote_addr: None,
            local_addr: None,
            connected_since_ms: None,
            last_handshake_ms: None,
            rtt_us: None,
            next_attempt_ms: None,
            msgs_sent: 0,
            bytes_sent: 0,
            msgs_received: 0,
            bytes_received: 0,
            queued_msgs: 0,
            queued_bytes: 0,
            oldest_queued_ms: None,
            reconnects: 0,
            msgs_lost: 0,
            msgs_lost_since_start: 0,
            peer_max_message: None,
            held: None,
            last_error: None,
            last_error_ms: None,
            key_id: None,
            key_added_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn hello_layout_is_frozen() {
        // The version check only works if an old client can read a new
        // daemon's Hello: variant 0, then the version as a varint.
        let bytes = codec::encode(&Response::Hello {
            version: 1,
            daemon_version: "x".into(),
            instance: "a".into(),
            max_message: 1,
        })
        .unwrap();
        assert_eq!(&bytes[..2], &[0, 1]);
        let bytes = codec::encode(&Request::Hello {
            version: 1,
            client: String::new(),
        })
        .unwrap();
        assert_eq!(&bytes[..2], &[0, 1]);
    }

    #[test]
    fn every_message_up_to_max_message_fits_a_frame() {
        for max in [1, 1 << 20, 10 << 20, MAX_MESSAGE_LIMIT] {
            let send = Request::Send {
                bodies: vec![vec![0; max as usize]],
                wait: true,
                to: vec!["a-peer-name-of-32-characters-xyz".into(); 16],
            };
            let len = codec::encode(&send).unwrap().len();
            assert!(len <= request_limit(max) && len <= MAX_FRAME, "{max}");
        }
        // A tail reply: one entry of the largest size, or a batch of small
        // ones with long origins.
        let entry = |len: usize| Entry {
            seq: u64::MAX,
            received_ms: u64::MAX,
            sent_ms: u64::MAX,
            origin: format!("client:[{}]:65535", "ffff:".repeat(7) + "ffff"),
            origin_seq: u64::MAX,
            body: vec![0; len],
        };
        let one = Response::Entries(vec![entry(MAX_MESSAGE_LIMIT as usize)]);
        assert!(codec::encode(&one).unwrap().len() <= MAX_FRAME);
        let many = Response::Entries(vec![entry(TAIL_BATCH_BYTES / 1000); 1000]);
        assert!(codec::encode(&many).unwrap().len() <= MAX_FRAME);
    }

    #[test]
    fn entries_read_in_place_as_decoded() {
        let entries = vec![
            Entry {
                seq: 1,
                received_ms: 2,
                sent_ms: 3,
                origin: "b".into(),
                origin_seq: 4,
                body: b"hi".to_vec(),
            },
            Entry {
                seq: u64::MAX,
                received_ms: 1 << 40,
                sent_ms: 0,
                origin: "client:127.0.0.1:9".into(),
                origin_seq: 0,
                body: vec![0xff, 0, b'\n'],
            },
        ];
        let bytes = codec::encode(&Response::Entries(entries.clone())).unwrap();
        let view = entries_view(&bytes).unwrap().unwrap();
        let want: Vec<EntryRef> = entries.iter().map(EntryRef::from).collect();
        assert_eq!(view, want);
        let empty = codec::encode(&Response::Entries(Vec::new())).unwrap();
        assert_eq!(entries_view(&empty).unwrap().unwrap(), vec![]);
        for other in [
            Response::CaughtUp { next: 3 },
            Response::Gap {
                from: 1,
                resume_at: 2,
            },
        ] {
            assert!(entries_view(&codec::encode(&other).unwrap()).is_none());
        }
        // A truncated batch is an error, not a shorter batch.
        assert!(entries_view(&bytes[..bytes.len() - 1]).unwrap().is_err());
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Status,
            Request::Send {
                bodies: vec![b"hi".to_vec(), vec![]],
                wait: true,
                to: vec!["b".into()],
            },
            Request::Tail {
                start: TailStart::From(3),
                follow: true,
                origin: Some("b".into()),
            },
        ] {
            assert_eq!(
                codec::decode::<Request>(&codec::encode(&r).unwrap()).unwrap(),
                r
            );
        }
    }
}
