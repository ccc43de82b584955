#!/usr/bin/env bash
# Fuzzes every parser of outside bytes in crates `torrent`, `overlay`, `stream` and `dht` with cargo-fuzz
# (libFuzzer + ASan).
#
# Usage:
#   scripts/fuzz.sh                    # every target, 60 s each, one after another
#   scripts/fuzz.sh 300                # every target, 5 minutes each
#   scripts/fuzz.sh 60 wire magnet     # only the named targets
#   scripts/fuzz.sh --list             # the target names
#
# Targets (fuzz/fuzz_targets/): metainfo, magnet, wire, ext, tracker_http, tracker_udp,
# announce_query, overlay_wire, mpd, stream_inputs, download_state, cores (the torrent
# crate's TorrentCore and MetadataCore fed peer inputs), mse (the encryption handshake), krpc
# (the DHT's datagrams), dht_state (the DHT's state file), utp (uTP packets); each file's
# header says what it feeds and which properties it asserts.
#
# Installs cargo-fuzz if it is missing. Our toolchain is stable, so cargo fuzz's nightly flags
# (-Zsanitizer=address, ...) are allowed with RUSTC_BOOTSTRAP=1. SANITIZER=none turns ASan off
# (faster, finds fewer bugs). The fuzz crate builds in fuzz/target (not $CARGO_TARGET_DIR: the
# instrumented build would otherwise fight the normal one over the same artifacts).
#
# Small seed inputs are (re)written into fuzz/corpus/<target>/seed-* on every run; the corpus
# grows there between runs. A crash, panic, leak or hang (>10 s on one input) is saved under
# fuzz/artifacts/<target>/ and makes the script exit 1 after all targets ran; replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir fuzz/target <target> fuzz/artifacts/<target>/<file>
# Logs: fuzz/target/logs/<target>.log. corpus, artifacts and target are git-ignored.
set -euo pipefail

ALL_TARGETS=(metainfo magnet wire ext tracker_http tracker_udp announce_query overlay_wire mpd stream_inputs download_state cores mse krpc dht_state utp)

if [[ "${1:-}" == "--list" ]]; then
    printf '%s\n' "${ALL_TARGETS[@]}"
    exit 0
fi

SECONDS_PER_TARGET="${1:-60}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS=60] [TARGET...]   (targets: ${ALL_TARGETS[*]})" >&2
    exit 2
fi
shift || true
TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then
    TARGETS=("${ALL_TARGETS[@]}")
fi
for t in "${TARGETS[@]}"; do
    if [[ ! " ${ALL_TARGETS[*]} " == *" $t "* ]]; then
        echo "unknown target '$t' (targets: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
SANITIZER="${SANITIZER:-address}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

# ---------------------------------------------------------------------------------------------
# Seed inputs
# ---------------------------------------------------------------------------------------------

# A bencoded string.
bstr() { printf '%d:%s' "${#1}" "$1"; }
# Big-endian integers as raw bytes.
be16() { printf "$(printf '\\x%02x\\x%02x' $((($1 >> 8) & 255)) $(($1 & 255)))"; }
be32() { be16 $((($1 >> 16) & 65535)); be16 $(($1 & 65535)); }
be64() { be32 $((($1 >> 32) & 0xffffffff)); be32 $(($1 & 0xffffffff)); }
# N copies of byte HEX.
bytes() { local i; for ((i = 0; i < $1; i++)); do printf "\\x$2"; done; }
# One framed wire message: id and payload (from stdin).
frame() { local body; body="$(printf '%02x' "$1"; od -An -v -tx1 | tr -d ' \n')"; be32 $((${#body} / 2)); printf "$(sed 's/../\\x&/g' <<<"$body")"; }

write_seeds() {
    local c="$FUZZ/corpus"
    mkdir -p "${ALL_TARGETS[@]/#/$c/}"
    local hash20; hash20="$(bytes 20 41)" # "AAAA...": 20 bytes, a stand-in SHA-1
    local info1 info2
    info1="d$(bstr length)i5e$(bstr name)$(bstr a.txt)$(bstr 'piece length')i16384e$(bstr pieces)20:${hash20}e"
    info2="d$(bstr files)ld$(bstr length)i20000e$(bstr path)l$(bstr dir)$(bstr b.bin)eed$(bstr length)i1e$(bstr path)l$(bstr c)eee$(bstr name)$(bstr multi)$(bstr 'piece length')i16384e$(bstr pieces)40:${hash20}${hash20}$(bstr private)i1ee"

    # metainfo
    printf '%s' "d$(bstr announce)$(bstr http://127.0.0.1:6969/announce)$(bstr info)${info1}e" >"$c/metainfo/seed-single"
    printf '%s' "d$(bstr announce-list)ll$(bstr http://a.example/announce)$(bstr udp://b.example:80)el$(bstr http://c.example/announce)ee$(bstr comment)$(bstr hi)$(bstr 'created by')$(bstr swarmcast)$(bstr 'creation date')i1700000000e$(bstr info)${info2}e" >"$c/metainfo/seed-multi"
    printf '%s' "$info1" >"$c/metainfo/seed-info-single"
    printf '%s' "$info2" >"$c/metainfo/seed-info-multi"
    # A real torrent from `swarmcast create`, when a built binary is at hand.
    local sc=""
    for cand in "${CARGO_TARGET_DIR:-$ROOT/target}/debug/swarmcast" "${CARGO_TARGET_DIR:-$ROOT/target}/release/swarmcast"; do
        [[ -x "$cand" ]] && sc="$cand" && break
    done
    [[ -z "$sc" ]] && sc="$(command -v swarmcast || true)"
    if [[ -n "$sc" ]]; then
        local tmp; tmp="$(mktemp -d)"
        mkdir -p "$tmp/data/sub" && printf 'hello swarm\n' >"$tmp/data/a.txt" && bytes 40000 7a >"$tmp/data/sub/b.bin"
        if "$sc" create "$tmp/data" -o "$tmp/x.torrent" --tracker http://127.0.0.1:6969/announce --piece-size 16k >/dev/null 2>&1; then
            cp "$tmp/x.torrent" "$c/metainfo/seed-swarmcast-create"
        fi
        rm -rf "$tmp"
    fi

    # overlay_wire: version 1, then postcard of Wire<Peer> (variant index, fields)
    printf '\x01\x00\x00' >"$c/overlay_wire/seed-join"
    printf '\x01\x00\x02\x00' >"$c/overlay_wire/seed-neighbor-high"
    { printf '\x01\x01'; bytes 32 07; printf '\x01\x02'; bytes 32 09; printf '\x01\x05'; } >"$c/overlay_wire/seed-ihave"
    printf '\x01\x02\x03abc' >"$c/overlay_wire/seed-direct"

    # stream_inputs: Range headers and trace files
    printf 'bytes=0-99' >"$c/stream_inputs/seed-range"
    printf 'bytes=-500' >"$c/stream_inputs/seed-suffix"
    printf '# seconds bps\n5 1000000\n5 150000\n10 800000\n' >"$c/stream_inputs/seed-trace"
    printf '{"points":[{"duration_s":2.5,"bps":3000000}]}' >"$c/stream_inputs/seed-trace-json"

    # download_state: the state file beside a download (magic line, torrent id, one file a line)
    printf 'swarmcast-download-state 1\n0123456789abcdef0123456789abcdef01234567\nmulti/a\nmulti/sub%%2Fb\n' >"$c/download_state/seed-state"
    # cores: op byte (bit 7: to the MetadataCore; low 3 bits: 0 connect, 1-2 message, 3 close,
    # 4 time passes, 5 dial failed, 6 verdict, 7 uploaded), an argument byte, and for a message
    # a length byte and the message without its length prefix. Here: a fast, extended peer
    # connects, has everything, is interested, unchokes us, asks for block 0, time passes.
    printf '\x00\x03\x01\x00\x01\x0e\x01\x00\x01\x02\x01\x00\x01\x01\x01\x00\x0d\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40\x00\x04\x28\x06\x01' >"$c/cores/seed-peer"
    # A metadata fetch: a peer connects to the MetadataCore and sends its extension handshake.
    { printf '\x80\x07\x81\x00'; printf '\x2e\x14\x00'; printf 'd1:md11:ut_metadatai3ee13:metadata_sizei11ee'; } >"$c/cores/seed-metadata"
    # mse: a seed byte, then raw bytes for the cores and an edit script (message, offset/3, xor)
    # for the tampered pair. Here: a public key of 5, and no edits; one edit of the responder's
    # VC; a plain BitTorrent handshake sent where a key is expected.
    { printf '\x04'; bytes 95 00; printf '\x05'; } >"$c/mse/seed-key"
    printf '\x01\x02\x00\x01' >"$c/mse/seed-edit"
    # krpc: BEP 5's examples (a query, a get_peers response, an error) and a BEP 44 put.
    printf 'd1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe' >"$c/krpc/seed-ping"
    printf 'd1:rd2:id20:abcdefghij01234567895:nodes26:mnopqrstuvwxyz123456axje.u5:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re' >"$c/krpc/seed-peers"
    printf 'd1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee' >"$c/krpc/seed-error"
    # dht_state: a state file of both families, and one written before IPv6 (id, 26-byte nodes).
    printf 'd2:id20:%s3:id620:%s5:nodes26:%saxje.u6:nodes638:%s%s\x1a\xe1e' "$hash20" "$hash20" "$hash20" "$hash20" "$(bytes 16 41)" >"$c/dht_state/seed-dual"
    printf '%s%saxje.u' "$hash20" "$hash20" >"$c/dht_state/seed-old"
    # utp: libtorrent's SYN, and a STATE with a selective ACK.
    printf '\x41\x00\xa2\xf9\xf4\xfc\x1c\xea\x01\x02\x03\x04\x05\x06\x07\x08\x8b\xd4\x01\x02' >"$c/utp/seed-syn"
    printf '\x21\x01\xa2\xf9\xf4\xfc\x1c\xea\x01\x02\x03\x04\x05\x06\x07\x08\x8b\xd4\x01\x02\x02\x04\x05\x06\x07\x08\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08payload' >"$c/utp/seed-sack"
    printf 'd1:ad3:casi1e2:id20:abcdefghij01234567891:k32:%s4:salt3:abc3:seqi2e3:sig64:%s5:token1:x1:vl1:ai1eee1:q3:put1:t2:aa1:y1:qe' "$(printf 'k%.0s' {1..32})" "$(printf 's%.0s' {1..64})" >"$c/krpc/seed-put"
    { printf '\x07\x13'; printf 'BitTorrent protocol'; bytes 48 00; } >"$c/mse/seed-plain"

    # magnet
    local hex=c12fe1c06bba254a9dc9f519b335aa7c1367a88a
    printf '%s' "magnet:?xt=urn:btih:$hex" >"$c/magnet/seed-hex"
    printf '%s' "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=Some+File%20%C3%A9&tr=http%3A%2F%2Ft.example%2Fannounce&tr.1=udp://u.example:80&x.pe=10.0.0.1:6881&x.pe=%5B::1%5D:51413" >"$c/magnet/seed-full"
    printf '%s' "MAGNET:?xt=urn:btmh:1220abcd&xt=urn:btih:$hex&foo=bar&dn" >"$c/magnet/seed-odd"

    # wire: a handshake followed by one of every message
    {
        printf '\x13BitTorrent protocol'; printf '\x00\x00\x00\x00\x00\x10\x00\x04'; printf '%s' "$hash20"; printf '%s' '-SC0100-abcdefghijkl'
        be32 0
        for id in 0 1 2 3 14 15; do frame "$id" </dev/null; done
        be32 7 | frame 4
        printf '\xff\xc0' | frame 5
        { be32 1; be32 16384; be32 16384; } | frame 6
        { be32 1; be32 0; printf 'blockdata'; } | frame 7
        { be32 1; be32 16384; be32 16384; } | frame 8
        be16 6881 | frame 9
        be32 3 | frame 13
        { be32 2; be32 0; be32 16384; } | frame 16
        be32 5 | frame 17
        { printf '\x00'; printf '%s' "d$(bstr m)d$(bstr ut_metadata)i3eee"; } | frame 20
    } >"$c/wire/seed-stream"
    { be32 10; printf '\xff\xc0'; } >"$c/wire/seed-bitfield"

    # ext
    printf '%s' "d$(bstr m)d$(bstr lt_donthave)i7e$(bstr ut_metadata)i2e$(bstr ut_pex)i1ee$(bstr metadata_size)i1234e$(bstr p)i6881e$(bstr reqq)i500e$(bstr v)$(bstr 'libtorrent 2.0.8')e" >"$c/ext/seed-handshake"
    printf '%s' "d$(bstr msg_type)i0e$(bstr piece)i0ee" >"$c/ext/seed-request"
    printf '%s' "d$(bstr msg_type)i1e$(bstr piece)i0e$(bstr total_size)i10eeinfo-bytes" >"$c/ext/seed-data"
    printf '%s' "d$(bstr msg_type)i2e$(bstr piece)i3ee" >"$c/ext/seed-reject"

    # tracker_http
    # Compact peers hold NUL bytes, which shell variables cannot: functions print them.
    peers4() { printf '\x7f\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x1a\xe2'; }
    peers6() { bytes 15 00; printf '\x01\x1a\xe1'; }
    { printf '%s' "d$(bstr complete)i3e$(bstr incomplete)i5e$(bstr interval)i1800e$(bstr 'min interval')i60e$(bstr peers)12:"
      peers4; printf '%s' "$(bstr peers6)18:"; peers6; printf 'e'; } >"$c/tracker_http/seed-compact"
    printf '%s' "d$(bstr interval)i900e$(bstr peers)ld$(bstr ip)$(bstr 10.1.2.3)$(bstr 'peer id')$(bstr '-SC0100-abcdefghijkl')$(bstr port)i6881eed$(bstr ip)$(bstr ::1)$(bstr port)i51413eee$(bstr 'warning message')$(bstr careful)e" >"$c/tracker_http/seed-dict"
    printf '%s' "d$(bstr 'failure reason')$(bstr 'unregistered torrent')e" >"$c/tracker_http/seed-failure"

    # tracker_udp: replies (client side) and requests (server side)
    { be32 0; be32 77; be64 0x1122334455667788; } >"$c/tracker_udp/seed-connect-reply"
    { be32 1; be32 77; be32 1800; be32 2; be32 1; peers4; } >"$c/tracker_udp/seed-announce-reply4"
    { be32 1; be32 77; be32 1800; be32 2; be32 1; peers6; } >"$c/tracker_udp/seed-announce-reply6"
    { be32 2; be32 77; be32 3; be32 10; be32 5; } >"$c/tracker_udp/seed-scrape-reply"
    { be32 3; be32 77; printf 'no such torrent'; } >"$c/tracker_udp/seed-error-reply"
    { be64 0x41727101980; be32 0; be32 77; } >"$c/tracker_udp/seed-connect-request"
    { be64 0x1122334455667788; be32 1; be32 77; printf '%s' "$hash20"; printf '%s' '-SC0100-abcdefghijkl'
      be64 0; be64 1048576; be64 0; be32 2; be32 0; be32 99; be32 0xffffffff; be16 6881; } >"$c/tracker_udp/seed-announce-request"
    { be64 0x1122334455667788; be32 2; be32 77; printf '%s' "$hash20"; bytes 20 42; } >"$c/tracker_udp/seed-scrape-request"

    # announce_query
    local pct; pct="$(printf '%%%02X' {1..20})"
    printf '%s' "info_hash=${pct}&peer_id=-SC0100-abcdefghijkl&port=6881&uploaded=0&downloaded=0&left=1048576&event=started&compact=1&numwant=50" >"$c/announce_query/seed-started"
    printf '%s' "info_hash=AAAAAAAAAAAAAAAAAAAA&peer_id=%2DSC0100%2Dabcdefghijkl&port=51413&left=0&no_peer_id=1&num_want=-1&event=&ip=1.2.3.4" >"$c/announce_query/seed-seeder"

    # mpd: the manifest ffmpeg wrote for the end-to-end test, and a SegmentTimeline one
    cp "$ROOT/crates/stream/tests/data/ffmpeg-2rung.mpd" "$c/mpd/seed-ffmpeg"
    printf '%s' '<MPD type="static" mediaPresentationDuration="PT20S"><BaseURL>http://e/m/</BaseURL><Period><AdaptationSet mimeType="video/mp4"><SegmentTemplate timescale="1000" media="$RepresentationID$/t-$Time$.m4s" initialization="$RepresentationID$/i.mp4"><SegmentTimeline><S t="0" d="4000" r="2"/><S d="2000"/><S d="3000" r="-1"/></SegmentTimeline></SegmentTemplate><Representation id="v" bandwidth="500000" width="640" height="360"><BaseURL>v/</BaseURL></Representation></AdaptationSet></Period></MPD>' >"$c/mpd/seed-timeline"
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

write_seeds
mkdir -p "$FUZZ/target/logs"
cd "$ROOT"

echo "building fuzz targets (sanitizer: $SANITIZER)"
RUSTC_BOOTSTRAP=1 cargo fuzz build --target-dir "$FUZZ/target" -s "$SANITIZER"

failed=()
for t in "${TARGETS[@]}"; do
    log="$FUZZ/target/logs/$t.log"
    mkdir -p "$FUZZ/artifacts/$t"
    marker="$(mktemp)"
    echo "== $t: fuzzing for ${SECONDS_PER_TARGET}s (log: ${log#"$ROOT"/})"
    status=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir "$FUZZ/target" -s "$SANITIZER" "$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    # The last status line holds the run count, coverage (cov, ft), corpus size and exec/s.
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E '^Done [0-9]+ runs' "$log" || true
    if [[ $status -ne 0 ]]; then
        echo "!! $t failed (exit $status); last lines of its log:"
        tail -n 30 "$log"
        while IFS= read -r artifact; do
            echo "!! artifact: ${artifact#"$ROOT"/}  ($(od -An -v -tx1 "$artifact" | tr -d ' \n' | cut -c1-200))"
        done < <(find "$FUZZ/artifacts/$t" -type f -newer "$marker")
        failed+=("$t")
    fi
    rm -f "$marker"
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all ${#TARGETS[@]} target(s) ran ${SECONDS_PER_TARGET}s without a crash"
