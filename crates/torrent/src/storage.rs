//! Piece storage: maps the torrent's byte stream onto its files (pieces may span files), writes
//! and reads blocks with positional I/O, and verifies each piece's SHA-1.
//!
//! Safety, for a download ([`Mode::ReadWrite`]):
//! - every path is rebuilt here from the metainfo's components and each component is checked
//!   again (the metainfo parser already refused unsafe names and paths named twice);
//! - every directory and file is opened relative to the target directory's handle, one component
//!   at a time, with `O_NOFOLLOW`: a symbolic link planted inside the target directory is refused,
//!   never followed, so nothing is written outside it;
//! - a file that already exists is opened only if this download created it, as recorded in the
//!   state file `DIR/.NAME.swarmcast` (written before the file is created, like aria2's `.aria2`
//!   control file); any other existing file is refused with [`StorageError::Exists`] unless the
//!   caller asked to adopt it ([`Existing::Check`]: re-hash it and keep the pieces that verify).
//!
//! Nothing is preallocated, and a missing file is created at its first write (a viewer of a
//! streamed movie creates only the files it plays; creating a movie's 180 files at start cost
//! 80 ms of kernel time each time a viewer joined). A piece counts only once its hash has been
//! verified, and on start
//! [`Storage::check_existing`] re-hashes what is on disk, so after a crash at most the unverified
//! pieces are lost.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rustix::fs::{Mode as Perm, OFlags};

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
    #[error(
        "{} already exists and this download did not create it; refusing to overwrite it. \
         Download elsewhere (-o DIR), or pass --check-existing to re-hash it and keep only the \
         pieces that verify",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error(
        "{} is a symbolic link or not a regular file/folder; refusing to follow it \
         (download elsewhere with -o DIR)",
        path.display()
    )]
    NotPlain { path: PathBuf },
    #[error(
        "{} does not belong to this torrent (another download with the same name?); \
         download elsewhere (-o DIR) or remove it",
        path.display()
    )]
    ForeignState { path: PathBuf },
}

struct StoredFile {
    path: PathBuf,
    offset: u64,
    length: u64,
    /// Empty for a pad file (BEP 47: never on disk, reads as zeros, writes are dropped) and for
    /// a file not created yet (reads as zeros; created at its first write).
    handle: OnceLock<File>,
    pad: bool,
    /// Its path below the target directory, for a file not created yet.
    components: Vec<String>,
    /// Created empty by this open: it holds no data, so re-checking it is pointless.
    fresh: bool,
}

/// The files of one torrent on disk.
pub struct Storage {
    files: Vec<StoredFile>,
    piece_length: u32,
    total_length: u64,
    hashes: Vec<[u8; 20]>,
    /// A download's record of its files, and where missing files are created; locked while
    /// one is.
    state: Option<Mutex<DownloadState>>,
}

/// How storage is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Create missing files and directories; read and write.
    ReadWrite,
    /// Every file must exist; never write (seeding someone's data).
    ReadOnly,
}

/// What a download does with a file that exists but that it did not create.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to start ([`StorageError::Exists`]).
    #[default]
    Refuse,
    /// Take it over: re-hash it, keep the pieces that verify, overwrite the rest.
    Check,
}

/// Most bytes of a state file we read (100,000 files of long names fit easily).
const MAX_STATE_FILE: u64 = 64 << 20;
const STATE_MAGIC: &str = "swarmcast-download-state 1";

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
    /// Opens (and in [`Mode::ReadWrite`], creates) the files of `info` below `dir`, refusing
    /// existing files this download did not create. For a single file torrent the file is
    /// `dir/name`; for a multi-file torrent, `dir/name/...`.
    pub fn open(info: &Info, dir: &Path, mode: Mode) -> Result<Self, StorageError> {
        Self::open_with(info, dir, mode, Existing::Refuse)
    }

    /// [`Storage::open`], choosing what to do with existing files this download did not create.
    pub fn open_with(
        info: &Info,
        dir: &Path,
        mode: Mode,
        existing: Existing,
    ) -> Result<Self, StorageError> {
        let paths = file_paths(info, dir)?;
        let mut state = match mode {
            Mode::ReadOnly => None,
            Mode::ReadWrite => Some(DownloadState::load(info, dir)?),
        };
        // Every file this start may open or create (an adopted one, an empty one) is recorded
        // first, in one write of the state file; the ones left missing are taken back below.
        let recorded_now = match state.as_mut() {
            Some(state) => {
                let real = info.files.iter().filter(|e| !e.pad);
                let keys = real.map(|e| DownloadState::key(&relative_components(info, &e.path)));
                state.record(keys.collect()).map_err(|source| StorageError::Io {
                    path: state.dir.join(&state.file_name),
                    source,
                })?
            }
            None => HashSet::new(),
        };
        let mut done = HashSet::new();
        let opened =
            Self::open_files(info, paths, state.as_mut(), &recorded_now, existing, &mut done);
        if let Some(state) = state.as_mut() {
            // The records of files that are not there are taken back (a start that failed, a
            // file not written yet, a crash between a record and its file), so no later run
            // adopts a file someone else puts there; a file is recorded again just before it
            // is created (`Storage::writable`).
            let missing: HashSet<String> = match &opened {
                Err(_) => recorded_now.difference(&done).cloned().collect(),
                Ok(files) => files
                    .iter()
                    .filter(|f| !f.pad && f.handle.get().is_none())
                    .map(|f| {
                        let c: Vec<&str> = f.components.iter().map(String::as_str).collect();
                        DownloadState::key(&c)
                    })
                    .collect(),
            };
            state.forget(&missing);
        }
        Ok(Storage {
            files: opened?,
            piece_length: info.piece_length,
            total_length: info.total_length,
            hashes: info.pieces.clone(),
            state: state.map(Mutex::new),
        })
    }

    /// Opens each file of `info` at `paths` that exists (a missing one is created at its first
    /// write; an empty one now); `recorded_now` are the files recorded as ours by this start,
    /// not before it. Adds the key of each file opened to `done`.
    fn open_files(
        info: &Info,
        paths: Vec<PathBuf>,
        mut state: Option<&mut DownloadState>,
        recorded_now: &HashSet<String>,
        existing: Existing,
        done: &mut HashSet<String>,
    ) -> Result<Vec<StoredFile>, StorageError> {
        let mut files = Vec::with_capacity(paths.len());
        for (entry, path) in info.files.iter().zip(paths) {
            let io_err = |source| StorageError::Io { path: path.clone(), source };
            // Holding no data (a pad, a file not created yet): nothing to re-check.
            let mut fresh = true;
            let mut components = Vec::new();
            let handle = match state.as_mut() {
                _ if entry.pad => None,
                None => {
                    fresh = false;
                    Some(File::open(&path).map_err(io_err)?)
                }
                Some(state) => {
                    let rel = relative_components(info, &entry.path);
                    let key = DownloadState::key(&rel);
                    let ours = !recorded_now.contains(&key);
                    // An empty file is never written: it is created now.
                    let create = entry.length == 0;
                    let at = (&state.dir_fd, state.dir.as_path());
                    match open_below(at, &rel, &path, existing, ours, create)? {
                        Some((handle, created)) => {
                            done.insert(key);
                            // Size the file now (sparse: no blocks are allocated) so reads of
                            // missing data return zeros instead of short reads, and a file of
                            // ours longer than the torrent says is trimmed back.
                            let len = handle.metadata().map_err(io_err)?.len();
                            fresh = created || len == 0;
                            if len != entry.length {
                                handle.set_len(entry.length).map_err(io_err)?;
                            }
                            Some(handle)
                        }
                        None => {
                            components = rel.iter().map(|c| c.to_string()).collect();
                            None
                        }
                    }
                }
            };
            files.push(StoredFile {
                path,
                offset: entry.offset,
                length: entry.length,
                handle: handle.map(OnceLock::from).unwrap_or_default(),
                pad: entry.pad,
                components,
                fresh,
            });
        }
        Ok(files)
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
        self.segments(pos, data.len(), |file, at, range| match self.writable(file)? {
            Some(h) => h.write_all_at(&data[range], at).map_err(|e| annotate(&file.path, e)),
            None => Ok(()),
        })
    }

    /// `file`'s handle for a write, creating the file if it is missing; `None` for a pad file.
    fn writable<'a>(&self, file: &'a StoredFile) -> io::Result<Option<&'a File>> {
        if let Some(h) = file.handle.get() {
            return Ok(Some(h));
        }
        let Some(state) = self.state.as_ref().filter(|_| !file.pad) else {
            return Ok(None);
        };
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = file.handle.get() {
            return Ok(Some(h));
        }
        let components: Vec<&str> = file.components.iter().map(String::as_str).collect();
        let key = DownloadState::key(&components);
        // Recorded before it is created: a crash in between leaves a record of a missing file,
        // which the next start takes back.
        state.record(vec![key.clone()]).map_err(|e| annotate(&file.path, e))?;
        // Missing at the start: one there now is someone else's, refused even when the start
        // adopted existing files (it was not there to be checked).
        let at = (&state.dir_fd, state.dir.as_path());
        let opened = open_below(at, &components, &file.path, Existing::Refuse, false, true);
        let (handle, _) = match opened {
            Ok(Some(h)) => h,
            failed => {
                state.forget(&HashSet::from([key]));
                let why = failed.err().map_or_else(|| "not created".to_string(), |e| e.to_string());
                return Err(io::Error::other(why));
            }
        };
        handle.set_len(file.length).map_err(|e| annotate(&file.path, e))?;
        Ok(Some(file.handle.get_or_init(|| handle)))
    }

    /// Reads `buf.len()` bytes at `offset` within `piece`.
    pub fn read(&self, piece: u32, offset: u32, buf: &mut [u8]) -> io::Result<()> {
        let pos = piece as u64 * self.piece_length as u64 + offset as u64;
        self.segments(pos, buf.len(), |file, at, range| match file.handle.get() {
            Some(h) => h.read_exact_at(&mut buf[range], at).map_err(|e| annotate(&file.path, e)),
            None => {
                buf[range].fill(0);
                Ok(())
            }
        })
    }

    /// Starts writing piece `piece`'s bytes to stable storage now, without waiting, so that
    /// the [`Storage::sync`] at the end of a download has little left to write: on Linux,
    /// `POSIX_FADV_DONTNEED` on a dirty range starts its writeback and drops only pages already
    /// clean. Advice only: an error changes nothing and is ignored.
    pub fn write_behind(&self, piece: u32) {
        let pos = piece as u64 * self.piece_length as u64;
        let _ = self.segments(pos, self.piece_size(piece) as usize, |file, at, range| {
            let len = std::num::NonZeroU64::new(range.len() as u64);
            if let Some(h) = file.handle.get() {
                let _ = rustix::fs::fadvise(h, at, len, rustix::fs::Advice::DontNeed);
            }
            Ok(())
        });
    }

    /// Reads piece `piece` and checks its SHA-1. `buf` is scratch space reused across calls and
    /// holds the whole piece afterwards.
    pub fn verify(&self, piece: u32, buf: &mut Vec<u8>) -> io::Result<bool> {
        self.verify_rest(piece, Sha1::new(), 0, buf)
    }

    /// Checks piece `piece` given `hasher`, which has been fed the piece's first `from` bytes:
    /// reads the bytes from `from` to the end of the piece into `buf` (scratch space reused
    /// across calls), feeds them and compares the digest with the torrent's.
    pub fn verify_rest(
        &self,
        piece: u32,
        mut hasher: Sha1,
        from: u32,
        buf: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let Some(expected) = self.hashes.get(piece as usize) else {
            return Ok(false);
        };
        let size = self.piece_size(piece);
        if from > size {
            return Ok(false);
        }
        buf.resize((size - from) as usize, 0);
        self.read(piece, from, buf)?;
        hasher.update(&buf[..]);
        Ok(hasher.finalize().as_slice() == expected)
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
            // A piece over a file not created yet is not had, even if its bytes there are
            // zeros (they read as such): it is fetched and written, which creates the file.
            let mut any_missing = false;
            let _ = self.segments(pos, self.piece_size(piece) as usize, |f, _, _| {
                all_fresh &= f.fresh;
                any_missing |= !f.pad && f.handle.get().is_none();
                Ok(())
            });
            if all_fresh || any_missing {
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
            if let Some(h) = f.handle.get() {
                h.sync_data().map_err(|e| annotate(&f.path, e))?;
            }
        }
        Ok(())
    }
}

fn annotate(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Reads a state file's bytes: the recorded files if it is a state file of the torrent
/// `torrent_id`, `None` for anything else (another torrent's, not UTF-8, not a state file).
pub fn parse_state(bytes: &[u8], torrent_id: &str) -> Option<Vec<String>> {
    let text = std::str::from_utf8(bytes).ok()?;
    // Split on '\n' only (`lines()` would also eat a '\r' that belongs to a name).
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = text.split('\n');
    if lines.next() != Some(STATE_MAGIC) || lines.next() != Some(torrent_id) {
        return None;
    }
    Some(lines.map(str::to_string).collect())
}

/// The text of a state file recording `files` for the torrent `torrent_id`.
pub fn state_text(torrent_id: &str, files: &[String]) -> String {
    let mut text = format!("{STATE_MAGIC}\n{torrent_id}\n");
    for k in files {
        text.push_str(k);
        text.push('\n');
    }
    text
}

/// Deletes the files of the torrent `info` below `dir` that its downloads created (those its
/// state file records; a file found there and left alone is never touched), then the folders of
/// the torrent left empty and the state file. Returns the files deleted. Folders are walked
/// without following links, so a link planted in the torrent's folder cannot point the deletes
/// elsewhere: such a file, or one that cannot be deleted, is left (with a warning) and the rest
/// go on. Nothing is deleted for a state file of another torrent.
pub fn remove_created(info: &Info, dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    if !dir.join(format!(".{}.swarmcast", info.name)).exists() {
        return Ok(vec![]);
    }
    let state = match DownloadState::load(info, dir) {
        Ok(s) => s,
        Err(StorageError::ForeignState { .. }) => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let ours: HashSet<&str> = state.ours.iter().map(String::as_str).collect();
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustix::io::Errno| StorageError::Io { path, source: e.into() }
    };
    let mut removed = Vec::new();
    let mut folders: Vec<Vec<&str>> = Vec::new();
    for (entry, path) in info.files.iter().zip(file_paths(info, dir)?) {
        let rel = relative_components(info, &entry.path);
        if entry.pad || !ours.contains(DownloadState::key(&rel).as_str()) {
            continue;
        }
        let Some((last, parents)) = rel.split_last() else { continue };
        let parent = match open_dirs(&state.dir_fd, parents) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("{}: not deleted: {}", path.display(), io_err(&path)(e));
                continue;
            }
        };
        match rustix::fs::unlinkat(&parent, *last, rustix::fs::AtFlags::empty()) {
            Ok(()) => removed.push(path),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => tracing::warn!("{}: not deleted: {}", path.display(), io_err(&path)(e)),
        }
        for n in 1..=parents.len() {
            folders.push(parents[..n].to_vec());
        }
    }
    // Deepest first; a folder with anything else in it stays.
    folders.sort_by_key(|f| std::cmp::Reverse(f.len()));
    folders.dedup();
    for f in folders {
        let Some((last, parents)) = f.split_last() else { continue };
        if let Ok(Some(parent)) = open_dirs(&state.dir_fd, parents) {
            let _ = rustix::fs::unlinkat(&parent, *last, rustix::fs::AtFlags::REMOVEDIR);
        }
    }
    let _ =
        rustix::fs::unlinkat(&state.dir_fd, state.file_name.as_str(), rustix::fs::AtFlags::empty());
    Ok(removed)
}

/// The folder `components` below `at`, each opened without following a link; `None` if one
/// is missing.
fn open_dirs(at: &OwnedFd, components: &[&str]) -> Result<Option<OwnedFd>, rustix::io::Errno> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::fs::openat(at, ".", flags, Perm::empty())?;
    for c in components {
        fd = match rustix::fs::openat(&fd, *c, flags, Perm::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
    }
    Ok(Some(fd))
}

/// A file's components below the target directory (the torrent's folder first when it has one).
fn relative_components<'a>(info: &'a Info, path: &'a [String]) -> Vec<&'a str> {
    let folder = info.multi_file.then_some(info.name.as_str());
    folder.into_iter().chain(path.iter().map(String::as_str)).collect()
}

/// The state file beside a download: which files this download created, so that a restart
/// (resume after `kill -9`) reopens them and nothing else. Format: a magic line, a line with the
/// SHA-1 of the piece hashes (which torrent this is), then one line per file, its components
/// percent-encoded and joined by `/`.
struct DownloadState {
    dir_fd: OwnedFd,
    dir: PathBuf,
    file_name: String,
    torrent_id: String,
    /// Files recorded as ours, in order of recording.
    ours: Vec<String>,
    /// The state file exists on disk (so rewriting it replaces our own file).
    on_disk: bool,
}

impl DownloadState {
    fn load(info: &Info, dir: &Path) -> Result<Self, StorageError> {
        let io_at = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustix::io::Errno| StorageError::Io { path, source: e.into() }
        };
        // The target folder itself is the user's choice: made if missing, followed if a link.
        std::fs::create_dir_all(dir)
            .map_err(|source| StorageError::Io { path: dir.to_path_buf(), source })?;
        let dir_fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Perm::empty(),
        )
        .map_err(io_at(dir))?;
        let file_name = format!(".{}.swarmcast", info.name);
        let state_path = dir.join(&file_name);
        let mut hasher = Sha1::new();
        for h in &info.pieces {
            hasher.update(h);
        }
        let torrent_id = hex::encode(hasher.finalize());
        let mut state = DownloadState {
            dir_fd,
            dir: dir.to_path_buf(),
            file_name,
            torrent_id,
            ours: vec![],
            on_disk: false,
        };
        let fd = match rustix::fs::openat(
            &state.dir_fd,
            state.file_name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Perm::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(state),
            Err(rustix::io::Errno::LOOP) => {
                return Err(StorageError::NotPlain { path: state_path })
            }
            Err(e) => return Err(io_at(&state_path)(e)),
        };
        let mut bytes = Vec::new();
        File::from(fd)
            .take(MAX_STATE_FILE)
            .read_to_end(&mut bytes)
            .map_err(|source| StorageError::Io { path: state_path.clone(), source })?;
        let Some(ours) = parse_state(&bytes, &state.torrent_id) else {
            return Err(StorageError::ForeignState { path: state_path });
        };
        state.ours = ours;
        state.on_disk = true;
        Ok(state)
    }

    fn key(components: &[&str]) -> String {
        let parts: Vec<String> = components
            .iter()
            .map(|c| utf8_percent_encode(c, NON_ALPHANUMERIC).to_string())
            .collect();
        parts.join("/")
    }

    /// Records each of `keys` not recorded yet as ours, in one write of the state file, before
    /// any is created: a crash in between leaves records of files that do not exist, which the
    /// next start simply creates. Returns the keys recorded now.
    fn record(&mut self, keys: Vec<String>) -> io::Result<HashSet<String>> {
        let known: HashSet<String> = self.ours.iter().cloned().collect();
        let mut now = HashSet::new();
        for key in keys {
            if !known.contains(&key) && now.insert(key.clone()) {
                self.ours.push(key);
            }
        }
        if !now.is_empty() {
            self.save()?;
        }
        Ok(now)
    }

    /// Takes back the records of `keys`.
    fn forget(&mut self, keys: &HashSet<String>) {
        let before = self.ours.len();
        self.ours.retain(|k| !keys.contains(k));
        if self.ours.len() != before {
            let _ = self.save();
        }
    }

    /// Writes the state file: created exclusively the first time, later replaced through a
    /// temporary file of ours (so a crash never leaves a half-written record).
    fn save(&mut self) -> io::Result<()> {
        let text = state_text(&self.torrent_id, &self.ours);
        let create =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let perm = Perm::from_raw_mode(0o644);
        if !self.on_disk {
            let mut f = File::from(rustix::fs::openat(
                &self.dir_fd,
                self.file_name.as_str(),
                create,
                perm,
            )?);
            f.write_all(text.as_bytes())?;
            f.sync_data()?;
            self.on_disk = true;
            return Ok(());
        }
        let tmp = format!("{}.{:016x}.tmp", self.file_name, rand::random::<u64>());
        let mut f = File::from(rustix::fs::openat(&self.dir_fd, tmp.as_str(), create, perm)?);
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        rustix::fs::renameat(&self.dir_fd, tmp.as_str(), &self.dir_fd, self.file_name.as_str())?;
        Ok(())
    }
}

/// Opens one file of the torrent below the target directory `at` (its handle and its path)
/// without following symbolic links, creating it (and its folders) when missing if `create`.
/// Returns the file and whether it was created now; `None` when it is missing and not created.
/// An existing file is opened only if `is_ours` or the caller adopts it.
fn open_below(
    at: (&OwnedFd, &Path),
    components: &[&str],
    shown: &Path,
    existing: Existing,
    is_ours: bool,
    create: bool,
) -> Result<Option<(File, bool)>, StorageError> {
    let (dir_fd, dir) = at;
    let io_err = |source: rustix::io::Errno| StorageError::Io {
        path: shown.to_path_buf(),
        source: source.into(),
    };
    let Some((name, folders)) = components.split_last() else {
        return Err(StorageError::UnsafePath(String::new()));
    };
    let mut parent: Option<OwnedFd> = None;
    let mut walked = dir.to_path_buf();
    for folder in folders {
        walked.push(folder);
        let at = parent.as_ref().unwrap_or(dir_fd);
        if create {
            match rustix::fs::mkdirat(at, *folder, Perm::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        match rustix::fs::openat(at, *folder, flags, Perm::empty()) {
            Ok(fd) => parent = Some(fd),
            Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(StorageError::NotPlain { path: walked })
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let at = parent.as_ref().unwrap_or(dir_fd);
    let rw = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let created = if create {
        match rustix::fs::openat(
            at,
            *name,
            rw | OFlags::CREATE | OFlags::EXCL,
            Perm::from_raw_mode(0o644),
        ) {
            Ok(fd) => return Ok(Some((File::from(fd), true))),
            Err(rustix::io::Errno::EXIST) => false,
            Err(rustix::io::Errno::LOOP) => {
                return Err(StorageError::NotPlain { path: shown.to_path_buf() })
            }
            Err(e) => return Err(io_err(e)),
        }
    } else {
        match rustix::fs::statat(at, *name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => false,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        }
    };
    // Someone else's file is refused before it is opened for writing.
    if !is_ours && existing == Existing::Refuse {
        return Err(StorageError::Exists { path: shown.to_path_buf() });
    }
    let fd = match rustix::fs::openat(at, *name, rw, Perm::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(StorageError::NotPlain { path: shown.to_path_buf() })
        }
        Err(e) => return Err(io_err(e)),
    };
    let file = File::from(fd);
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        return Err(StorageError::NotPlain { path: shown.to_path_buf() });
    }
    Ok(Some((file, created)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metainfo::FileEntry;

    /// A multi-file torrent of `files` (path, bytes) and its bytes concatenated.
    pub(crate) fn info_for(files: &[(&str, &[u8])], piece_length: u32) -> (Info, Vec<u8>) {
        let mut all = Vec::new();
        let mut entries = Vec::new();
        for (name, data) in files {
            entries.push(FileEntry {
                path: name.split('/').map(String::from).collect(),
                length: data.len() as u64,
                offset: all.len() as u64,
                pad: false,
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
    fn pad_files_are_never_on_disk_read_as_zeros_and_drop_what_is_written_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..100u8).collect();
        let pad = vec![0u8; 28];
        let b: Vec<u8> = (0..=255u8).cycle().take(60).collect();
        let (mut info, all) = info_for(&[("a", &a), (".pad/28", &pad), ("b", &b)], 64);
        info.files[1].pad = true;
        let storage = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        // Piece 1 (bytes 64..128): the end of `a`, the pad, and a peer's junk for the pad.
        let mut sent = all[64..128].to_vec();
        sent[40..64].fill(0xEE);
        storage.write(1, 0, &sent).unwrap();
        let mut back = vec![1u8; 64];
        storage.read(1, 0, &mut back).unwrap();
        assert_eq!(back, all[64..128], "the pad reads as zeros, not as what was written");
        for piece in [0, 2] {
            let size = storage.piece_size(piece) as usize;
            let at = piece as usize * 64;
            storage.write(piece, 0, &all[at..at + size]).unwrap();
        }
        storage.sync().unwrap();
        drop(storage);
        let storage = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        let have = storage.check_existing(|_, _| {}).unwrap();
        assert!(have.is_full(), "every piece verifies with zeros in the pad");
        assert!(!dir.path().join("multi/.pad").exists(), "no pad file or folder on disk");
        assert_eq!(std::fs::read(dir.path().join("multi/b")).unwrap(), b);
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
    fn an_existing_file_we_did_not_create_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (mut info, all) = info_for(&[("x", &[1, 2, 3, 4])], 16);
        info.multi_file = false;
        info.name = ".bashrc".into();
        info.files[0].path = vec![".bashrc".into()];
        let precious = dir.path().join(".bashrc");
        std::fs::write(&precious, b"alias ls='ls -F'\n# mine, 37 bytes long\n").unwrap();
        let before = std::fs::read(&precious).unwrap();
        match Storage::open(&info, dir.path(), Mode::ReadWrite) {
            Err(StorageError::Exists { path }) => assert_eq!(path, precious),
            Err(e) => panic!("expected Exists, got {e}"),
            Ok(_) => panic!("an existing file was opened for writing"),
        }
        assert_eq!(std::fs::read(&precious).unwrap(), before, "the file was changed");
        // Refusing twice is still refusing: the first attempt did not claim the file.
        assert!(matches!(
            Storage::open(&info, dir.path(), Mode::ReadWrite),
            Err(StorageError::Exists { .. })
        ));
        // Adopting it is the user's explicit choice: the pieces that do not verify are redone.
        let s = Storage::open_with(&info, dir.path(), Mode::ReadWrite, Existing::Check).unwrap();
        assert_eq!(s.check_existing(|_, _| {}).unwrap().count(), 0);
        s.write(0, 0, &all).unwrap();
        drop(s);
        assert_eq!(std::fs::read(&precious).unwrap(), all);
        // From now on it is ours: a plain restart (resume) opens it and finds the piece.
        let s = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        assert!(s.check_existing(|_, _| {}).unwrap().is_full());
    }

    #[test]
    fn removing_with_data_deletes_only_what_the_download_created() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..100u8).collect();
        let c: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let (info, all) = info_for(&[("a.bin", &a), ("sub/c.bin", &c), ("sub/d.bin", &a)], 64);
        // Someone else's file in the torrent's folder, and one in a folder of the torrent.
        std::fs::create_dir_all(dir.path().join("multi/sub")).unwrap();
        std::fs::write(dir.path().join("multi/notes.txt"), b"mine").unwrap();
        std::fs::write(dir.path().join("multi/sub/d.bin"), b"also mine").unwrap();
        let s = Storage::open_with(&info, dir.path(), Mode::ReadWrite, Existing::Refuse);
        assert!(s.is_err(), "d.bin is not ours");
        std::fs::rename(dir.path().join("multi/sub/d.bin"), dir.path().join("multi/d.bak"))
            .unwrap();
        let s = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        // Only the first two files are written; d.bin is never created.
        s.write(0, 0, &all[..64]).unwrap();
        s.write(1, 0, &all[64..128]).unwrap();
        drop(s);
        // Someone puts d.bin back after the download started: not ours either.
        std::fs::rename(dir.path().join("multi/d.bak"), dir.path().join("multi/sub/d.bin"))
            .unwrap();
        let mut removed = remove_created(&info, dir.path()).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            vec![dir.path().join("multi/a.bin"), dir.path().join("multi/sub/c.bin")]
        );
        assert_eq!(std::fs::read(dir.path().join("multi/notes.txt")).unwrap(), b"mine");
        assert_eq!(std::fs::read(dir.path().join("multi/sub/d.bin")).unwrap(), b"also mine");
        assert!(!dir.path().join(".multi.swarmcast").exists(), "the state file is gone");
        // Without a state file nothing is ours: nothing is deleted.
        assert!(remove_created(&info, dir.path()).unwrap().is_empty());
        assert!(dir.path().join("multi/notes.txt").exists());
        // A folder of the torrent left empty goes; one with someone's file stays.
        let (info2, all2) = info_for(&[("x/y.bin", &a)], 64);
        let other = tempfile::tempdir().unwrap();
        let s = Storage::open(&info2, other.path(), Mode::ReadWrite).unwrap();
        s.write(0, 0, &all2[..64]).unwrap();
        drop(s);
        assert_eq!(remove_created(&info2, other.path()).unwrap().len(), 1);
        assert!(!other.path().join("multi").exists(), "empty folders removed");
    }

    #[test]
    fn a_start_that_fails_claims_only_the_files_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let (info, _) = info_for(&[("a", &[1; 20]), ("b", &[2; 20]), ("c", &[3; 20])], 16);
        let at = |name: &str| dir.path().join(&info.name).join(name);
        std::fs::create_dir_all(at("b").parent().unwrap()).unwrap();
        std::fs::write(at("b"), b"someone else's").unwrap();
        // `b` is not ours: the start fails there (missing files are created only when written).
        assert!(matches!(
            Storage::open(&info, dir.path(), Mode::ReadWrite),
            Err(StorageError::Exists { .. })
        ));
        assert!(!at("a").exists() && !at("c").exists());
        // Someone puts `c` there; `b` goes away. `c` was never ours: still refused.
        std::fs::write(at("c"), b"also someone else's").unwrap();
        std::fs::remove_file(at("b")).unwrap();
        // A plain start refuses `name`, someone else's file, and leaves it as it was.
        let refused = |name: &str, content: &[u8]| {
            match Storage::open(&info, dir.path(), Mode::ReadWrite) {
                Err(StorageError::Exists { path }) => assert_eq!(path, at(name)),
                Err(e) => panic!("expected Exists for {name}, got {e}"),
                Ok(_) => panic!("a file we did not create was opened for writing"),
            }
            assert_eq!(std::fs::read(at(name)).unwrap(), content);
        };
        refused("c", b"also someone else's");
        std::fs::remove_file(at("c")).unwrap();
        let s = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        // Files appear as they are written, and only then; reads before that are zeros.
        assert!(!at("a").exists());
        let mut buf = [9u8; 4];
        s.read(0, 0, &mut buf).unwrap();
        assert_eq!(buf, [0; 4]);
        s.write(0, 0, &[1; 16]).unwrap();
        assert!(at("a").exists() && !at("b").exists());
        assert_eq!(std::fs::read(at("a")).unwrap(), [&[1u8; 16][..], &[0; 4]].concat());
        // Someone puts `b` there after the start: its first write is refused, the file kept.
        std::fs::write(at("b"), b"a late someone").unwrap();
        let err = s.write(1, 4, &[2; 12]).unwrap_err();
        assert!(err.to_string().contains("did not create"), "{err}");
        assert_eq!(std::fs::read(at("b")).unwrap(), b"a late someone");
        // A start that succeeded did not claim the files it had not written: on the next,
        // `b` (someone else's) is refused, not opened.
        drop(s);
        refused("b", b"a late someone");
        // Nor would an adopting start take over one that appears after it.
        std::fs::remove_file(at("b")).unwrap();
        let s = Storage::open_with(&info, dir.path(), Mode::ReadWrite, Existing::Check).unwrap();
        std::fs::write(at("c"), b"later still").unwrap();
        assert!(s.write(2, 0, &[3; 16]).is_err());
        assert_eq!(std::fs::read(at("c")).unwrap(), b"later still");
        drop(s);
        std::fs::remove_file(at("c")).unwrap();
        // What this download created is its own on the next start.
        let s = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        let mut buf = [0u8; 16];
        s.read(0, 0, &mut buf).unwrap();
        assert_eq!(buf, [1; 16]);
    }

    #[test]
    fn state_files_read_back_what_was_written() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        // A name ending in '\r' (found by the download_state fuzz target) survives too.
        for files in [vec![], vec!["a".to_string(), "".into(), "x\r".into(), "d/%2Fe".into()]] {
            assert_eq!(parse_state(state_text(id, &files).as_bytes(), id), Some(files));
        }
        assert_eq!(parse_state(b"swarmcast-download-state 1\nother\na\n", id), None);
        assert_eq!(parse_state(b"\xff\xfe", id), None);
    }

    #[test]
    fn a_missing_target_folder_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("new/deeper");
        let (info, all) = info_for(&[("a", &[7; 40])], 16);
        let s = Storage::open(&info, &target, Mode::ReadWrite).unwrap();
        s.write(0, 0, &all[..16]).unwrap();
        assert!(target.join("multi/a").is_file());
    }

    #[test]
    fn a_download_reopens_its_own_files_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let (info, all) = info_for(&[("a", &[7; 40]), ("sub/b", &[9; 40])], 16);
        let s = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        s.write(0, 0, &all[..16]).unwrap();
        drop(s); // like kill -9: no clean shutdown
        let s = Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap();
        let have = s.check_existing(|_, _| {}).unwrap();
        assert!(have.has(0) && have.count() == 1);
        assert!(dir.path().join(".multi.swarmcast").exists());
        // Another torrent of the same name does not get to use this one's files.
        let (other, _) = info_for(&[("a", &[1; 40]), ("sub/b", &[2; 40])], 16);
        assert!(matches!(
            Storage::open(&other, dir.path(), Mode::ReadWrite),
            Err(StorageError::ForeignState { .. })
        ));
    }

    #[test]
    fn planted_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        // A link where a file goes.
        let (info, _) = info_for(&[("a", &[7; 40])], 16);
        std::fs::create_dir(dir.path().join("multi")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("multi/a")).unwrap();
        assert!(matches!(
            Storage::open_with(&info, dir.path(), Mode::ReadWrite, Existing::Check),
            Err(StorageError::NotPlain { .. })
        ));
        // A link where a folder goes.
        let (info, _) = info_for(&[("sub/victim", &[7; 40])], 16);
        std::fs::remove_file(dir.path().join("multi/a")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("multi/sub")).unwrap();
        match Storage::open_with(&info, dir.path(), Mode::ReadWrite, Existing::Check) {
            Err(StorageError::NotPlain { path }) => assert_eq!(path, dir.path().join("multi/sub")),
            Err(e) => panic!("expected NotPlain, got {e}"),
            Ok(_) => panic!("followed a planted symlink"),
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
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
