//! A node's identity: an ed25519 key pair whose public key is the node id.
//!
//! [`Identity::load_or_create`] keeps the 32-byte secret seed in `DIR/node.key`, created once with
//! mode 0600 and written atomically (a temporary file, fsync, rename), and refuses a key file that
//! is the wrong size or readable by group or others. [`NodeId`] prints as 64 lowercase hex digits;
//! people see [`NodeId::short`] next to a nickname. [`verify`] checks a signature with ed25519's
//! strict rules and never panics on a public key that is not a curve point.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "node.key";

/// A node's id: its ed25519 public key (32 bytes, compressed Edwards point).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The first 8 hex digits: what people see beside a nickname.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// Why a string is not a [`NodeId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a node id is 64 hex digits (a 32-byte ed25519 public key)")]
pub struct ParseNodeIdError;

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        if s.len() != 64 {
            return Err(ParseNodeIdError);
        }
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParseNodeIdError)?;
        Ok(NodeId(bytes))
    }
}

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file is not exactly 32 bytes.
    #[error(
        "key file {path} holds {len} bytes, expected exactly 32 (an ed25519 secret seed); restore \
         it from a backup, or delete it to create a new identity (the node id will change)"
    )]
    BadLength {
        /// The key file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// The key file can be read or written by group or others.
    #[error(
        "key file {path} has mode {mode:03o}, which lets other users read the secret key; run \
         `chmod 600 {path}` (and consider the key compromised if others could read it)"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// This node's key pair.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity from a cryptographically secure RNG.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Identity {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Identity::from_seed(seed)
    }

    /// The identity whose secret seed is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity { key: SigningKey::from_bytes(&seed) }
    }

    /// Loads `dir/node.key`, or creates `dir` and a new key there if the file does not exist.
    ///
    /// A new key file is written with mode 0600 under a temporary name, fsynced and renamed into
    /// place, so a crash leaves either no key or a whole one. An existing file must be exactly 32
    /// bytes and must not be accessible by group or others.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { action, path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create directory", dir))?;
        let path = dir.join(KEY_FILE);
        match fs::metadata(&path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(IdentityError::TooOpen { path, mode });
                }
                if meta.len() != 32 {
                    return Err(IdentityError::BadLength { path, len: meta.len() });
                }
                let mut seed = [0u8; 32];
                let mut file = fs::File::open(&path).map_err(io("open", &path))?;
                // Read one byte past 32 so a file that grew since the metadata check is caught.
                let mut buf = Vec::with_capacity(33);
                (&mut file).take(33).read_to_end(&mut buf).map_err(io("read", &path))?;
                if buf.len() != 32 {
                    return Err(IdentityError::BadLength { path, len: buf.len() as u64 });
                }
                seed.copy_from_slice(&buf);
                buf.fill(0);
                Ok(Identity::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity::generate(&mut rand::rng());
                let tmp = dir.join(format!("{KEY_FILE}.tmp"));
                // A leftover from a crash between create and rename holds no key in use.
                match fs::remove_file(&tmp) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("remove stale", &tmp)(e)),
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io("create", &tmp))?;
                file.write_all(identity.key.as_bytes()).map_err(io("write", &tmp))?;
                file.sync_all().map_err(io("fsync", &tmp))?;
                drop(file);
                fs::rename(&tmp, &path).map_err(io("rename into", &path))?;
                // Make the rename itself durable.
                fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
                Ok(identity)
            }
            Err(e) => Err(io("stat", &path)(e)),
        }
    }

    /// This node's id (its public key).
    pub fn id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// Signs `msg` with this node's key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// The underlying ed25519 signing key (for the TLS certificate, or end-to-end encryption).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

/// Whether `sig` is `id`'s signature of `msg`, under ed25519's strict rules (no small-order keys,
/// canonical encodings). A `NodeId` that is not a valid curve point yields `false`.
pub fn verify(id: &NodeId, msg: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&id.0) else {
        return false;
    };
    key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn identity(seed: u64) -> Identity {
        Identity::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    #[test]
    fn create_then_load_gives_the_same_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let created = Identity::load_or_create(&dir).unwrap();
        let loaded = Identity::load_or_create(&dir).unwrap();
        assert_eq!(created.id(), loaded.id());
        let meta = fs::metadata(dir.join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert!(!dir.join("node.key.tmp").exists());
    }

    #[test]
    fn refuses_truncated_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        Identity::load_or_create(tmp.path()).unwrap();
        let path = tmp.path().join(KEY_FILE);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..31]).unwrap();
        match Identity::load_or_create(tmp.path()) {
            Err(IdentityError::BadLength { len, .. }) => assert_eq!(len, 31),
            other => panic!("expected BadLength, got {other:?}"),
        }
    }

    #[test]
    fn refuses_group_readable_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        Identity::load_or_create(tmp.path()).unwrap();
        let path = tmp.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(tmp.path()).unwrap_err();
        assert!(matches!(err, IdentityError::TooOpen { mode: 0o644, .. }), "{err:?}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn sign_and_verify() {
        let a = identity(1);
        let sig = a.sign(b"hello");
        assert!(verify(&a.id(), b"hello", &sig));
        assert!(!verify(&a.id(), b"hellp", &sig));
        assert!(!verify(&identity(2).id(), b"hello", &sig));
    }

    #[test]
    fn forged_signature_rejected() {
        let a = identity(1);
        let mut sig = a.sign(b"hello");
        sig[10] ^= 1;
        assert!(!verify(&a.id(), b"hello", &sig));
        assert!(!verify(&a.id(), b"hello", &[0u8; 64]));
    }

    #[test]
    fn invalid_point_is_false_not_panic() {
        // y = 2 is not the y-coordinate of any Edwards point, so decompression fails.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert!(VerifyingKey::from_bytes(&bad).is_err());
        assert!(!verify(&NodeId(bad), b"x", &[0u8; 64]));
        // All-ones bytes: also not a point; still false.
        assert!(!verify(&NodeId([0xff; 32]), b"x", &identity(1).sign(b"x")));
    }

    #[test]
    fn node_id_text_forms() {
        let id = NodeId([0xab; 32]);
        assert_eq!(id.to_string(), "ab".repeat(32));
        assert_eq!(id.short(), "abababab");
        assert_eq!("ab".repeat(32).parse::<NodeId>(), Ok(id));
        assert_eq!("AB".repeat(32).parse::<NodeId>(), Ok(id));
        assert_eq!("ab".repeat(31).parse::<NodeId>(), Err(ParseNodeIdError));
        assert_eq!("zz".repeat(32).parse::<NodeId>(), Err(ParseNodeIdError));
    }
}
