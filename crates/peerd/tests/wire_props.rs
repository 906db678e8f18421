//! Property tests of the peer protocol's encoding: every frame survives
//! the codec unchanged, and no input bytes make the decoder panic (the
//! fuzz targets in `fuzz/` push the same harder).

use peerd::wire::{Hello, PeerFrame, Record, hello_head};
use proptest::prelude::*;

fn hello() -> impl Strategy<Value = PeerFrame> {
    (
        "[a-z0-9_-]{1,32}",
        any::<u32>(),
        ".{0,16}",
        any::<[u64; 4]>(),
        any::<Option<[u8; 32]>>(),
        prop::collection::vec(any::<[u8; 4]>(), 0..4),
    )
        .prop_map(|(node, version, software, n, nonce, keys)| {
            PeerFrame::Hello(Hello {
                node,
                version,
                software,
                epoch: n[0],
                expect_epoch: n[1],
                expect_next: n[2],
                max_frame: n[3],
                nonce,
                keys: keys.into_iter().map(peerd::auth::KeyId).collect(),
            })
        })
}

fn frame() -> impl Strategy<Value = PeerFrame> {
    let record = (
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(seq, sent_ms, body)| Record { seq, sent_ms, body });
    prop_oneof![
        hello(),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(record, 0..8)
        )
            .prop_map(|(epoch, from, next, records)| PeerFrame::Data {
                epoch,
                from,
                next,
                records
            }),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(epoch, from, next)| PeerFrame::Lost { epoch, from, next }),
        (any::<u64>(), any::<u64>()).prop_map(|(epoch, next)| PeerFrame::Ack { epoch, next }),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|proof| PeerFrame::Auth { proof }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(f in frame()) {
        let bytes = f.encode().expect("encode");
        prop_assert_eq!(PeerFrame::decode(&bytes).expect("decode"), f);
    }

    #[test]
    fn every_hello_tells_its_head(f in hello()) {
        let bytes = f.encode().expect("encode");
        if let PeerFrame::Hello(h) = f {
            prop_assert_eq!(hello_head(&bytes), Some((h.node, h.version)));
        }
    }

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(f) = PeerFrame::decode(&bytes) {
            // Whatever decodes survives a round trip.
            let again = PeerFrame::decode(&f.encode().expect("encode")).expect("decode");
            prop_assert_eq!(again, f);
        }
        let _ = hello_head(&bytes);
    }
}
