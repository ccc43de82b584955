//! Fuzzes `.torrent` parsing: `Metainfo::from_bytes` (a whole file) and `Info::from_bytes`
//! (a bare info dictionary, as BEP 9 metadata exchange delivers it).
//!
//! Properties checked on success: the info dictionary kept in `info_bytes` parses on its own to
//! the same `Info` and hashes to `info_hash`; the pieces' sizes add up to the total length; the
//! files are laid end to end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torrent::metainfo::{Info, InfoHash};
use torrent::Metainfo;

fn check_info(info: &Info) {
    assert!(info.piece_length > 0);
    assert!(!info.files.is_empty());
    let mut offset = 0u64;
    for f in &info.files {
        assert_eq!(f.offset, offset);
        offset += f.length;
    }
    assert_eq!(offset, info.total_length);
    let sum: u64 = (0..info.num_pieces())
        .map(|p| info.piece_size(p) as u64)
        .sum();
    assert_eq!(sum, info.total_length);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::from_bytes(data) {
        assert_eq!(InfoHash::of(&m.info_bytes), m.info_hash);
        assert_eq!(Info::from_bytes(&m.info_bytes).as_ref(), Ok(&m.info));
        check_info(&m.info);
    }
    if let Ok(info) = Info::from_bytes(data) {
        check_info(&info);
    }
});
