//! The control socket's byte stream as the daemon reads it: length-prefixed
//! frames (with the real limit), each decoded as a request; and the same
//! bytes as responses, which is what peerctl reads.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peerlink::codec;
use peerlink::control::{MAX_FRAME, Request, Response};
use peerlink::frame::length_codec;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut lc = length_codec(MAX_FRAME);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = lc.decode(&mut buf) {
        if let Ok(req) = codec::decode::<Request>(&frame) {
            let bytes = codec::encode(&req).expect("a decoded request encodes");
            assert_eq!(codec::decode::<Request>(&bytes).expect("and decodes again"), req);
        }
        let _ = codec::decode::<Response>(&frame);
    }
    let _ = codec::decode::<Request>(data);
});
