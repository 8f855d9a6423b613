//! Fuzzes the stored-event decoders segment files go through, `codec::decode::<Event>` and
//! `codec::decode_prefix::<Event>`: they must never panic, and what they accept must be canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::{codec, Event};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(event) = codec::decode::<Event>(bytes) {
        let again = codec::encode(&event).expect("a decoded event encodes");
        assert_eq!(again, bytes, "non-canonical event accepted: {event:?}");
    }
    if let Ok((event, used)) = codec::decode_prefix::<Event>(bytes) {
        let again = codec::encode(&event).expect("a decoded event encodes");
        assert_eq!(
            again,
            bytes[..used],
            "non-canonical event prefix accepted: {event:?}"
        );
    }
});
