//! Fuzzes the DHT state file's parser: `dht::state::State::parse` on any file.
//!
//! Properties checked on success: no more than `MAX_SAVED_NODES` nodes per family, no port 0,
//! and writing the state then reading it back gives it again.
#![no_main]

use dht::state::{State, MAX_SAVED_NODES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(s) = State::parse(data) else { return };
    assert!(s.nodes.len() <= MAX_SAVED_NODES && s.nodes6.len() <= MAX_SAVED_NODES);
    assert!(s.nodes.iter().all(|n| n.addr.port() != 0));
    assert!(s.nodes6.iter().all(|n| n.addr.port() != 0));
    assert_eq!(State::parse(&s.encode()), Some(s));
});
