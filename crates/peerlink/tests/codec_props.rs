//! Property tests of the control protocol's encoding: every request and
//! response survives codec + framing unchanged, and no input bytes make
//! the decoders panic (the fuzz targets in `fuzz/` push the same harder).

use bytes::BytesMut;
use peerlink::codec;
use peerlink::control::{Entry, ErrorKind, MAX_FRAME, Request, Response, TailStart};
use peerlink::frame::length_codec;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u32>(), ".{0,20}").prop_map(|(version, client)| Request::Hello { version, client }),
        (
            prop::collection::vec(body(), 0..8),
            any::<bool>(),
            prop::collection::vec("[a-z]{1,8}", 0..3)
        )
            .prop_map(|(bodies, wait, to)| Request::Send { bodies, wait, to }),
        (
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of("[a-z]{1,8}")
        )
            .prop_map(|(n, from, follow, origin)| Request::Tail {
                start: if from {
                    TailStart::From(n)
                } else {
                    TailStart::Last(n)
                },
                follow,
                origin,
            }),
        Just(Request::Status),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (any::<[u64; 4]>(), "[a-z:0-9.]{0,20}", body()).prop_map(|(n, origin, body)| Entry {
        seq: n[0],
        received_ms: n[1],
        sent_ms: n[2],
        origin,
        origin_seq: n[3],
        body,
    })
}

fn response() -> impl Strategy<Value = Response> {
    let kind = prop_oneof![
        Just(ErrorKind::Version),
        Just(ErrorKind::BadRequest),
        Just(ErrorKind::Rejected),
        Just(ErrorKind::OutboxFull),
        Just(ErrorKind::ShuttingDown),
        Just(ErrorKind::Internal),
    ];
    prop_oneof![
        (any::<u32>(), ".{0,10}", "[a-z]{1,8}", any::<u64>()).prop_map(
            |(version, daemon_version, instance, max_message)| Response::Hello {
                version,
                daemon_version,
                instance,
                max_message,
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(first, last)| Response::Sent { first, last }),
        any::<u64>().prop_map(|upto| Response::Delivered { upto }),
        prop::collection::vec(entry(), 0..5).prop_map(Response::Entries),
        (any::<u64>(), any::<u64>())
            .prop_map(|(from, resume_at)| Response::Gap { from, resume_at }),
        any::<u64>().prop_map(|next| Response::CaughtUp { next }),
        (kind, ".{0,40}").prop_map(|(kind, message)| Response::Error { kind, message }),
    ]
}

/// Encode `values` as consecutive frames, then read them back.
fn through_frames<T>(values: &[T]) -> Vec<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut lc = length_codec(MAX_FRAME);
    let mut buf = BytesMut::new();
    for v in values {
        let bytes = codec::encode(v).expect("encode");
        lc.encode(bytes::Bytes::from(bytes), &mut buf)
            .expect("frame");
    }
    let mut out = Vec::new();
    while let Some(frame) = lc.decode(&mut buf).expect("unframe") {
        out.push(codec::decode(&frame).expect("decode"));
    }
    assert!(buf.is_empty());
    out
}

proptest! {
    #[test]
    fn requests_round_trip(reqs in prop::collection::vec(request(), 0..6)) {
        prop_assert_eq!(through_frames(&reqs), reqs);
    }

    #[test]
    fn responses_round_trip(resps in prop::collection::vec(response(), 0..6)) {
        prop_assert_eq!(through_frames(&resps), resps);
    }

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode::<Request>(&bytes);
        let _ = codec::decode::<Response>(&bytes);
        let mut lc = length_codec(1024);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = lc.decode(&mut buf) {
            let _ = codec::decode::<Request>(&frame);
        }
    }

    #[test]
    fn a_truncated_request_never_decodes_as_itself(req in request(), cut in any::<prop::sample::Index>()) {
        let bytes = codec::encode(&req).expect("encode");
        let at = cut.index(bytes.len());
        if let Ok(r) = codec::decode::<Request>(&bytes[..at]) {
            prop_assert_ne!(r, req);
        }
    }
}
