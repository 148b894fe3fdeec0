//! Fuzz target: arbitrary bytes as a config file must give a config or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match ponte::config::Config::parse(text, std::path::Path::new("fuzz.toml")) {
            Ok(c) => assert!(c.validate().is_empty()),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
