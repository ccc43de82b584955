//! Byte-count arguments: the clap value parser for sizes and rates with k/M/G suffixes
//! (`torrent::units::parse_bytes`), shared by `main.rs`, `lab_cmd.rs` and `sim_cmd.rs`.

/// Parses a byte count such as `64M` or `512k` (k/M/G suffixes, powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    torrent::units::parse_bytes(s).map_err(|e| e.to_string())
}
