//! The peer protocol: what two `peerd`s say to each other over `/ws`.
//!
//! # Transport
//!
//! A WebSocket (`ws://` or `wss://`) upgrade at the configured `path` with
//! subprotocol [`SUBPROTOCOL`]. Every peer frame is one WebSocket **binary**
//! message holding one [`PeerFrame`] encoded by [`peerlink::codec`]. Pings
//! carry the sender's clock (8 bytes, big-endian microseconds) so the pong
//! measures RTT. Text messages are not part of the protocol.
//!
//! # Frames
//!
//! | frame   | when                          | carries                                             |
//! |---------|-------------------------------|-----------------------------------------------------|
//! | `Hello` | first frame each way          | node, [`WIRE_VERSION`], software, journal epoch, what it expects from the other (epoch, next seq), largest frame it takes, auth [`Nonce`] (or none: no secret), ids of the secrets it holds |
//! | `Auth`  | after both Hellos, with a secret | HMAC-SHA256 proof (`auth`), dialler's first     |
//! | `Data`  | after the handshake           | the sender's records `from..next` that are for the receiver (the rest of that stretch is addressed to other peers) |
//! | `Ack`   | after the handshake           | cumulative: every record of that epoch below `next` is durable |
//! | `Lost`  | after the handshake           | records `from..next` of the sender's epoch are gone and will never come |
//!
//! # Conversation
//!
//! All of the handshake is bounded by `handshake_timeout`.
//!
//! 1. The dialler sends its `Hello`. The listener checks it (version equal,
//!    a configured peer, not its own name, both sides with a secret or
//!    both without, and then a secret in common: `auth::agree`) and answers with its own `Hello`, or closes with
//!    [`CLOSE_PROTOCOL`] / [`CLOSE_AUTH`] and a reason.
//! 2. With a secret (both Hellos carry a nonce): the dialler sends
//!    `Auth { proof }`; the listener checks it **before** sending its own
//!    `Auth`, and closes with [`CLOSE_AUTH`] "authentication failed" if it
//!    does not verify; the dialler checks the listener's proof the same way.
//!    Only then is the session handed to the peer's link task. Without a
//!    secret on either side there is no `Auth` and the session starts
//!    after the Hellos. (Proofs: see `auth`.)
//! 3. Then, in both directions at once: `Data` and `Ack`.
//!
//! # Version rule
//!
//! [`WIRE_VERSION`] is bumped on any incompatible change to [`PeerFrame`];
//! both sides must state the same one. `Hello` stays variant 0 and starts
//! with `node` and `version` in every version, so a Hello that does not
//! decode still tells which version the peer speaks, and the refusal says
//! what differs. (Version 1 had no nonce and no `Auth`; version 2 no
//! `Lost`, and `Data` had no `from..next`; version 3 no key ids in the
//! Hello.)
//!
//! # Delivery rule
//!
//! The sender resumes from the receiver's `expect_next` when the receiver
//! knows its epoch, else from its oldest unacknowledged record; the receiver
//! drops records below its `next`, **refuses records past it** (a hole: an
//! earlier write failed, so the session ends and the sender resumes from
//! the `next` the receiver has durably), and acks only after the inbox
//! write is durable. Which of two colliding sessions survives never
//! matters: acks are by sequence, not by session.
//!
//! When the sender no longer has records the receiver expects (the
//! receiver's inbox went back in time past what the outbox still holds, or
//! `peerd journal repair` dropped damaged records), it sends `Lost { from,
//! next }` instead of skipping them silently: the receiver stores a loss
//! notice (moving its `next` past them in one durable write) and acks as
//! usual; both sides log the range and count it (`status`).
//!
//! # Close codes
//!
//! [`CLOSE_DUPLICATE`] (4000) "duplicate link" for the loser of a
//! collision; 1001 "going away" on shutdown; [`CLOSE_PROTOCOL`] (4001) for
//! a handshake that cannot go on (wrong version, unknown node, ...);
//! [`CLOSE_AUTH`] (4002) for a failed or impossible authentication (wrong
//! proof, or a secret on only one side); [`CLOSE_STORAGE`] (4003) from a
//! receiver whose journal cannot store (disk full, I/O error, read-only),
//! with the reason: the sender backs off and retries, and resumes from
//! what the receiver has stored once it can store again.
//!
//! # Limits
//!
//! A frame is at most the receiver's `max_frame` (from its Hello; derived
//! from `max_message`); larger WebSocket messages are refused by
//! tungstenite before they are buffered. The HTTP upgrade request is
//! bounded by tungstenite (64 KiB). Decoding goes through the codec's size
//! limit. The listener runs at most `max_pending_handshakes` handshakes at
//! once, each within `handshake_timeout`.
//!
//! # Trust boundary
//!
//! Everything before a verified `Auth` comes from an unknown party: it is
//! decoded with limits, checked, and never reaches the journal or the link
//! task; a failure is logged once with the remote address and closes only
//! that connection. The listener's `Hello` (node name, epoch, resume point)
//! is sent before the dialler is authenticated; it holds nothing secret.
//! After authentication the peer is trusted to send well-formed records,
//! but its frames are still bounded and decoded with limits. Without TLS
//! the session's bytes can be read or altered on the path: use `wss://`
//! across untrusted networks.

use serde::{Deserialize, Serialize};

use peerlink::codec::{self, CodecError};

use crate::auth::{KeyId, Nonce};

/// The WebSocket subprotocol a peer must ask for.
pub const SUBPROTOCOL: &str = "peerlink.v1";
/// Bumped on any incompatible change to [`PeerFrame`].
pub const WIRE_VERSION: u32 = 4;
/// Close code: this session lost the collision rule.
pub const CLOSE_DUPLICATE: u16 = 4000;
/// Close code: the handshake was refused.
pub const CLOSE_PROTOCOL: u16 = 4001;
/// Close code: authentication failed or cannot happen.
pub const CLOSE_AUTH: u16 = 4002;
/// Close code: the receiver's journal cannot store (reason follows).
pub const CLOSE_STORAGE: u16 = 4003;
/// Room for framing and per-record overhead on top of `max_message`.
pub const FRAME_OVERHEAD: u64 = 64 * 1024;
/// A sender stops adding records to a batch once it holds this many bytes.
pub const BATCH_TARGET: u64 = 256 * 1024;

/// One peer frame. `Hello` must stay variant 0 (see the version rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    Hello(Hello),
    /// The sender's records `from..next` that are for the receiver (the
    /// others in that stretch are for other peers: `send --to`).
    Data {
        epoch: u64,
        from: u64,
        next: u64,
        records: Vec<Record>,
    },
    Ack {
        epoch: u64,
        next: u64,
    },
    /// Proof of the secret over both Hellos (see `auth`).
    Auth {
        proof: Vec<u8>,
    },
    /// The sender's records `from..next` of `epoch` are gone.
    Lost {
        epoch: u64,
        from: u64,
        next: u64,
    },
}

/// The first frame each way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: String,
    pub version: u32,
    pub software: String,
    /// The sender's journal epoch (random, fixed for the journal's life).
    pub epoch: u64,
    /// The epoch of the receiver's records the sender has seen (0: none).
    pub expect_epoch: u64,
    /// The next sequence number of that epoch the sender expects.
    pub expect_next: u64,
    /// The largest frame the sender accepts.
    pub max_frame: u64,
    /// A fresh nonce when the sender has a secret; none when it has not.
    pub nonce: Option<Nonce>,
    /// The ids of the secrets the sender holds, preferred first (empty
    /// without a secret); see `auth` for which one is used.
    pub keys: Vec<KeyId>,
}

/// What every version's Hello starts with.
#[derive(Debug, Deserialize)]
struct HelloHead {
    node: String,
    version: u32,
}

#[derive(Debug, Deserialize)]
enum FrameHead {
    Hello(HelloHead),
}

/// One message of the sender's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// When the sender accepted it (ms since the Unix epoch).
    pub sent_ms: u64,
    #[serde(with = "peerlink::codec::bytes")]
    pub body: Vec<u8>,
}

impl PeerFrame {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }

    /// The frame's kind, for log lines.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerFrame::Hello(_) => "Hello",
            PeerFrame::Data { .. } => "Data",
            PeerFrame::Ack { .. } => "Ack",
            PeerFrame::Auth { .. } => "Auth",
            PeerFrame::Lost { .. } => "Lost",
        }
    }
}

/// The node name and version of a Hello that did not decode as this
/// version's, if it is a Hello at all.
pub fn hello_head(bytes: &[u8]) -> Option<(String, u32)> {
    match codec::decode_prefix::<FrameHead>(bytes) {
        Ok(FrameHead::Hello(h)) => Some((h.node, h.version)),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            PeerFrame::Hello(Hello {
                node: "a".into(),
                version: WIRE_VERSION,
                software: "0.1.0".into(),
                epoch: 42,
                expect_epoch: 7,
                expect_next: 3,
                max_frame: 1 << 20,
                nonce: Some([7; 32]),
                keys: vec![KeyId([1, 2, 3, 4])],
            }),
            PeerFrame::Data {
                epoch: 42,
                from: 1,
                next: 2,
                records: vec![Record {
                    seq: 1,
                    sent_ms: 5,
                    body: b"hi".to_vec(),
                }],
            },
            PeerFrame::Ack { epoch: 42, next: 2 },
            PeerFrame::Auth { proof: vec![1; 32] },
            PeerFrame::Lost {
                epoch: 42,
                from: 3,
                next: 9,
            },
        ];
        for f in frames {
            assert_eq!(PeerFrame::decode(&f.encode().unwrap()).unwrap(), f);
        }
    }

    #[test]
    fn an_old_hello_still_tells_its_version() {
        // Version 1's Hello: no nonce field.
        let v1 = codec::encode(&(0u32, "a", 1u32, "0.0.1", 1u64, 0u64, 1u64, 100u64)).unwrap();
        assert!(PeerFrame::decode(&v1).is_err());
        assert_eq!(hello_head(&v1), Some(("a".to_string(), 1)));
        let ack = PeerFrame::Ack { epoch: 1, next: 2 }.encode().unwrap();
        assert_eq!(hello_head(&ack), None);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(PeerFrame::decode(&[]).is_err());
        assert!(PeerFrame::decode(&[9, 9, 9]).is_err());
        assert!(PeerFrame::decode(b"hello world").is_err());
    }
}
