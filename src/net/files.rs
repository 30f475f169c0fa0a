//! The network layer's files in the state directory: created private,
//! replaced atomically, and locked while read-modify-written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::NetError;
use crate::trusted::{self, Kind, TrustError};

/// The subdirectory of a node's state directory that holds its key,
/// certificates and pins.
pub const NET_DIR: &str = "net";

/// `state_dir/net`, created with mode 0700 if missing.
pub(crate) fn net_dir(state_dir: &Path) -> Result<PathBuf, NetError> {
    let dir = state_dir.join(NET_DIR);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| NetError::io(&dir, e))?;
    Ok(dir)
}

/// How a private file is put in place.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replace {
    /// Replace whatever is there.
    Always,
    /// Fail with `AlreadyExists` if the file exists: two processes creating
    /// the same key at once keep exactly one of them.
    Never,
}

/// Writes `bytes` to `path` with mode 0600: a temporary file in the same
/// directory, synced, then renamed (or linked, for [`Replace::Never`]) into
/// place, and the directory synced, so a crash leaves the old file or the
/// new one, never a torn one.
pub(crate) fn write_private(path: &Path, bytes: &[u8], replace: Replace) -> Result<(), NetError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile creates its files with mode 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| NetError::io(dir, e))?;
    tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()).map_err(|e| NetError::io(tmp.path(), e))?;
    match replace {
        Replace::Always => tmp.persist(path).map(drop).map_err(|e| NetError::io(path, e.error))?,
        Replace::Never => tmp.persist_noclobber(path).map(drop).map_err(|e| NetError::io(path, e.error))?,
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| NetError::io(dir, e))
}

/// Reads a private file of `kind` (the node key, the pins): `None` if it
/// does not exist; an error if it is not a regular file, is too large, is
/// another user's, or can be read or changed by anyone but its owner (as
/// ssh refuses such keys), with the `chmod` that fixes it.
pub(crate) fn read_private(path: &Path, kind: Kind) -> Result<Option<Vec<u8>>, NetError> {
    trusted::read_optional(path, kind).map_err(|e| match e {
        TrustError::Io { path, source } => NetError::Io { path, source },
        e => NetError::UnsafeFile(e),
    })
}

/// Reads a file that need not be private: `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, NetError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NetError::io(path, e)),
    }
}

/// An exclusive advisory lock on a file, released on drop.
pub(crate) struct Lock {
    _file: File,
}

impl Lock {
    /// Blocks until the lock on `path` (created if missing) is held. Held only
    /// around short read-modify-write steps, so blocking is brief.
    pub(crate) fn exclusive(path: &Path) -> Result<Lock, NetError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| NetError::io(path, e))?;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is shared.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Lock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(NetError::io(path, err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn private_files_are_0600_and_never_clobbered_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let net = net_dir(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&net).unwrap().permissions().mode() & 0o777, 0o700);
        let p = net.join("k");
        write_private(&p, b"one", Replace::Never).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let again = write_private(&p, b"two", Replace::Never);
        assert!(
            matches!(again, Err(NetError::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists)
        );
        assert_eq!(read_private(&p, Kind::NodeKey).unwrap().unwrap(), b"one");
        write_private(&p, b"three", Replace::Always).unwrap();
        assert_eq!(read_private(&p, Kind::NodeKey).unwrap().unwrap(), b"three");
        assert!(read_private(&net.join("missing"), Kind::NodeKey).unwrap().is_none());
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"secret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private(&p, Kind::NodeKey).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
