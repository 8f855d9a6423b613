//! Fuzzes `frame::decode`: it must never panic, and whatever it accepts must be canonical, the
//! input being exactly the frame of the decoded message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::frame;

/// Large enough that the header bound never hides the body decoder from the fuzzer.
const BODY_BYTES_MAX: u32 = 1 << 20;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(msg) = frame::decode(bytes, BODY_BYTES_MAX) {
        let again = frame::encode(&msg).expect("a decoded message encodes");
        assert_eq!(again, bytes, "non-canonical frame accepted: {msg:?}");
    }
});
