//! Human byte quantities: `512k`, `2M`, `1G` (binary multiples: k = 1024).

/// A quantity that is not a number with an optional k/M/G suffix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "'{0}' is not a byte count: use a number with an optional k, M or G suffix, e.g. 512k or 2M"
)]
pub struct ByteCountError(String);

/// Parses `1500`, `64k`, `2M`, `1G` (also `KiB`/`MiB`/`GiB`, `kB`/`MB`/`GB`, all as powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, ByteCountError> {
    let err = || ByteCountError(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes("64k"), Ok(65536));
        assert_eq!(parse_bytes("2M"), Ok(2 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("3MiB"), Ok(3 << 20));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("12x").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
    }
}
