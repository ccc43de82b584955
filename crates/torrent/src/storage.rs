//! Piece storage: maps the torrent's byte stream onto its files (pieces may span files), writes
//! and reads blocks with positional I/O, and verifies each piece's SHA-1.
//!
//! Safety: every path is rebuilt here from the metainfo's components and each component is
//! checked again (the metainfo parser already refused unsafe names), so nothing is ever created
//! outside the target directory. Nothing is preallocated; a piece counts only once its hash has
//! been verified, and on start [`Storage::check_existing`] re-hashes what is on disk, so after a
//! crash at most the unverified pieces are lost.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::metainfo::Info;
use crate::Bitfield;

/// Storage could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsafe path component {0:?} in the torrent's file list: refusing to write outside the target directory")]
    UnsafePath(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

struct StoredFile {
    path: PathBuf,
    offset: u64,
    length: u64,
    handle: File,
    /// Created empty by this open: it holds no data, so re-checking it is pointless.
    fresh: bool,
}

/// The files of one torrent on disk.
pub struct Storage {
    files: Vec<StoredFile>,
    piece_length: u32,
    total_length: u64,
    hashes: Vec<[u8; 20]>,
}

/// How storage is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Create missing files and directories; read and write.
    ReadWrite,
    /// Every file must exist; never write (seeding someone's data).
    ReadOnly,
}

/// True when `c` is a plain file name: not empty, not `.`/`..`, no separators, NUL or drive prefix.
pub fn is_safe_component(c: &str) -> bool {
    !(c.is_empty()
        || c == "."
        || c == ".."
        || c.contains(['/', '\\', '\0'])
        || (c.len() >= 2 && c.as_bytes()[1] == b':'))
}

/// The on-disk path of each file of `info` below `dir`.
pub fn file_paths(info: &Info, dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut base = dir.to_path_buf();
    if info.multi_file {
        if !is_safe_component(&info.name) {
            return Err(StorageError::UnsafePath(info.name.clone()));
        }
        base.push(&info.name);
    }
    info.files
        .iter()
        .map(|f| {
            let mut p = base.clone();
            if f.path.is_empty() {
                return Err(StorageError::UnsafePath(String::new()));
            }
            for c in &f.path {
                if !is_safe_component(c) {
                    return Err(StorageError::UnsafePath(c.clone()));
                }
                p.push(c);
            }
            Ok(p)
        })
        .collect()
}

impl Storage {
    /// Opens (and in [`Mode::ReadWrite`], creates) the files of `info` below `dir`. For a single
    /// file torrent the file is `dir/name`; for a multi-file torrent, `dir/name/...`.
    pub fn open(info: &Info, dir: &Path, mode: Mode) -> Result<Self, StorageError> {
        let paths = file_paths(info, dir)?;
        let mut files = Vec::with_capacity(paths.len());
        for (entry, path) in info.files.iter().zip(paths) {
            let io_err = |source| StorageError::Io { path: path.clone(), source };
            let mut fresh = false;
            let handle = match mode {
                Mode::ReadOnly => File::open(&path).map_err(io_err)?,
                Mode::ReadWrite => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io_err)?;
                    }
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                        .map_err(io_err)?
                }
            };
            if mode == Mode::ReadWrite {
                // Size the file now (sparse: no blocks are allocated) so reads of missing data
                // return zeros instead of short reads, and a file longer than the torrent says is
                // trimmed back.
                let len = handle.metadata().map_err(io_err)?.len();
                fresh = len == 0;
                if len != entry.length {
                    handle.set_len(entry.length).map_err(io_err)?;
                }
            }
            files.push(StoredFile {
                path,
                offset: entry.offset,
                length: entry.length,
                handle,
                fresh,
            });
        }
        Ok(Storage {
            files,
            piece_length: info.piece_length,
            total_length: info.total_length,
            hashes: info.pieces.clone(),
        })
    }

    /// Number of pieces.
    pub fn num_pieces(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Size of piece `piece` (the last may be short); 0 if out of range.
    pub fn piece_size(&self, piece: u32) -> u32 {
        let start = piece as u64 * self.piece_length as u64;
        self.total_length.saturating_sub(start).min(self.piece_length as u64) as u32
    }

    /// Calls `f(file, file_offset, range_in_buf)` for each file segment covering `len` bytes at
    /// torrent offset `pos`.
    fn segments(
        &self,
        pos: u64,
        len: usize,
        mut f: impl FnMut(&StoredFile, u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        if pos.checked_add(len as u64).is_none_or(|end| end > self.total_length) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "block outside the torrent"));
        }
        // Files are sorted by offset; find the first file that ends after `pos`.
        let first = self.files.partition_point(|f| f.offset + f.length <= pos);
        let mut done = 0usize;
        for file in &self.files[first..] {
            if done == len {
                break;
            }
            let at = pos + done as u64;
            if file.length == 0 || at < file.offset {
                continue;
            }
            let in_file = at - file.offset;
            let n = ((file.length - in_file) as usize).min(len - done);
            f(file, in_file, done..done + n)?;
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset` within `piece`.
    pub fn write(&self, piece: u32, offset: u32, data: &[u8]) -> io::Result<()> {
        let pos = piece as u64 * self.piece_length as u64 + offset as u64;
        self.segments(pos, data.len(), |file, at, range| {
            file.handle.write_all_at(&data[range], at).map_err(|e| annotate(&file.path, e))
        })
    }

    /// Reads `buf.len()` bytes at `offset` within `piece`.
    pub fn read(&self, piece: u32, offset: u32, buf: &mut [u8]) -> io::Result<()> {
        let pos = piece as u64 * self.piece_length as u64 + offset as u64;
        self.segments(pos, buf.len(), |file, at, range| {
            file.handle.read_exact_at(&mut buf[range], at).map_err(|e| annotate(&file.path, e))
        })
    }

    /// Reads piece `piece` and checks its SHA-1. `buf` is scratch space reused across calls.
    pub fn verify(&self, piece: u32, buf: &mut Vec<u8>) -> io::Result<bool> {
        let Some(expected) = self.hashes.get(piece as usize) else {
            return Ok(false);
        };
        buf.resize(self.piece_size(piece) as usize, 0);
        self.read(piece, 0, buf)?;
        Ok(Sha1::digest(&buf[..]).as_slice() == expected)
    }

    /// Re-hashes every piece whose bytes are on disk and returns those that verify.
    /// `progress(checked, total)` is called after each piece.
    pub fn check_existing(&self, mut progress: impl FnMut(u32, u32)) -> io::Result<Bitfield> {
        let n = self.num_pieces();
        let mut have = Bitfield::new(n);
        let mut buf = Vec::new();
        for piece in 0..n {
            let pos = piece as u64 * self.piece_length as u64;
            let mut all_fresh = true;
            let _ = self.segments(pos, self.piece_size(piece) as usize, |f, _, _| {
                all_fresh &= f.fresh;
                Ok(())
            });
            if all_fresh {
                progress(piece + 1, n);
                continue;
            }
            match self.verify(piece, &mut buf) {
                Ok(true) => {
                    have.set(piece);
                }
                Ok(false) => {}
                // A file shorter than expected (read-only mode) is simply missing data.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e),
            }
            progress(piece + 1, n);
        }
        Ok(have)
    }

    /// Flushes written data to disk.
    pub fn sync(&self) -> io::Result<()> {
        for f in &self.files {
            f.handle.sync_data().map_err(|e| annotate(&f.path, e))?;
        }
        Ok(())
    }
}

fn annotate(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::FileEntry;

    fn info_for(files: &[(&str, &[u8])], piece_length: u32) -> (Info, Vec<u8>) {
        let mut all = Vec::new();
        let mut entries = Vec::new();
        for (name, data) in files {
            entries.push(FileEntry {
                path: name.split('/').map(String::from).collect(),
                length: data.len() as u64,
                offset: all.len() as u64,
            });
            all.extend_from_slice(data);
        }
        let pieces = all.chunks(piece_length as usize).map(|c| Sha1::digest(c).into()).collect();
        let info = Info {
            name: "multi".into(),
            piece_length,
            pieces,
            files: entries,
            multi_file: true,
            private: false,
            total_length: all.len() as u64,
        };
        (info, all)
    }

    #[test]
    fn pieces_spanning_files_write_read_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..100u8).collect();
        let b: Vec<u8> = vec![]; // empty file in the middle
        let c: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let (info, all) = info_for(&[("a.bin", &a), ("sub/b.bin", &b), ("sub/c.bin", &c)], 64);
        let s = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        assert_eq!(s.check_existing(|_, _| {}).unwrap().count(), 0);
        for (i, chunk) in all.chunks(64).enumerate() {
            // Write each piece in two halves to cross block boundaries too.
            let mid = chunk.len() / 2;
            s.write(i as u32, 0, &chunk[..mid]).unwrap();
            s.write(i as u32, mid as u32, &chunk[mid..]).unwrap();
        }
        let mut buf = Vec::new();
        for i in 0..s.num_pieces() {
            assert!(s.verify(i, &mut buf).unwrap(), "piece {i}");
        }
        assert_eq!(std::fs::read(dir.path().join("multi/a.bin")).unwrap(), a);
        assert_eq!(std::fs::read(dir.path().join("multi/sub/c.bin")).unwrap(), c);
        assert!(dir.path().join("multi/sub/b.bin").exists());
        // Reopen: everything verified is found again (resume).
        drop(s);
        let s = Storage::open(&info, dir.path(), Mode::ReadOnly).unwrap();
        assert!(s.check_existing(|_, _| {}).unwrap().is_full());
        // A corrupted byte loses exactly the piece that holds it.
        std::fs::write(dir.path().join("multi/a.bin"), {
            let mut x = a.clone();
            x[70] ^= 1;
            x
        })
        .unwrap();
        let have = s.check_existing(|_, _| {}).unwrap();
        assert_eq!(have.count(), s.num_pieces() - 1);
        assert!(!have.has(1));
    }

    #[test]
    fn out_of_range_and_unsafe_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (info, _) = info_for(&[("x", &[1, 2, 3])], 16);
        let s = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        assert!(s.write(0, 2, &[0, 0]).is_err());
        assert!(s.write(5, 0, &[0]).is_err());
        for bad in ["..", "", ".", "a/b", "C:", "x\0y"] {
            let mut i = info.clone();
            i.files[0].path = vec!["ok".into(), bad.into()];
            assert!(matches!(
                Storage::open(&i, dir.path(), Mode::ReadWrite),
                Err(StorageError::UnsafePath(_))
            ));
        }
        let mut i = info.clone();
        i.name = "..".into();
        assert!(Storage::open(&i, dir.path(), Mode::ReadWrite).is_err());
    }
}
