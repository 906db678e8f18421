//! The one codec module: every value that crosses a socket (peer frames and
//! control frames) is encoded and decoded here and nowhere else.
//!
//! The encoding is bincode 2.0.1 through serde, with the standard config
//! (little-endian, varint integers). bincode is no longer maintained; it is
//! pinned in the workspace and kept behind these three functions so that a
//! later swap (postcard, wincode) touches only this file.
//!
//! Every decode runs with a byte limit ([`DECODE_LIMIT`]) so that a length
//! claimed inside a hostile frame cannot make us allocate more than the frame
//! could possibly hold, and a decode that leaves bytes over is an error:
//! a frame holds exactly one value.

use serde::{Serialize, de::DeserializeOwned};

/// The largest value any caller may decode: larger than any frame we accept
/// (a message of the largest `max_message`, 64 MiB, plus at most 1 MiB of
/// framing; the framing layers bound frames below this), so it only ever
/// bites on a lying length prefix inside a value.
pub const DECODE_LIMIT: usize = 80 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Why bytes did not become a value, or a value did not become bytes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("undecodable frame: {0} trailing bytes after the value")]
    Trailing(usize),
}

/// `#[serde(with = "peerlink::codec::bytes")]` for a `Vec<u8>` field: the
/// body goes through serde as one byte string (a length and a copy) instead
/// of a sequence of single bytes, which costs a call per byte. The layout
/// bincode writes is the same either way.
pub mod bytes {
    pub use serde_bytes::{deserialize, serialize};
}

/// `#[serde(with = "peerlink::codec::byte_lists")]` for a `Vec<Vec<u8>>`
/// field: [`bytes`] for every element.
pub mod byte_lists {
    use serde::de::{SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(lists: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(lists.len()))?;
        for b in lists {
            seq.serialize_element(serde_bytes::Bytes::new(b))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        struct Lists;
        impl<'de> Visitor<'de> for Lists {
            type Value = Vec<Vec<u8>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of byte strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The claimed length comes from the input: never trust it
                // for more than a modest preallocation.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<serde_bytes::ByteBuf>()? {
                    out.push(b.into_vec());
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Lists)
    }
}

/// Encode `value` to a fresh buffer.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Encode `value` at the end of `buf` (lets callers reserve a length prefix).
pub fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    let bytes = encode(value)?;
    buf.extend_from_slice(&bytes);
    Ok(())
}

/// Decode exactly one value from `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decode exactly one value that may borrow from `bytes` (`&str` and
/// `&[u8]` fields point into the frame instead of being copied out).
pub fn decode_borrowed<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::borrow_decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decode one value from the start of `bytes`, ignoring what follows.
/// Only for reading the frozen head of a handshake from a peer that may
/// speak another version (its version, to say what differs), never for
/// frames that are acted on.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(value, _)| value)
        .map_err(|e| CodecError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Sample {
        A { n: u64, body: Vec<u8> },
        B(String),
    }

    #[test]
    fn round_trip() {
        for v in [
            Sample::A { n: 0, body: vec![] },
            Sample::A {
                n: u64::MAX,
                body: vec![1, 2, 3],
            },
            Sample::B("héllo".into()),
        ] {
            let bytes = encode(&v).unwrap();
            assert_eq!(decode::<Sample>(&bytes).unwrap(), v);
        }
    }

    #[test]
    fn byte_strings_keep_the_plain_layout() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Fast {
            #[serde(with = "super::bytes")]
            one: Vec<u8>,
            #[serde(with = "super::byte_lists")]
            many: Vec<Vec<u8>>,
        }
        #[derive(Serialize)]
        struct Plain {
            one: Vec<u8>,
            many: Vec<Vec<u8>>,
        }
        let fast = Fast {
            one: vec![0, 1, 255],
            many: vec![vec![], vec![7; 300]],
        };
        let plain = Plain {
            one: fast.one.clone(),
            many: fast.many.clone(),
        };
        let bytes = encode(&fast).unwrap();
        assert_eq!(bytes, encode(&plain).unwrap());
        assert_eq!(decode::<Fast>(&bytes).unwrap(), fast);
    }

    #[test]
    fn rejects_trailing_and_truncated() {
        let mut bytes = encode(&Sample::B("x".into())).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(CodecError::Trailing(1))
        ));
        let bytes = encode(&Sample::A {
            n: 7,
            body: vec![9; 10],
        })
        .unwrap();
        assert!(decode::<Sample>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn lying_length_is_bounded() {
        // Variant 0, n = 1, then a Vec length of u64::MAX (varint tag 253 + 8 bytes).
        let mut bytes = vec![0u8, 1, 253];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut x: u32 = 12345;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode::<Sample>(&bytes);
        }
    }
}
