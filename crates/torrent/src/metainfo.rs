//! `.torrent` files: strict parsing (BEP 3, announce-list BEP 12) and creation.
//!
//! The info-hash is the SHA-1 of the info dictionary's exact original bytes, as they appear in
//! the file; the parser keeps those bytes in [`Metainfo::info_bytes`] (they are also what BEP 9
//! metadata exchange serves).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bendy::decoding::{Decoder, DictDecoder, Object};
use sha1::{Digest, Sha1};

/// SHA-1 of a torrent's bencoded info dictionary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

/// One file of the torrent, in torrent order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components below the torrent's directory (multi-file), or `[name]` for a single
    /// file torrent. Every component has been checked to be a safe, plain name.
    pub path: Vec<String>,
    pub length: u64,
    /// Byte offset of the file's start in the torrent's concatenated byte stream.
    pub offset: u64,
    /// A pad file (BEP 47, `attr` holds `p`): zeros that align the next file to a piece
    /// boundary. It is never created on disk, its bytes read as zeros, and what a peer sends
    /// for it is not written; it is left out of file listings.
    pub pad: bool,
}

/// The parsed info dictionary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub piece_length: u32,
    pub pieces: Vec<[u8; 20]>,
    pub files: Vec<FileEntry>,
    /// True when the info dictionary has a `files` list (files live under directory `name`).
    pub multi_file: bool,
    pub private: bool,
    pub total_length: u64,
}

impl Info {
    /// Number of pieces.
    pub fn num_pieces(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// Size of piece `piece` in bytes (the last one may be short).
    pub fn piece_size(&self, piece: u32) -> u32 {
        let start = piece as u64 * self.piece_length as u64;
        (self.total_length.saturating_sub(start)).min(self.piece_length as u64) as u32
    }
}

/// A parsed `.torrent` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metainfo {
    pub info: Info,
    pub info_hash: InfoHash,
    /// The info dictionary's exact bytes as found in the file.
    pub info_bytes: Vec<u8>,
    /// Tracker tiers: `announce-list` if present (BEP 12), else `[[announce]]`; may be empty.
    pub trackers: Vec<Vec<String>>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    pub creation_date: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Largest `.torrent` file (or bare info dictionary) we agree to parse.
pub const MAX_TORRENT_SIZE: usize = 32 * 1024 * 1024;
/// Largest piece length we accept.
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;
/// Most files a torrent may hold.
pub const MAX_FILES: usize = 100_000;
/// Bencode nesting we accept; a real torrent needs 5 levels, unknown keys get some slack.
const MAX_DEPTH: usize = 64;

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Why a `.torrent` file or an info dictionary was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetainfoError {
    /// The input is larger than [`MAX_TORRENT_SIZE`].
    #[error("torrent data is {size} bytes, more than the {limit} byte limit")]
    TooLarge { size: usize, limit: usize },
    /// The input ends in the middle of a bencoded value.
    #[error("torrent file is truncated")]
    Truncated,
    /// Bytes follow the top-level dictionary.
    #[error("torrent file has {extra} bytes of trailing data after the top-level dictionary")]
    TrailingData { extra: usize },
    /// The input is not canonical bencode (bad integer, unsorted or repeated keys, ...).
    #[error("torrent file is not valid bencode: {0}")]
    Bencode(String),
    /// A required key is absent.
    #[error("torrent file is missing required key `{0}`")]
    MissingKey(&'static str),
    /// A key holds a value of the wrong bencode type.
    #[error("`{key}` should be {expected} but is {found}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    /// A string that must be text is not UTF-8.
    #[error("`{key}` is not valid UTF-8")]
    NotUtf8 { key: String },
    /// A value is well typed but makes no sense (the message says which and why).
    #[error("{0}")]
    Invalid(String),
    /// A file name could escape the download directory or is not a plain name.
    #[error("unsafe path {path:?} in torrent: {reason}")]
    UnsafePath { path: String, reason: String },
}

impl InfoHash {
    /// Parses 40 hexadecimal digits (either case); `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 20];
        if s.len() != 40 {
            return None;
        }
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(InfoHash(out))
    }

    /// SHA-1 of `bytes` (an info dictionary's exact encoding).
    pub fn of(bytes: &[u8]) -> Self {
        InfoHash(Sha1::digest(bytes).into())
    }
}

impl Metainfo {
    /// Parses a `.torrent` file strictly (BEP 3, BEP 12).
    ///
    /// The whole input must be one canonical bencoded dictionary (no trailing bytes, sorted
    /// keys, canonical integers) of at most [`MAX_TORRENT_SIZE`] bytes. `info` is parsed by
    /// [`Info::from_bytes`] from its exact original bytes, so unknown info keys stay part of the
    /// info-hash. Trackers: the `announce-list` tiers (empty tiers and empty URLs dropped) when
    /// that leaves any, else `announce`. Purely informational keys (`comment`, `created by`,
    /// `creation date`) are dropped rather than refused when mistyped; non-UTF-8 text in them
    /// is converted lossily.
    pub fn from_bytes(data: &[u8]) -> Result<Metainfo, MetainfoError> {
        check_size(data)?;
        let mut decoder = Decoder::new(data).with_max_depth(MAX_DEPTH);
        let mut dict = top_dict(&mut decoder, "torrent")?;

        let mut announce: Option<String> = None;
        let mut announce_list: Option<Vec<Vec<String>>> = None;
        let mut comment: Option<String> = None;
        let mut comment_utf8: Option<String> = None;
        let mut created_by: Option<String> = None;
        let mut creation_date: Option<i64> = None;
        let mut info_raw: Option<&[u8]> = None;

        while let Some((key, value)) = dict.next_pair().map_err(bencode_err)? {
            match key {
                b"announce" => announce = Some(text(value, "announce")?),
                b"announce-list" => announce_list = Some(parse_tiers(value)?),
                b"comment" => comment = lossy_text(value),
                b"comment.utf-8" => comment_utf8 = lossy_text(value),
                b"created by" => created_by = lossy_text(value),
                b"creation date" => {
                    creation_date = match value {
                        Object::Integer(s) => s.parse().ok(),
                        _ => None,
                    }
                }
                b"info" => match value {
                    Object::Dict(d) => info_raw = Some(d.into_raw().map_err(bencode_err)?),
                    other => return Err(wrong_type("info", "a dictionary", &other)),
                },
                _ => {} // Unknown keys are skipped; dropping the value validates its syntax.
            }
        }
        let top_len = dict.into_raw().map_err(bencode_err)?.len();
        if top_len != data.len() {
            return Err(MetainfoError::TrailingData { extra: data.len() - top_len });
        }

        let info_bytes = info_raw.ok_or(MetainfoError::MissingKey("info"))?;
        let info = Info::from_bytes(info_bytes)?;

        let tiers: Vec<Vec<String>> = announce_list.unwrap_or_default();
        let trackers = if !tiers.is_empty() {
            tiers
        } else {
            match announce {
                Some(a) if !a.is_empty() => vec![vec![a]],
                _ => Vec::new(),
            }
        };

        Ok(Metainfo {
            info,
            info_hash: InfoHash::of(info_bytes),
            info_bytes: info_bytes.to_vec(),
            trackers,
            comment: comment_utf8.or(comment),
            created_by,
            creation_date,
        })
    }
}

impl Info {
    /// Parses a bare bencoded info dictionary (as found in a `.torrent` file or received by
    /// BEP 9 metadata exchange) and validates it.
    ///
    /// Checks: piece length in `1..=64 MiB`; `pieces` a multiple of 20 bytes and exactly
    /// `ceil(total / piece_length)` hashes; total length > 0 and free of overflow; at most
    /// [`MAX_FILES`] files; `name` and every path component a safe plain name (see
    /// [`MetainfoError::UnsafePath`]); text is UTF-8, `name.utf-8` / `path.utf-8` preferred when
    /// present and valid. The input must be exactly one dictionary.
    pub fn from_bytes(raw: &[u8]) -> Result<Info, MetainfoError> {
        check_size(raw)?;
        let mut decoder = Decoder::new(raw).with_max_depth(MAX_DEPTH);
        let mut dict = top_dict(&mut decoder, "info")?;

        let mut name: Option<&[u8]> = None;
        let mut name_utf8: Option<&[u8]> = None;
        let mut piece_length: Option<i64> = None;
        let mut pieces: Option<&[u8]> = None;
        let mut length: Option<i64> = None;
        let mut files: Option<Vec<RawFile<'_>>> = None;
        let mut private: Option<i64> = None;

        while let Some((key, value)) = dict.next_pair().map_err(bencode_err)? {
            match key {
                b"name" => name = Some(bytes(value, "info.name")?),
                b"name.utf-8" => name_utf8 = Some(bytes(value, "info.name.utf-8")?),
                b"piece length" => piece_length = Some(int(value, "info.piece length")?),
                b"pieces" => pieces = Some(bytes(value, "info.pieces")?),
                b"length" => length = Some(int(value, "info.length")?),
                b"files" => files = Some(parse_files(value)?),
                b"private" => private = Some(int(value, "info.private")?),
                _ => {} // Kept in the raw bytes (and the hash); nothing for us to read.
            }
        }
        let dict_len = dict.into_raw().map_err(bencode_err)?.len();
        if dict_len != raw.len() {
            return Err(MetainfoError::TrailingData { extra: raw.len() - dict_len });
        }

        let name = pick_utf8(name_utf8, name, "info.name")?
            .ok_or(MetainfoError::MissingKey("info.name"))?;
        check_path(&name, std::slice::from_ref(&name))?;

        let piece_length = piece_length.ok_or(MetainfoError::MissingKey("info.piece length"))?;
        if piece_length <= 0 || piece_length > MAX_PIECE_LENGTH as i64 {
            return Err(MetainfoError::Invalid(format!(
                "info.piece length {piece_length} is out of range (1 ..= {MAX_PIECE_LENGTH})"
            )));
        }
        let piece_length = piece_length as u32; // In range: checked just above.

        let pieces = pieces.ok_or(MetainfoError::MissingKey("info.pieces"))?;
        if pieces.len() % 20 != 0 {
            return Err(MetainfoError::Invalid(format!(
                "info.pieces length {} is not a multiple of 20",
                pieces.len()
            )));
        }

        let (files, multi_file) = match (length, files) {
            (Some(_), Some(_)) => {
                return Err(MetainfoError::Invalid(
                    "info has both `length` and `files`; it must be one or the other".into(),
                ))
            }
            (None, None) => return Err(MetainfoError::MissingKey("info.length or info.files")),
            (Some(len), None) => {
                if len < 0 {
                    return Err(MetainfoError::Invalid(format!("info.length is negative ({len})")));
                }
                let entry = FileEntry {
                    path: vec![name.clone()],
                    length: len as u64,
                    offset: 0,
                    pad: false,
                };
                (vec![entry], false)
            }
            (None, Some(raw_files)) => (build_files(&name, raw_files)?, true),
        };

        let mut total: u64 = 0;
        for f in &files {
            total = total.checked_add(f.length).ok_or_else(|| {
                MetainfoError::Invalid("the file lengths add up to more than 2^64 bytes".into())
            })?;
        }
        let mut files = files;
        let mut offset = 0u64;
        for f in &mut files {
            f.offset = offset;
            offset += f.length; // Cannot overflow: the same sum was checked above.
        }
        if total == 0 {
            return Err(MetainfoError::Invalid(
                "torrent has no content (total length is 0)".into(),
            ));
        }

        let expected = total.div_ceil(piece_length as u64);
        let have = (pieces.len() / 20) as u64;
        if have != expected {
            return Err(MetainfoError::Invalid(format!(
                "info.pieces holds {have} hashes but {total} bytes at piece length \
                 {piece_length} need {expected}"
            )));
        }
        let pieces = pieces
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();

        Ok(Info {
            name,
            piece_length,
            pieces,
            files,
            multi_file,
            private: private == Some(1),
            total_length: total,
        })
    }
}

/// One entry of `info.files` as read, before text decoding and checks.
struct RawFile<'s> {
    index: usize,
    length: i64,
    path: Option<Vec<&'s [u8]>>,
    path_utf8: Option<Vec<&'s [u8]>>,
    attr: Option<&'s [u8]>,
}

fn check_size(data: &[u8]) -> Result<(), MetainfoError> {
    if data.len() > MAX_TORRENT_SIZE {
        return Err(MetainfoError::TooLarge { size: data.len(), limit: MAX_TORRENT_SIZE });
    }
    Ok(())
}

/// Reads the first object of `decoder`, which must be a dictionary.
fn top_dict<'obj, 'ser>(
    decoder: &'obj mut Decoder<'ser>,
    what: &'static str,
) -> Result<DictDecoder<'obj, 'ser>, MetainfoError> {
    match decoder.next_object().map_err(bencode_err)? {
        Some(Object::Dict(d)) => Ok(d),
        None => Err(MetainfoError::Truncated),
        Some(other) => Err(wrong_type(what, "a dictionary", &other)),
    }
}

/// bendy's error kinds are not public; its end-of-input message is the one we single out.
fn bencode_err(e: bendy::decoding::Error) -> MetainfoError {
    let msg = e.to_string();
    if msg.contains("Reached EOF") {
        MetainfoError::Truncated
    } else {
        MetainfoError::Bencode(msg)
    }
}

fn kind_name(obj: &Object<'_, '_>) -> &'static str {
    match obj {
        Object::List(_) => "a list",
        Object::Dict(_) => "a dictionary",
        Object::Integer(_) => "an integer",
        Object::Bytes(_) => "a byte string",
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Object<'_, '_>) -> MetainfoError {
    MetainfoError::WrongType { key: key.to_string(), expected, found: kind_name(found) }
}

fn bytes<'s>(obj: Object<'_, 's>, key: &str) -> Result<&'s [u8], MetainfoError> {
    match obj {
        Object::Bytes(b) => Ok(b),
        other => Err(wrong_type(key, "a byte string", &other)),
    }
}

fn int(obj: Object<'_, '_>, key: &str) -> Result<i64, MetainfoError> {
    match obj {
        Object::Integer(s) => {
            s.parse().map_err(|_| MetainfoError::Invalid(format!("`{key}` = {s} is out of range")))
        }
        other => Err(wrong_type(key, "an integer", &other)),
    }
}

fn utf8(b: &[u8], key: &str) -> Result<String, MetainfoError> {
    String::from_utf8(b.to_vec()).map_err(|_| MetainfoError::NotUtf8 { key: key.to_string() })
}

fn text(obj: Object<'_, '_>, key: &str) -> Result<String, MetainfoError> {
    utf8(bytes(obj, key)?, key)
}

fn lossy_text(obj: Object<'_, '_>) -> Option<String> {
    match obj {
        Object::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The `*.utf-8` variant when present and valid, else the plain one (which must be UTF-8).
fn pick_utf8(
    preferred: Option<&[u8]>,
    plain: Option<&[u8]>,
    key: &str,
) -> Result<Option<String>, MetainfoError> {
    if let Some(s) = preferred.and_then(|b| std::str::from_utf8(b).ok()) {
        return Ok(Some(s.to_string()));
    }
    plain.map(|b| utf8(b, key)).transpose()
}

fn parse_tiers(obj: Object<'_, '_>) -> Result<Vec<Vec<String>>, MetainfoError> {
    let mut list = match obj {
        Object::List(l) => l,
        other => return Err(wrong_type("announce-list", "a list of lists", &other)),
    };
    let mut tiers = Vec::new();
    while let Some(tier_obj) = list.next_object().map_err(bencode_err)? {
        let key = format!("announce-list[{}]", tiers.len());
        let mut tier_list = match tier_obj {
            Object::List(l) => l,
            other => return Err(wrong_type(&key, "a list", &other)),
        };
        let mut tier = Vec::new();
        while let Some(url) = tier_list.next_object().map_err(bencode_err)? {
            let url = text(url, &key)?;
            if !url.is_empty() {
                tier.push(url);
            }
        }
        // Empty tiers are dropped, but still counted in `key` for error messages below.
        tiers.push(tier);
    }
    tiers.retain(|t| !t.is_empty());
    Ok(tiers)
}

fn parse_files<'s>(obj: Object<'_, 's>) -> Result<Vec<RawFile<'s>>, MetainfoError> {
    let mut list = match obj {
        Object::List(l) => l,
        other => return Err(wrong_type("info.files", "a list", &other)),
    };
    let mut out = Vec::new();
    while let Some(item) = list.next_object().map_err(bencode_err)? {
        let index = out.len();
        if index >= MAX_FILES {
            return Err(MetainfoError::Invalid(format!(
                "info.files has more than {MAX_FILES} entries"
            )));
        }
        let key = format!("info.files[{index}]");
        let mut dict = match item {
            Object::Dict(d) => d,
            other => return Err(wrong_type(&key, "a dictionary", &other)),
        };
        let mut length = None;
        let mut path = None;
        let mut path_utf8 = None;
        let mut attr = None;
        while let Some((k, v)) = dict.next_pair().map_err(bencode_err)? {
            match k {
                b"length" => length = Some(int(v, &format!("{key}.length"))?),
                b"path" => path = Some(parse_path(v, &format!("{key}.path"))?),
                b"path.utf-8" => path_utf8 = Some(parse_path(v, &format!("{key}.path.utf-8"))?),
                b"attr" => attr = Some(bytes(v, &format!("{key}.attr"))?),
                _ => {}
            }
        }
        let length = length.ok_or(MetainfoError::MissingKey("info.files[].length"))?;
        out.push(RawFile { index, length, path, path_utf8, attr });
    }
    Ok(out)
}

fn parse_path<'s>(obj: Object<'_, 's>, key: &str) -> Result<Vec<&'s [u8]>, MetainfoError> {
    let mut list = match obj {
        Object::List(l) => l,
        other => return Err(wrong_type(key, "a list of strings", &other)),
    };
    let mut out = Vec::new();
    while let Some(c) = list.next_object().map_err(bencode_err)? {
        out.push(bytes(c, key)?);
    }
    Ok(out)
}

fn decode_components(raw: &[&[u8]]) -> Option<Vec<String>> {
    raw.iter().map(|c| std::str::from_utf8(c).ok().map(str::to_string)).collect()
}

fn build_files(name: &str, raw: Vec<RawFile<'_>>) -> Result<Vec<FileEntry>, MetainfoError> {
    let mut files = Vec::with_capacity(raw.len());
    for f in raw {
        let key = format!("info.files[{}]", f.index);
        if f.length < 0 {
            return Err(MetainfoError::Invalid(format!("{key}.length is negative ({})", f.length)));
        }
        let path = match f.path_utf8.as_deref().and_then(decode_components) {
            Some(p) => p,
            None => {
                let raw_path = f.path.ok_or(MetainfoError::MissingKey("info.files[].path"))?;
                decode_components(&raw_path)
                    .ok_or(MetainfoError::NotUtf8 { key: format!("{key}.path") })?
            }
        };
        let shown = std::iter::once(name).chain(path.iter().map(String::as_str));
        let shown: Vec<&str> = shown.collect();
        check_path(&shown.join("/"), &path)?;
        let pad = f.attr.is_some_and(|a| a.contains(&b'p'));
        files.push(FileEntry { path, length: f.length as u64, offset: 0, pad });
    }
    check_distinct(name, &files)?;
    Ok(files)
}

/// Refuses a file list that names one path twice, or a path that is both a file and a folder:
/// two entries would share one file on disk, and writing one could overwrite the other's
/// verified pieces.
fn check_distinct(name: &str, files: &[FileEntry]) -> Result<(), MetainfoError> {
    // Pad files are never on disk; libtorrent names every pad of one size alike (`.pad/N`).
    let mut paths: Vec<&[String]> =
        files.iter().filter(|f| !f.pad).map(|f| f.path.as_slice()).collect();
    paths.sort_unstable();
    // Sorted by components, a path that is a prefix of another sits right before one that
    // starts with it, so neighbours are enough.
    for pair in paths.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.starts_with(a) {
            let shown = format!("{name}/{}", a.join("/"));
            let reason = if a == b {
                "the torrent lists this file twice".to_string()
            } else {
                format!("this is both a file and the folder of {name}/{}", b.join("/"))
            };
            return Err(MetainfoError::UnsafePath { path: shown, reason });
        }
    }
    Ok(())
}

/// Why `component` is not a safe plain file name, if it is not.
fn unsafe_reason(component: &str) -> Option<&'static str> {
    let b = component.as_bytes();
    if b.is_empty() {
        Some("is empty")
    } else if component == "." || component == ".." {
        Some("refers to a directory, not a name")
    } else if b.contains(&b'/') || b.contains(&b'\\') {
        Some("contains a path separator")
    } else if b.contains(&0) {
        Some("contains a NUL byte")
    } else if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        Some("looks like a Windows drive")
    } else {
        None
    }
}

/// Checks every component of `components`; `shown` is how the whole path is reported.
fn check_path(shown: &str, components: &[String]) -> Result<(), MetainfoError> {
    if components.is_empty() {
        return Err(MetainfoError::UnsafePath {
            path: shown.to_string(),
            reason: "the path has no components".into(),
        });
    }
    for c in components {
        if let Some(reason) = unsafe_reason(c) {
            return Err(MetainfoError::UnsafePath {
                path: shown.to_string(),
                reason: format!("component {c:?} {reason}"),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Creation
// ---------------------------------------------------------------------------------------------

/// What [`create`] puts in a new torrent besides the content.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Tracker URLs: the first becomes `announce`; with more than one, all of them also go to
    /// `announce-list`, one tracker per tier.
    pub trackers: Vec<String>,
    /// Piece size in bytes (a power of two from 16 KiB to 64 MiB); `None` picks
    /// [`auto_piece_size`].
    pub piece_size: Option<u32>,
    /// Free-text `comment`.
    pub comment: Option<String>,
    /// Sets `info.private = 1` (BEP 27).
    pub private: bool,
    /// Multi-file: after every file that does not end on a piece boundary, a pad file of zeros
    /// (BEP 47, `attr` `p`, named `.pad/LENGTH` as libtorrent names them), so each file starts a
    /// piece and can be fetched and verified on its own (a streamed segment is then whole
    /// pieces).
    pub align: bool,
}

/// Why [`create`] could not make a torrent.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Reading the file system failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A symbolic link was found inside the directory.
    #[error("{} is a symbolic link; a torrent can hold only regular files", path.display())]
    Symlink { path: PathBuf },
    /// A device, socket, FIFO or other special file was found.
    #[error("{} is not a regular file or directory", path.display())]
    NotRegularFile { path: PathBuf },
    /// A file or directory name is not UTF-8.
    #[error("the name of {} is not valid UTF-8", path.display())]
    NonUtf8Name { path: PathBuf },
    /// A name that the parser would refuse as unsafe (e.g. contains `\`).
    #[error("the name of {} cannot go in a torrent: {reason}", path.display())]
    UnsafeName { path: PathBuf, reason: &'static str },
    /// Nothing to share: no files, or only empty ones.
    #[error("{} holds no data; a torrent needs at least one non-empty file", path.display())]
    Empty { path: PathBuf },
    /// More than [`MAX_FILES`] files.
    #[error("{} holds more than {MAX_FILES} files", path.display())]
    TooManyFiles { path: PathBuf },
    /// The requested piece size is not allowed.
    #[error("piece size {0} is invalid: use a power of two from 16 KiB to 64 MiB")]
    InvalidPieceSize(u32),
    /// The torrent file would exceed [`MAX_TORRENT_SIZE`] (too many pieces or files).
    #[error(
        "the torrent file would be {size} bytes, over the {MAX_TORRENT_SIZE} byte limit; \
             use a larger piece size"
    )]
    TooLarge { size: u64 },
    /// A file's size changed between listing and hashing.
    #[error("{} changed while it was being hashed", path.display())]
    Changed { path: PathBuf },
    /// The bencode encoder refused the structure (a bug).
    #[error("encoding the torrent failed: {0}")]
    Encode(String),
}

/// Piece size for `total_length` bytes of content.
///
/// Rule: start at 64 KiB and double while the torrent would have more than 2,048 pieces, but
/// never beyond 16 MiB. So a torrent has at most about 2,000 pieces unless it is larger than
/// 32 GiB (2,048 × 16 MiB), where the piece count grows instead, and small torrents keep enough
/// pieces for peers to trade: 16 MiB is 256 pieces. (Measured with `lab swarm --netns --peers 50
/// --file-size 16M --peer-upload 512k --server-upload 5M`: 256 KiB pieces, 64 of them, left peers
/// with nothing to offer each other and gave a ratio to the bound of 1.27; 64 KiB gave 1.16 and
/// 16 KiB 1.17, the extra HAVEs and requests eating the gain. Transmission starts at 32 KiB,
/// libtorrent at 16 KiB, mktorrent uses 256 KiB.)
pub fn auto_piece_size(total_length: u64) -> u32 {
    const MIN: u32 = 64 * 1024;
    const MAX: u32 = 16 * 1024 * 1024;
    const MAX_PIECES: u64 = 2048;
    let mut size = MIN;
    while size < MAX && total_length.div_ceil(size as u64) > MAX_PIECES {
        size *= 2;
    }
    size
}

/// A file to put in the torrent.
struct SourceFile {
    /// Components below the torrent's directory, or `[name]` for a single file.
    components: Vec<String>,
    disk_path: PathBuf,
    length: u64,
    /// A pad file (BEP 47): `length` zeros, not on disk.
    pad: bool,
}

/// `files` with a pad file after each one that does not end on a piece boundary (none after the
/// last), and the new total length.
fn with_pads(files: Vec<SourceFile>, piece_length: u32) -> (Vec<SourceFile>, u64) {
    let pl = piece_length as u64;
    let last = files.len().saturating_sub(1);
    let mut out = Vec::with_capacity(files.len() * 2);
    let mut total = 0u64;
    for (i, f) in files.into_iter().enumerate() {
        total = total.saturating_add(f.length);
        out.push(f);
        let gap = (pl - total % pl) % pl;
        if i < last && gap > 0 {
            let components = vec![".pad".to_string(), gap.to_string()];
            out.push(SourceFile { components, disk_path: PathBuf::new(), length: gap, pad: true });
            total += gap;
        }
    }
    (out, total)
}

/// Makes a `.torrent` file from `path`: a regular file gives a single-file torrent, a directory
/// a multi-file torrent with every regular file below it (recursively), sorted by their path
/// components compared as bytes. Symbolic links and special files inside a directory are
/// refused (the top-level `path` itself may be a link). Files are hashed by streaming them;
/// `progress(done_bytes, total_bytes)` is called after each piece.
pub fn create(
    path: &Path,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u8>, CreateError> {
    let meta = fs::metadata(path).map_err(|source| io_err(path, source))?;
    let name = torrent_name(path)?;

    let (files, multi_file) = if meta.is_file() {
        let file = SourceFile {
            components: vec![name.clone()],
            disk_path: path.to_path_buf(),
            length: meta.len(),
            pad: false,
        };
        (vec![file], false)
    } else if meta.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut Vec::new(), path, &mut files)?;
        files.sort_by(|a, b| a.components.cmp(&b.components));
        (files, true)
    } else {
        return Err(CreateError::NotRegularFile { path: path.to_path_buf() });
    };

    let mut total: u64 = 0;
    for f in &files {
        total = total.saturating_add(f.length);
    }
    if total == 0 {
        return Err(CreateError::Empty { path: path.to_path_buf() });
    }

    let piece_length = match opts.piece_size {
        Some(s) if s.is_power_of_two() && (16 * 1024..=MAX_PIECE_LENGTH).contains(&s) => s,
        Some(s) => return Err(CreateError::InvalidPieceSize(s)),
        None => auto_piece_size(total),
    };
    let (files, total) =
        if opts.align && multi_file { with_pads(files, piece_length) } else { (files, total) };
    let pieces_size = total.div_ceil(piece_length as u64).saturating_mul(20);
    if pieces_size > MAX_TORRENT_SIZE as u64 {
        return Err(CreateError::TooLarge { size: pieces_size });
    }

    let pieces = hash_files(&files, piece_length, total, progress)?;
    let out = encode_torrent(&name, &files, multi_file, piece_length, &pieces, opts)
        .map_err(|e| CreateError::Encode(e.to_string()))?;
    if out.len() > MAX_TORRENT_SIZE {
        return Err(CreateError::TooLarge { size: out.len() as u64 });
    }
    Ok(out)
}

fn io_err(path: &Path, source: io::Error) -> CreateError {
    CreateError::Io { path: path.to_path_buf(), source }
}

/// The torrent's `name`: the last component of `path` (resolved if `path` ends in `.`/`..`).
fn torrent_name(path: &Path) -> Result<String, CreateError> {
    let resolved;
    let file_name = match path.file_name() {
        Some(n) => n,
        None => {
            resolved = fs::canonicalize(path).map_err(|source| io_err(path, source))?;
            resolved.file_name().ok_or_else(|| CreateError::UnsafeName {
                path: path.to_path_buf(),
                reason: "has no file name",
            })?
        }
    };
    checked_name(file_name, path)
}

fn checked_name(name: &std::ffi::OsStr, path: &Path) -> Result<String, CreateError> {
    let name = name.to_str().ok_or_else(|| CreateError::NonUtf8Name { path: path.into() })?;
    if let Some(reason) = unsafe_reason(name) {
        return Err(CreateError::UnsafeName { path: path.to_path_buf(), reason });
    }
    Ok(name.to_string())
}

/// Collects the regular files below `dir` into `out`; `prefix` holds `dir`'s components.
fn walk(
    root: &Path,
    prefix: &mut Vec<String>,
    dir: &Path,
    out: &mut Vec<SourceFile>,
) -> Result<(), CreateError> {
    let entries = fs::read_dir(dir).map_err(|source| io_err(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_err(dir, source))?;
        let path = entry.path();
        let name = checked_name(&entry.file_name(), &path)?;
        let meta = fs::symlink_metadata(&path).map_err(|source| io_err(&path, source))?;
        let kind = meta.file_type();
        prefix.push(name);
        if kind.is_symlink() {
            return Err(CreateError::Symlink { path });
        } else if kind.is_dir() {
            walk(root, prefix, &path, out)?;
        } else if kind.is_file() {
            if out.len() >= MAX_FILES {
                return Err(CreateError::TooManyFiles { path: root.to_path_buf() });
            }
            out.push(SourceFile {
                components: prefix.clone(),
                disk_path: path,
                length: meta.len(),
                pad: false,
            });
        } else {
            return Err(CreateError::NotRegularFile { path });
        }
        prefix.pop();
    }
    Ok(())
}

/// SHA-1 of every piece of the files' concatenation, streamed through a fixed buffer.
fn hash_files(
    files: &[SourceFile],
    piece_length: u32,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u8>, CreateError> {
    let piece_length = piece_length as u64;
    let mut pieces = Vec::with_capacity((total.div_ceil(piece_length) * 20) as usize);
    let mut hasher = Sha1::new();
    let mut in_piece: u64 = 0;
    let mut done: u64 = 0;
    let mut buf = vec![0u8; 256 * 1024];
    for f in files {
        let mut reader: Box<dyn Read> = if f.pad {
            Box::new(io::repeat(0).take(f.length))
        } else {
            let file = File::open(&f.disk_path).map_err(|source| io_err(&f.disk_path, source))?;
            Box::new(file.take(f.length))
        };
        let mut read_total: u64 = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(io_err(&f.disk_path, source)),
            };
            read_total += n as u64;
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                let take = chunk.len().min((piece_length - in_piece) as usize);
                hasher.update(&chunk[..take]);
                in_piece += take as u64;
                done += take as u64;
                chunk = &chunk[take..];
                if in_piece == piece_length {
                    pieces.extend_from_slice(&hasher.finalize_reset());
                    in_piece = 0;
                    progress(done, total);
                }
            }
        }
        if read_total != f.length {
            return Err(CreateError::Changed { path: f.disk_path.clone() });
        }
    }
    if in_piece > 0 {
        pieces.extend_from_slice(&hasher.finalize_reset());
        progress(done, total);
    }
    Ok(pieces)
}

fn encode_torrent(
    name: &str,
    files: &[SourceFile],
    multi_file: bool,
    piece_length: u32,
    pieces: &[u8],
    opts: &CreateOptions,
) -> Result<Vec<u8>, bendy::encoding::Error> {
    let creation_date = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut enc = bendy::encoding::Encoder::new();
    enc.emit_and_sort_dict(|top| {
        if let Some(first) = opts.trackers.first() {
            top.emit_pair(b"announce", first)?;
        }
        if opts.trackers.len() > 1 {
            let tiers: Vec<Vec<&str>> = opts.trackers.iter().map(|t| vec![t.as_str()]).collect();
            top.emit_pair(b"announce-list", tiers)?;
        }
        if let Some(c) = &opts.comment {
            top.emit_pair(b"comment", c)?;
        }
        top.emit_pair(b"created by", "swarmcast 0.1")?;
        top.emit_pair(b"creation date", creation_date)?;
        top.emit_pair_with(b"info", |e| {
            let layout =
                if multi_file { Layout::Files(files) } else { Layout::One(files[0].length) };
            emit_info(e, name, layout, piece_length, pieces, opts.private)
        })
    })?;
    enc.get_output()
}

/// The info dictionary of a single-file torrent of `length` bytes whose piece hashes are
/// `pieces` (20 bytes per piece), exactly as [`create`] writes it. The swarm simulator serves
/// it by metadata exchange, so a simulated magnet link fetches what a real one would.
pub fn single_file_info(
    name: &str,
    length: u64,
    piece_length: u32,
    pieces: &[u8],
) -> Result<Vec<u8>, CreateError> {
    let mut enc = bendy::encoding::Encoder::new();
    enc.emit_with(|e| emit_info(e, name, Layout::One(length), piece_length, pieces, false))
        .and_then(|()| enc.get_output())
        .map_err(|e| CreateError::Encode(e.to_string()))
}

/// What an info dictionary holds: one file's length, or the files of a directory.
enum Layout<'a> {
    One(u64),
    Files(&'a [SourceFile]),
}

fn emit_info(
    e: bendy::encoding::SingleItemEncoder,
    name: &str,
    layout: Layout,
    piece_length: u32,
    pieces: &[u8],
    private: bool,
) -> Result<(), bendy::encoding::Error> {
    e.emit_unsorted_dict(|info| {
        match layout {
            Layout::Files(files) => info.emit_pair_with(b"files", |e| {
                e.emit_list(|list| {
                    for f in files {
                        list.emit_and_sort_dict(|d| {
                            if f.pad {
                                d.emit_pair(b"attr", "p")?;
                            }
                            d.emit_pair(b"length", f.length)?;
                            d.emit_pair(b"path", &f.components)
                        })?;
                    }
                    Ok(())
                })
            })?,
            Layout::One(length) => info.emit_pair(b"length", length)?,
        }
        info.emit_pair(b"name", name)?;
        info.emit_pair(b"piece length", piece_length)?;
        info.emit_pair_with(b"pieces", |e| e.emit_bytes(pieces))?;
        if private {
            info.emit_pair(b"private", 1u8)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bencode value for hand-built test inputs; dict pairs are written in the given order
    /// (so tests can also build unsorted dictionaries).
    enum B {
        I(i64),
        S(Vec<u8>),
        L(Vec<B>),
        D(Vec<(&'static str, B)>),
    }

    fn s(v: &str) -> B {
        B::S(v.as_bytes().to_vec())
    }

    fn path(components: &[&str]) -> B {
        B::L(components.iter().map(|c| s(c)).collect())
    }

    impl B {
        fn encode(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.write(&mut out);
            out
        }

        fn write(&self, out: &mut Vec<u8>) {
            match self {
                B::I(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
                B::S(b) => {
                    out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                    out.extend_from_slice(b);
                }
                B::L(items) => {
                    out.push(b'l');
                    items.iter().for_each(|i| i.write(out));
                    out.push(b'e');
                }
                B::D(pairs) => {
                    out.push(b'd');
                    for (k, v) in pairs {
                        s(k).write(out);
                        v.write(out);
                    }
                    out.push(b'e');
                }
            }
        }
    }

    fn single_info(name: &str, length: i64, piece_length: i64, num_pieces: usize) -> B {
        B::D(vec![
            ("length", B::I(length)),
            ("name", s(name)),
            ("piece length", B::I(piece_length)),
            ("pieces", B::S(vec![7u8; 20 * num_pieces])),
        ])
    }

    fn multi_info(name: &str, files: Vec<(B, i64)>, piece_length: i64, num_pieces: usize) -> B {
        let files = files
            .into_iter()
            .map(|(p, len)| B::D(vec![("length", B::I(len)), ("path", p)]))
            .collect();
        B::D(vec![
            ("files", B::L(files)),
            ("name", s(name)),
            ("piece length", B::I(piece_length)),
            ("pieces", B::S(vec![7u8; 20 * num_pieces])),
        ])
    }

    fn torrent(info: B) -> Vec<u8> {
        B::D(vec![("announce", s("http://t.example/announce")), ("info", info)]).encode()
    }

    fn parse_err(data: &[u8]) -> MetainfoError {
        Metainfo::from_bytes(data).expect_err("input should be refused")
    }

    fn sha1(data: &[u8]) -> [u8; 20] {
        Sha1::digest(data).into()
    }

    fn no_progress() -> impl FnMut(u64, u64) {
        |_, _| {}
    }

    /// Deterministic, non-repeating-looking content.
    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed).collect()
    }

    // --- parsing: well-formed input -------------------------------------------------------

    #[test]
    fn parses_single_file_torrent() {
        let data = torrent(single_info("movie.mkv", 40_000, 16_384, 3));
        let m = Metainfo::from_bytes(&data).unwrap();
        assert_eq!(m.info.name, "movie.mkv");
        assert_eq!(m.info.piece_length, 16_384);
        assert_eq!(m.info.num_pieces(), 3);
        assert_eq!(m.info.piece_size(2), 40_000 - 2 * 16_384);
        assert_eq!(m.info.total_length, 40_000);
        assert!(!m.info.multi_file && !m.info.private);
        assert_eq!(
            m.info.files,
            vec![FileEntry {
                path: vec!["movie.mkv".into()],
                length: 40_000,
                offset: 0,
                pad: false
            }]
        );
        assert_eq!(m.trackers, vec![vec!["http://t.example/announce".to_string()]]);
        assert_eq!(m.info_hash, InfoHash(sha1(&m.info_bytes)));
        assert_eq!((m.comment, m.created_by, m.creation_date), (None, None, None));
    }

    #[test]
    fn unknown_info_keys_stay_in_the_hash() {
        let info = B::D(vec![
            ("length", B::I(10)),
            ("name", s("x")),
            ("piece length", B::I(16_384)),
            ("pieces", B::S(vec![1u8; 20])),
            ("private", B::I(1)),
            ("source", s("SOMEWHERE")),
        ]);
        let info_bytes = info.encode();
        let data = torrent(info);
        let m = Metainfo::from_bytes(&data).unwrap();
        assert_eq!(m.info_bytes, info_bytes);
        assert_eq!(m.info_hash, InfoHash(sha1(&info_bytes)));
        assert!(m.info.private);
        assert_eq!(Info::from_bytes(&info_bytes).unwrap(), m.info);
    }

    #[test]
    fn multi_file_offsets_and_utf8_variants() {
        let info = B::D(vec![
            (
                "files",
                B::L(vec![
                    B::D(vec![("length", B::I(5)), ("path", path(&["a", "b.txt"]))]),
                    B::D(vec![("length", B::I(0)), ("path", path(&["empty"]))]),
                    B::D(vec![
                        ("length", B::I(20)),
                        ("path", B::L(vec![B::S(vec![0xff, 0xfe])])),
                        ("path.utf-8", path(&["ü.txt"])),
                    ]),
                ]),
            ),
            ("name", B::S(vec![0xe9])),
            ("name.utf-8", s("dir")),
            ("piece length", B::I(16)),
            ("pieces", B::S(vec![0u8; 40])),
        ]);
        let info = Info::from_bytes(&info.encode()).unwrap();
        assert_eq!(info.name, "dir");
        assert!(info.multi_file);
        assert_eq!(info.total_length, 25);
        let want = vec![
            FileEntry { path: vec!["a".into(), "b.txt".into()], length: 5, offset: 0, pad: false },
            FileEntry { path: vec!["empty".into()], length: 0, offset: 5, pad: false },
            FileEntry { path: vec!["ü.txt".into()], length: 20, offset: 5, pad: false },
        ];
        assert_eq!(info.files, want);
    }

    #[test]
    fn announce_list_takes_precedence() {
        let info = || single_info("x", 10, 16_384, 1);
        let data = B::D(vec![
            ("announce", s("http://ignored.example/")),
            (
                "announce-list",
                B::L(vec![
                    B::L(vec![s("http://a.example/"), s("http://b.example/")]),
                    B::L(vec![]),
                    B::L(vec![s("")]),
                    B::L(vec![s("udp://c.example:80")]),
                ]),
            ),
            ("comment", s("hello")),
            ("created by", s("tool 1.0")),
            ("creation date", B::I(1_700_000_000)),
            ("info", info()),
        ])
        .encode();
        let m = Metainfo::from_bytes(&data).unwrap();
        assert_eq!(
            m.trackers,
            vec![
                vec!["http://a.example/".to_string(), "http://b.example/".to_string()],
                vec!["udp://c.example:80".to_string()],
            ]
        );
        assert_eq!(m.comment.as_deref(), Some("hello"));
        assert_eq!(m.created_by.as_deref(), Some("tool 1.0"));
        assert_eq!(m.creation_date, Some(1_700_000_000));

        // An announce-list with only empty tiers falls back to announce.
        let data = B::D(vec![
            ("announce", s("http://only.example/")),
            ("announce-list", B::L(vec![B::L(vec![])])),
            ("info", info()),
        ])
        .encode();
        let m = Metainfo::from_bytes(&data).unwrap();
        assert_eq!(m.trackers, vec![vec!["http://only.example/".to_string()]]);

        // No trackers at all is fine (DHT / magnet peers).
        let data = B::D(vec![("info", info())]).encode();
        assert!(Metainfo::from_bytes(&data).unwrap().trackers.is_empty());
    }

    // --- parsing: strictness --------------------------------------------------------------

    #[test]
    fn truncated_input_is_refused() {
        let data = torrent(single_info("x", 10, 16_384, 1));
        for cut in [0, 1, 10, data.len() / 2, data.len() - 1] {
            assert_eq!(parse_err(&data[..cut]), MetainfoError::Truncated, "cut at {cut}");
        }
        assert_eq!(MetainfoError::Truncated.to_string(), "torrent file is truncated");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let mut data = torrent(single_info("x", 10, 16_384, 1));
        data.extend_from_slice(b"junk");
        assert_eq!(parse_err(&data), MetainfoError::TrailingData { extra: 4 });

        let mut info = single_info("x", 10, 16_384, 1).encode();
        info.push(b'e');
        assert_eq!(Info::from_bytes(&info), Err(MetainfoError::TrailingData { extra: 1 }));
    }

    #[test]
    fn non_canonical_bencode_is_refused() {
        let good = torrent(single_info("x", 10, 16_384, 1));
        let text = String::from_utf8_lossy(&good).into_owned();
        let non_canonical_int = text.replace("i10e", "i010e").into_bytes();
        assert!(matches!(parse_err(&non_canonical_int), MetainfoError::Bencode(_)));
        let info_i03 = text.replace("6:lengthi10e", "6:lengthi03e").into_bytes();
        assert!(matches!(parse_err(&info_i03), MetainfoError::Bencode(_)));
        assert!(matches!(parse_err(b"d1:ai03ee"), MetainfoError::Bencode(_)));

        let unsorted = B::D(vec![
            ("info", single_info("x", 10, 16_384, 1)),
            ("announce", s("http://t.example/")),
        ])
        .encode();
        assert!(
            matches!(parse_err(&unsorted), MetainfoError::Bencode(ref m) if m.contains("sorted"))
        );

        let unsorted_info = torrent(B::D(vec![
            ("name", s("x")),
            ("length", B::I(10)),
            ("piece length", B::I(16_384)),
            ("pieces", B::S(vec![0; 20])),
        ]));
        assert!(matches!(parse_err(&unsorted_info), MetainfoError::Bencode(_)));
    }

    #[test]
    fn bad_fields_are_refused_with_clear_messages() {
        let err = parse_err(&torrent(B::D(vec![
            ("length", B::I(10)),
            ("name", s("x")),
            ("piece length", B::I(16_384)),
            ("pieces", B::S(vec![0; 41])),
        ])));
        assert_eq!(err.to_string(), "info.pieces length 41 is not a multiple of 20");

        let err = parse_err(&torrent(single_info("x", 40_000, 16_384, 2)));
        assert_eq!(
            err.to_string(),
            "info.pieces holds 2 hashes but 40000 bytes at piece length 16384 need 3"
        );

        let err = parse_err(&torrent(single_info("x", -5, 16_384, 0)));
        assert_eq!(err, MetainfoError::Invalid("info.length is negative (-5)".into()));

        let err = parse_err(&torrent(multi_info("d", vec![(path(&["f"]), -1)], 16_384, 0)));
        assert_eq!(err, MetainfoError::Invalid("info.files[0].length is negative (-1)".into()));

        let err = parse_err(&torrent(single_info("x", 0, 16_384, 0)));
        assert_eq!(err.to_string(), "torrent has no content (total length is 0)");

        let err = parse_err(&torrent(single_info("x", 10, 0, 1)));
        assert_eq!(err.to_string(), "info.piece length 0 is out of range (1 ..= 67108864)");
        let err = parse_err(&torrent(single_info("x", 10, 128 * 1024 * 1024, 1)));
        assert!(matches!(err, MetainfoError::Invalid(_)));

        let huge = i64::MAX;
        let err = parse_err(&torrent(multi_info(
            "d",
            vec![(path(&["a"]), huge), (path(&["b"]), huge), (path(&["c"]), huge)],
            16_384,
            1,
        )));
        assert_eq!(err.to_string(), "the file lengths add up to more than 2^64 bytes");

        let err = parse_err(&B::D(vec![("announce", s("x"))]).encode());
        assert_eq!(err, MetainfoError::MissingKey("info"));
        assert_eq!(err.to_string(), "torrent file is missing required key `info`");

        let err = parse_err(&torrent(B::D(vec![("name", s("x"))])));
        assert_eq!(err, MetainfoError::MissingKey("info.piece length"));

        let err = parse_err(&torrent(B::D(vec![
            ("name", s("x")),
            ("piece length", B::I(16_384)),
            ("pieces", B::S(vec![0; 20])),
        ])));
        assert_eq!(err, MetainfoError::MissingKey("info.length or info.files"));

        let err = parse_err(&torrent(B::D(vec![("length", s("10")), ("name", s("x"))])));
        assert_eq!(err.to_string(), "`info.length` should be an integer but is a byte string");

        let err = parse_err(&B::D(vec![("info", B::L(vec![]))]).encode());
        assert_eq!(err.to_string(), "`info` should be a dictionary but is a list");

        let err = parse_err(b"le");
        assert_eq!(err.to_string(), "`torrent` should be a dictionary but is a list");

        let err = parse_err(&torrent(B::D(vec![
            ("length", B::I(10)),
            ("name", B::S(vec![0xff])),
            ("piece length", B::I(16_384)),
            ("pieces", B::S(vec![0; 20])),
        ])));
        assert_eq!(err, MetainfoError::NotUtf8 { key: "info.name".into() });

        let err = parse_err(&torrent(single_info("x", 10, 99_999_999_999_999_999, 1)));
        assert!(matches!(err, MetainfoError::Invalid(_)));
        let err = parse_err(&torrent(B::D(vec![
            ("length", B::I(10)),
            ("name", s("x")),
            ("piece length", B::I(16_384)),
            ("pieces", B::S(vec![0; 20])),
            ("private", s("yes")),
        ])));
        assert!(matches!(err, MetainfoError::WrongType { .. }));
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let data = vec![b'd'; MAX_TORRENT_SIZE + 1];
        assert_eq!(
            parse_err(&data),
            MetainfoError::TooLarge { size: MAX_TORRENT_SIZE + 1, limit: MAX_TORRENT_SIZE }
        );
    }

    #[test]
    fn too_many_files_are_refused() {
        let files = (0..=MAX_FILES).map(|_| (path(&["f"]), 1)).collect();
        let err = parse_err(&torrent(multi_info("d", files, 16_384, 7)));
        assert_eq!(err.to_string(), "info.files has more than 100000 entries");
    }

    #[test]
    fn a_path_named_twice_or_both_file_and_folder_is_refused() {
        let cases = [
            (vec![(path(&["x"]), 10), (path(&["x"]), 10)], "d/x", "twice"),
            (
                vec![(path(&["a", "b"]), 5), (path(&["c"]), 5), (path(&["a", "b"]), 5)],
                "d/a/b",
                "twice",
            ),
            (vec![(path(&["a"]), 5), (path(&["a", "b"]), 5)], "d/a", "both a file and the folder"),
            (vec![(path(&["a", "b", "c"]), 5), (path(&["a", "b"]), 5)], "d/a/b", "both a file"),
        ];
        for (files, shown, why) in cases {
            match parse_err(&torrent(multi_info("d", files, 16_384, 1))) {
                MetainfoError::UnsafePath { path, reason } => {
                    assert_eq!(path, shown);
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("{shown}: expected UnsafePath, got {other:?}"),
            }
        }
        // Siblings that share a prefix of characters (not of components) are fine.
        let ok = vec![(path(&["a"]), 5), (path(&["ab", "c"]), 5), (path(&["a0"]), 6)];
        assert!(Metainfo::from_bytes(&torrent(multi_info("d", ok, 16_384, 1))).is_ok());
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let cases: Vec<(B, &str)> = vec![
            (path(&["..", "x"]), "d/../x"),
            (path(&["a", "/etc/passwd"]), "d/a//etc/passwd"),
            (path(&["a", "", "b"]), "d/a//b"),
            (path(&["a/b"]), "d/a/b"),
            (path(&["a\\b"]), "d/a\\b"),
            (path(&["C:"]), "d/C:"),
            (path(&["c:evil"]), "d/c:evil"),
            (path(&["."]), "d/."),
            (path(&["nul\0byte"]), "d/nul\0byte"),
            (path(&[]), "d"),
        ];
        for (p, shown) in cases {
            let err = parse_err(&torrent(multi_info("d", vec![(p, 10)], 16_384, 1)));
            match err {
                MetainfoError::UnsafePath { path, .. } => assert_eq!(path, shown),
                other => panic!("{shown:?}: expected UnsafePath, got {other:?}"),
            }
        }
        for name in ["..", ".", "", "a/b", "/etc/passwd", "D:\\x"] {
            let err = parse_err(&torrent(single_info(name, 10, 16_384, 1)));
            assert!(
                matches!(err, MetainfoError::UnsafePath { ref path, .. } if path == name),
                "{name:?}: {err:?}"
            );
            let err = parse_err(&torrent(multi_info(name, vec![(path(&["f"]), 10)], 16_384, 1)));
            assert!(matches!(err, MetainfoError::UnsafePath { .. }), "{name:?}: {err:?}");
        }
        let err = parse_err(&torrent(multi_info("d", vec![(path(&[".."]), 10)], 16_384, 1)));
        assert_eq!(
            err.to_string(),
            "unsafe path \"d/..\" in torrent: component \"..\" refers to a directory, not a name"
        );
    }

    // --- InfoHash, auto_piece_size ---------------------------------------------------------

    #[test]
    fn info_hash_from_hex() {
        let hex = "0123456789abcdefABCDEF0123456789abcdef01";
        let h = InfoHash::from_hex(hex).unwrap();
        assert_eq!(h.to_string(), hex.to_lowercase());
        assert_eq!(InfoHash::from_hex(&hex[..39]), None);
        assert_eq!(InfoHash::from_hex(&format!("{}g", &hex[..39])), None);
        assert_eq!(InfoHash::from_hex(&format!("{hex}00")), None);
    }

    #[test]
    fn auto_piece_size_values() {
        const KIB: u64 = 1024;
        assert_eq!(auto_piece_size(1024 * KIB), 64 * 1024);
        assert_eq!(auto_piece_size(1), 64 * 1024);
        assert_eq!(auto_piece_size(16 * 1024 * KIB), 64 * 1024); // 256 pieces
        assert_eq!(auto_piece_size(128 * 1024 * KIB), 64 * 1024); // exactly 2,048 pieces
        assert_eq!(auto_piece_size(128 * 1024 * KIB + 1), 128 * 1024);
        assert_eq!(auto_piece_size(512 * 1024 * KIB), 256 * 1024);
        assert_eq!(auto_piece_size(512 * 1024 * KIB + 1), 512 * 1024);
        assert_eq!(auto_piece_size(1024 * 1024 * KIB), 512 * 1024);
        assert_eq!(auto_piece_size(4 * 1024 * 1024 * KIB), 2 * 1024 * 1024);
        assert_eq!(auto_piece_size(1024 * 1024 * 1024 * KIB), 16 * 1024 * 1024);
    }

    // --- creation ---------------------------------------------------------------------------

    #[test]
    fn create_single_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("video.bin");
        let data = content(3 * 16_384 + 1000, 1);
        fs::write(&file, &data).unwrap();

        let opts = CreateOptions {
            trackers: vec!["http://t.example/announce".into()],
            piece_size: Some(16_384),
            comment: Some("a comment".into()),
            private: true,
            align: false,
        };
        let mut calls = Vec::new();
        let bytes = create(&file, &opts, &mut |done, total| calls.push((done, total))).unwrap();
        let total = data.len() as u64;
        assert_eq!(calls, vec![(16_384, total), (32_768, total), (49_152, total), (total, total)]);

        let m = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(m.info.name, "video.bin");
        assert!(!m.info.multi_file);
        assert!(m.info.private);
        assert_eq!(m.info.total_length, total);
        assert_eq!(m.info.piece_size(3), 1000);
        assert_eq!(
            m.info.files,
            vec![FileEntry {
                path: vec!["video.bin".into()],
                length: total,
                offset: 0,
                pad: false
            }]
        );
        let want: Vec<[u8; 20]> = data.chunks(16_384).map(sha1).collect();
        assert_eq!(m.info.pieces, want);
        assert_eq!(m.trackers, vec![vec!["http://t.example/announce".to_string()]]);
        assert_eq!(m.comment.as_deref(), Some("a comment"));
        assert_eq!(m.created_by.as_deref(), Some("swarmcast 0.1"));
        assert!(m.creation_date.unwrap() > 1_600_000_000);
        assert_eq!(m.info_hash, InfoHash(sha1(&m.info_bytes)));
        // One tracker: no announce-list key at all.
        assert!(!bytes.windows(13).any(|w| w == b"announce-list"));
    }

    #[test]
    fn create_directory_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("album");
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::create_dir_all(root.join("empty-dir")).unwrap();
        let files: Vec<(&[&str], Vec<u8>)> = vec![
            (&["a.txt"], content(10_000, 2)),
            (&["sub", "b.bin"], content(30_000, 3)),
            (&["sub", "deeper", "c"], content(5, 4)),
            (&["sub.txt"], Vec::new()),
            (&["z"], content(20_000, 5)),
        ];
        for (p, d) in &files {
            fs::write(root.join(p.join("/")), d).unwrap();
        }

        let opts = CreateOptions {
            trackers: vec!["http://a.example/".into(), "udp://b.example:80".into()],
            piece_size: Some(16_384),
            ..CreateOptions::default()
        };
        let mut last = (0, 0);
        let bytes = create(&root, &opts, &mut |d, t| last = (d, t)).unwrap();
        let m = Metainfo::from_bytes(&bytes).unwrap();

        assert_eq!(m.info.name, "album");
        assert!(m.info.multi_file && !m.info.private);
        let mut offset = 0;
        let mut concat = Vec::new();
        let mut want_entries = Vec::new();
        for (p, d) in &files {
            let path = p.iter().map(|c| c.to_string()).collect();
            want_entries.push(FileEntry { path, length: d.len() as u64, offset, pad: false });
            offset += d.len() as u64;
            concat.extend_from_slice(d);
        }
        assert_eq!(m.info.files, want_entries);
        assert_eq!(m.info.total_length, concat.len() as u64);
        assert_eq!(last, (concat.len() as u64, concat.len() as u64));
        let want: Vec<[u8; 20]> = concat.chunks(16_384).map(sha1).collect();
        assert_eq!(m.info.pieces, want);
        assert_eq!(
            m.trackers,
            vec![vec!["http://a.example/".to_string()], vec!["udp://b.example:80".to_string()]]
        );
        assert_eq!(m.info_hash, InfoHash(sha1(&m.info_bytes)));
    }

    #[test]
    fn align_pads_every_file_but_the_last_to_a_piece_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("movie");
        fs::create_dir_all(&root).unwrap();
        // Sizes: not aligned, exactly one piece, empty, not aligned (last).
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("a", content(20_000, 1)),
            ("b", content(16_384, 2)),
            ("c", Vec::new()),
            ("d", content(5_000, 3)),
        ];
        for (p, d) in &files {
            fs::write(root.join(p), d).unwrap();
        }
        let opts = CreateOptions { piece_size: Some(16_384), align: true, ..Default::default() };
        let m = Metainfo::from_bytes(&create(&root, &opts, &mut |_, _| {}).unwrap()).unwrap();
        let shown: Vec<(String, u64, u64, bool)> =
            m.info.files.iter().map(|f| (f.path.join("/"), f.length, f.offset, f.pad)).collect();
        let want = [
            ("a", 20_000, 0, false),
            (".pad/12768", 12_768, 20_000, true),
            ("b", 16_384, 32_768, false),
            ("c", 0, 49_152, false),
            ("d", 5_000, 49_152, false),
        ];
        let want: Vec<_> =
            want.iter().map(|(p, l, o, pad)| (p.to_string(), *l, *o, *pad)).collect();
        assert_eq!(shown, want);
        // The pieces hash the files with zeros in the pads.
        let mut concat = files[0].1.clone();
        concat.resize(32_768, 0);
        concat.extend_from_slice(&files[1].1);
        concat.extend_from_slice(&files[3].1);
        let hashes: Vec<[u8; 20]> = concat.chunks(16_384).map(sha1).collect();
        assert_eq!(m.info.pieces, hashes);
        // A single file has nothing to align.
        let one = root.join("a");
        let m = Metainfo::from_bytes(&create(&one, &opts, &mut |_, _| {}).unwrap()).unwrap();
        assert_eq!(m.info.files.len(), 1);
    }

    #[test]
    fn pad_files_of_one_size_may_share_a_name_and_other_files_may_not() {
        let pad = |len: i64| {
            B::D(vec![("attr", s("p")), ("length", B::I(len)), ("path", path(&[".pad", "8"]))])
        };
        let file = |name: &str| B::D(vec![("length", B::I(8)), ("path", path(&[name]))]);
        let info = |files: Vec<B>| {
            B::D(vec![
                ("files", B::L(files)),
                ("name", s("clip")),
                ("piece length", B::I(16)),
                ("pieces", B::S(vec![0; 40])),
            ])
            .encode()
        };
        let parsed = Info::from_bytes(&info(vec![file("a"), pad(8), file("b"), pad(8)])).unwrap();
        let pads: Vec<bool> = parsed.files.iter().map(|f| f.pad).collect();
        assert_eq!(pads, [false, true, false, true]);
        let twice = Info::from_bytes(&info(vec![file("a"), file("b"), file("a"), file("c")]));
        assert!(matches!(twice, Err(MetainfoError::UnsafePath { .. })), "{twice:?}");
    }

    #[test]
    fn create_picks_auto_piece_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, content(1000, 0)).unwrap();
        let bytes = create(&file, &CreateOptions::default(), &mut no_progress()).unwrap();
        let m = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(m.info.piece_length, 64 * 1024);
        assert!(m.trackers.is_empty());
        assert_eq!(m.comment, None);
    }

    #[test]
    fn a_single_file_info_is_the_one_create_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("movie.mp4");
        let data = content(5 * 16_384 + 7, 3);
        fs::write(&file, &data).unwrap();
        let opts = CreateOptions { piece_size: Some(16_384), ..CreateOptions::default() };
        let m = Metainfo::from_bytes(&create(&file, &opts, &mut no_progress()).unwrap()).unwrap();
        let pieces: Vec<u8> = m.info.pieces.concat();
        let info = single_file_info("movie.mp4", data.len() as u64, 16_384, &pieces).unwrap();
        assert_eq!(info, m.info_bytes);
    }

    #[test]
    fn create_refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let empty_file = dir.path().join("empty");
        fs::write(&empty_file, b"").unwrap();
        let opts = CreateOptions::default();
        let err = create(&empty_file, &opts, &mut no_progress()).unwrap_err();
        assert!(matches!(err, CreateError::Empty { .. }), "{err:?}");

        let empty_dir = dir.path().join("nothing");
        fs::create_dir_all(empty_dir.join("inner")).unwrap();
        fs::write(empty_dir.join("inner/zero"), b"").unwrap();
        let err = create(&empty_dir, &opts, &mut no_progress()).unwrap_err();
        assert!(matches!(err, CreateError::Empty { .. }), "{err:?}");

        let missing = dir.path().join("missing");
        let err = create(&missing, &opts, &mut no_progress()).unwrap_err();
        assert!(matches!(err, CreateError::Io { .. }), "{err:?}");

        let file = dir.path().join("f");
        fs::write(&file, b"data").unwrap();
        for bad in [0, 1000, 16_384 + 1, 128 * 1024 * 1024] {
            let opts = CreateOptions { piece_size: Some(bad), ..CreateOptions::default() };
            let err = create(&file, &opts, &mut no_progress()).unwrap_err();
            assert!(matches!(err, CreateError::InvalidPieceSize(b) if b == bad), "{err:?}");
        }

        let bad_name = dir.path().join("back\\slash");
        fs::write(&bad_name, b"data").unwrap();
        let err = create(&bad_name, &CreateOptions::default(), &mut no_progress()).unwrap_err();
        assert!(matches!(err, CreateError::UnsafeName { .. }), "{err:?}");
    }

    #[cfg(unix)]
    #[test]
    fn create_refuses_symlinks_inside_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("real"), b"data").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let err = create(&root, &CreateOptions::default(), &mut no_progress()).unwrap_err();
        match err {
            CreateError::Symlink { path } => assert_eq!(path, root.join("link")),
            other => panic!("expected Symlink, got {other:?}"),
        }
    }
}
