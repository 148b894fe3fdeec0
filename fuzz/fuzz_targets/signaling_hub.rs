//! Fuzz target: the signaling hub's state machine (not only the parser) driven without sockets by arbitrary
//! sequences of client operations — connections opening, hello with or without (valid, stale, forged) tokens,
//! connect/cancel/accept/decline/signal/bye, identity hello and proofs (right key, wrong key, garbage),
//! contact_add, contact_remove, block, unblock, identities forgotten, raw text frames, closes, resumes, timers,
//! reloads, churn from one source — through the hub's one dispatch (`State::apply`, as the server runs it), with its invariants checked
//! after every step (see ponte::signaling::fuzzing). A broken invariant panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ponte::signaling::fuzzing::run(data);
});
