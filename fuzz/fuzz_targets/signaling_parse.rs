//! Fuzz target: arbitrary WebSocket text frames through the signaling message parser: a typed message or a
//! typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ponte::signaling::protocol::parse(text);
    }
});
