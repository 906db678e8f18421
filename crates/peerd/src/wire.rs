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
//! # Conversation
//!
//! 1. Both sides send [`PeerFrame::Hello`] at once, then read the other's,
//!    within `handshake_timeout`. The Hello names the node, states the
//!    protocol version ([`WIRE_VERSION`], must be equal), its journal epoch,
//!    what it expects from the other (epoch and next sequence number), and
//!    the largest frame it accepts.
//! 2. Then, in both directions at once: `Data` (a batch of consecutive
//!    records of the sender's outbox) and `Ack` (cumulative: every record
//!    of that epoch below `next` is durable in the receiver's inbox).
//!
//! # Delivery rule
//!
//! The sender resumes from the receiver's `expect_next` when the receiver
//! knows its epoch, else from its oldest unacknowledged record; the receiver
//! drops records below its `next` and acks only after the inbox write is
//! durable. Which of two colliding sessions survives never matters: acks
//! are by sequence, not by session.
//!
//! # Close codes
//!
//! [`CLOSE_DUPLICATE`] (4000) "duplicate link" for the loser of a
//! collision; 1001 "going away" on shutdown; [`CLOSE_PROTOCOL`] (4001) for
//! a handshake that cannot go on (wrong version, unknown node, ...).
//!
//! # Limits
//!
//! A frame is at most the receiver's `max_frame` (from its Hello; derived
//! from `max_message`); larger WebSocket messages are refused by
//! tungstenite before they are buffered. Decoding goes through the codec's
//! size limit.

use serde::{Deserialize, Serialize};

use peerlink::codec::{self, CodecError};

/// The WebSocket subprotocol a peer must ask for.
pub const SUBPROTOCOL: &str = "peerlink.v1";
/// Bumped on any incompatible change to [`PeerFrame`].
pub const WIRE_VERSION: u32 = 1;
/// Close code: this session lost the collision rule.
pub const CLOSE_DUPLICATE: u16 = 4000;
/// Close code: the handshake was refused.
pub const CLOSE_PROTOCOL: u16 = 4001;
/// Room for framing and per-record overhead on top of `max_message`.
pub const FRAME_OVERHEAD: u64 = 64 * 1024;
/// A sender stops adding records to a batch once it holds this many bytes.
pub const BATCH_TARGET: u64 = 256 * 1024;

/// One peer frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    Hello(Hello),
    Data { epoch: u64, records: Vec<Record> },
    Ack { epoch: u64, next: u64 },
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
            }),
            PeerFrame::Data {
                epoch: 42,
                records: vec![Record {
                    seq: 1,
                    sent_ms: 5,
                    body: b"hi".to_vec(),
                }],
            },
            PeerFrame::Ack { epoch: 42, next: 2 },
        ];
        for f in frames {
            assert_eq!(PeerFrame::decode(&f.encode().unwrap()).unwrap(), f);
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(PeerFrame::decode(&[]).is_err());
        assert!(PeerFrame::decode(&[9, 9, 9]).is_err());
        assert!(PeerFrame::decode(b"hello world").is_err());
    }
}
