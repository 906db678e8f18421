//! Peer frames as they arrive from the network: any bytes must decode or
//! fail cleanly, and whatever decodes must survive a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerd::wire::{PeerFrame, hello_head};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = PeerFrame::decode(data) {
        let bytes = frame.encode().expect("a decoded frame encodes");
        assert_eq!(PeerFrame::decode(&bytes).expect("and decodes again"), frame);
    }
    let _ = hello_head(data);
});
