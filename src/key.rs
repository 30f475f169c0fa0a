//! Group keys: the shared secret of a group, in csync2's key file format.
//!
//! A key file holds 64 characters from `[A-Za-z0-9._]` (384 bits of
//! randomness), optionally followed by a newline: exactly what `csync2 -k`
//! writes, so existing key files keep working.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Characters a generated key is made of: 64 of them, so each random byte's
/// low six bits pick one uniformly.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._";

/// Length of a generated key.
pub const KEY_LEN: usize = 64;

/// An error writing or reading a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file exists already; keys are never overwritten.
    #[error("{}: already exists; remove it first if you really mean to replace the group key", .0.display())]
    Exists(PathBuf),
    /// A filesystem error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The system random source failed.
    #[error("cannot get random bytes: {0}")]
    Random(String),
    /// The file is not a regular file, too large, or others may read or
    /// change it.
    #[error(transparent)]
    Unsafe(#[from] crate::trusted::TrustError),
    /// The file does not hold a usable key.
    #[error("{}: not a group key: {why}", path.display())]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A new random key.
pub fn generate() -> Result<String, KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| ALPHABET[usize::from(b & 63)] as char).collect())
}

/// Writes a new key to `path` with mode 0600, refusing to overwrite.
pub fn write_new(path: &Path) -> Result<(), KeyError> {
    let key = generate()?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_path_buf())
        } else {
            KeyError::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    writeln!(f, "{key}").and_then(|()| f.sync_all()).map_err(|e| KeyError::Io { path: path.to_path_buf(), source: e })
}

/// Reads a key file: its first line, trimmed, must be non-empty and
/// printable. Keys written by other tools (any length up to
/// [`crate::trusted::MAX_GROUP_KEY_BYTES`]) are accepted. The file must be
/// a regular file that only its owner (this user or root) may read
/// ([`crate::trusted`]).
pub fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    let text = crate::trusted::read(path, crate::trusted::Kind::GroupKey).map_err(|e| match e {
        crate::trusted::TrustError::Io { path, source } => KeyError::Io { path, source },
        e => KeyError::Unsafe(e),
    })?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.trim_ascii();
    if line.is_empty() {
        return Err(KeyError::Invalid { path: path.to_path_buf(), why: "empty".into() });
    }
    if !line.iter().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::Invalid { path: path.to_path_buf(), why: "contains non-printable bytes".into() });
    }
    Ok(line.to_vec())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generated_keys_match_csync2_format() {
        let k = generate().unwrap();
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(k, generate().unwrap());
    }

    #[test]
    fn written_key_is_private_reads_back_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read(&path).unwrap().len(), 64);
        assert!(matches!(write_new(&path), Err(KeyError::Exists(_))));
    }

    #[test]
    fn empty_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(read(&path), Err(KeyError::Invalid { .. })));
    }

    #[test]
    fn a_group_key_others_can_read_is_refused_with_the_chmod_that_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&path).unwrap_err();
        assert!(matches!(err, KeyError::Unsafe(_)), "{err}");
        assert!(err.to_string().contains(&format!("chmod 600 {}", path.display())), "{err}");
    }
}
