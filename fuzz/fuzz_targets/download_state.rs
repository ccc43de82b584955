//! The download state file (`DIR/.NAME.swarmcast`, see `torrent::storage`): any bytes on disk
//! are parsed without a panic, and what is accepted as a record of files survives being written
//! and read again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torrent::storage::{parse_state, state_text};

const ID: &str = "0123456789abcdef0123456789abcdef01234567";

fuzz_target!(|data: &[u8]| {
    if let Some(files) = parse_state(data, ID) {
        let again = parse_state(state_text(ID, &files).as_bytes(), ID);
        assert_eq!(again.as_ref(), Some(&files));
    }
});
