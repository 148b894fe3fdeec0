//! Fuzz target: the identity store's inputs from outside — a stored record as the loader reads it back from
//! `identities.redb` (a damaged or foreign file), a public key and a proof as a client sends them — never
//! panic: a damaged record is skipped, a bad key is `bad_key`, a bad proof is `bad_signature`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte::signaling::identity::{PublicKey, Record};

fuzz_target!(|data: &[u8]| {
    if let Some(r) = Record::from_bytes(data) {
        // What loads must write back to the same record.
        assert_eq!(Record::from_bytes(&r.to_bytes()), Some(r));
    }
    let (a, b) = data.split_at(data.len() / 2);
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    if let Some(key) = PublicKey::parse(&a) {
        assert_eq!(PublicKey::parse(&key.encode()), Some(key));
        let _ = key.verify(&b, &b);
    }
});
