//! Files the node trusts: config files, group keys, and the node key and
//! pins in the state directory.
//!
//! Terms. A *trusted file* is one whose content decides what the node does
//! as root (a config names the commands actions run) or who it talks to (a
//! key, a pin). Each *kind* ([`Kind`]) has a size bound and a *mode rule*:
//! *private* files (keys, pins) may carry no permission bit for group or
//! others, as ssh requires of private keys; a *protected* file (a config)
//! may be readable by all but writable only by its owner. Every trusted
//! file must be owned by the user the process runs as, or by root.
//!
//! A trusted file is opened without blocking (a FIFO must not hang the
//! node) and checked on the opened descriptor, never by a path looked up
//! again: it must be a regular file (`/dev/zero` would never end), no
//! larger than its kind's bound, then its mode and owner are checked and it
//! is read with that bound. Symbolic links are followed (configs in `/etc`
//! are often links); the checks apply to the file reached.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest config file accepted (each file, includes counted apart).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Largest group key file accepted. A csync2 key is 64 characters.
pub const MAX_GROUP_KEY_BYTES: u64 = 4 << 10;

/// Largest node key file accepted (a P-256 PKCS#8 PEM is about 250 bytes).
pub const MAX_NODE_KEY_BYTES: u64 = 16 << 10;

/// Largest pin file accepted: about 10,000 pins.
pub const MAX_PINS_BYTES: u64 = 1 << 20;

/// What a trusted file is, which decides its size bound and mode rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A config file or a file it includes: writable by its owner only.
    Config,
    /// A group key file: private.
    GroupKey,
    /// The node's private key in the state directory: private.
    NodeKey,
    /// The pin file in the state directory: private.
    Pins,
}

impl Kind {
    /// The largest file of this kind accepted.
    pub fn max_bytes(self) -> u64 {
        match self {
            Kind::Config => MAX_CONFIG_BYTES,
            Kind::GroupKey => MAX_GROUP_KEY_BYTES,
            Kind::NodeKey => MAX_NODE_KEY_BYTES,
            Kind::Pins => MAX_PINS_BYTES,
        }
    }

    /// Permission bits a file of this kind may not have.
    fn forbidden_bits(self) -> u32 {
        match self {
            Kind::Config => 0o022,
            Kind::GroupKey | Kind::NodeKey | Kind::Pins => 0o077,
        }
    }

    /// The command that clears the forbidden bits.
    fn chmod(self) -> &'static str {
        match self {
            Kind::Config => "chmod go-w",
            Kind::GroupKey | Kind::NodeKey | Kind::Pins => "chmod 600",
        }
    }

    /// How the file is named in messages.
    fn noun(self) -> &'static str {
        match self {
            Kind::Config => "config file",
            Kind::GroupKey => "group key file",
            Kind::NodeKey => "node key file",
            Kind::Pins => "pin file",
        }
    }
}

/// Why a trusted file was not read. Every variant names the file; all but
/// [`TrustError::Io`] are permanent until someone fixes the file.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file (a device, a FIFO, a directory, a socket).
    #[error("{}: the {} is {found}, not a regular file; name a regular file instead", path.display(), kind.noun())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it was opened as.
        kind: Kind,
        /// What it is.
        found: &'static str,
    },
    /// Larger than the kind allows.
    #[error("{}: the {} is {size} bytes, more than the {limit} bytes allowed", path.display(), kind.noun())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What it was opened as.
        kind: Kind,
        /// Its size (at least).
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// Group or others may read or write it (as the kind forbids).
    #[error(
        "{}: the {} has mode {mode:o}, which lets other users {}; refusing it. Fix with `{} {}`",
        path.display(), kind.noun(), if kind.forbidden_bits() == 0o022 { "change it" } else { "read or change it" },
        kind.chmod(), path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// What it was opened as.
        kind: Kind,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by another user than the process's or root.
    #[error(
        "{}: the {} is owned by uid {owner}, neither this user (uid {me}) nor root; refusing it. \
         Fix with `chown {me} {}`",
        path.display(), kind.noun(), path.display()
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// What it was opened as.
        kind: Kind,
        /// The file's owner.
        owner: u32,
        /// The process's effective uid.
        me: u32,
    },
}

impl TrustError {
    /// The file concerned.
    pub fn path(&self) -> &Path {
        match self {
            TrustError::Io { path, .. }
            | TrustError::NotRegular { path, .. }
            | TrustError::TooLarge { path, .. }
            | TrustError::Permissions { path, .. }
            | TrustError::Owner { path, .. } => path,
        }
    }

    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TrustError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads the trusted file `path` of `kind`, with every check above.
pub fn read(path: &Path, kind: Kind) -> Result<Vec<u8>, TrustError> {
    let io = |source| TrustError::Io { path: path.to_path_buf(), source };
    let mut file = File::options()
        .read(true)
        // A FIFO opened for reading without O_NONBLOCK waits for a writer.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    check(&file, path, kind)?;
    let limit = kind.max_bytes();
    let mut bytes = Vec::new();
    (&mut file).take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        // It grew after the check.
        return Err(TrustError::TooLarge { path: path.to_path_buf(), kind, size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

/// Like [`read`], with `None` when the file does not exist.
pub fn read_optional(path: &Path, kind: Kind) -> Result<Option<Vec<u8>>, TrustError> {
    match read(path, kind) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Checks the opened `file` (named `path`) as a trusted file of `kind`.
fn check(file: &File, path: &Path, kind: Kind) -> Result<(), TrustError> {
    let md = file.metadata().map_err(|source| TrustError::Io { path: path.to_path_buf(), source })?;
    let found = match md.mode() & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFSOCK => Some("a socket"),
        _ => Some("not a file"),
    };
    if let Some(found) = found {
        return Err(TrustError::NotRegular { path: path.to_path_buf(), kind, found });
    }
    let limit = kind.max_bytes();
    if md.len() > limit {
        return Err(TrustError::TooLarge { path: path.to_path_buf(), kind, size: md.len(), limit });
    }
    // SAFETY: geteuid only reads the process's effective user id.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me && md.uid() != 0 {
        return Err(TrustError::Owner { path: path.to_path_buf(), kind, owner: md.uid(), me });
    }
    let mode = md.mode() & 0o7777;
    if mode & kind.forbidden_bits() != 0 {
        return Err(TrustError::Permissions { path: path.to_path_buf(), kind, mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    use super::*;

    fn file_with_mode(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn private_kinds_refuse_any_group_or_other_bit_with_the_chmod_that_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [Kind::GroupKey, Kind::NodeKey, Kind::Pins] {
            for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610] {
                let p = file_with_mode(dir.path(), "k", b"key\n", mode);
                let err = read(&p, kind).unwrap_err();
                assert!(matches!(err, TrustError::Permissions { mode: m, .. } if m == mode), "{mode:o}: {err}");
                let msg = err.to_string();
                assert!(msg.contains(&format!("chmod 600 {}", p.display())), "{msg}");
            }
            let p = file_with_mode(dir.path(), "k", b"key\n", 0o600);
            assert_eq!(read(&p, kind).unwrap(), b"key\n");
            let p = file_with_mode(dir.path(), "k", b"key\n", 0o400);
            assert_eq!(read(&p, kind).unwrap(), b"key\n");
        }
    }

    #[test]
    fn a_config_may_be_world_readable_but_not_writable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with_mode(dir.path(), "c", b"# cfg\n", 0o644);
        assert_eq!(read(&p, Kind::Config).unwrap(), b"# cfg\n");
        for mode in [0o664, 0o646, 0o666] {
            let p = file_with_mode(dir.path(), "c", b"# cfg\n", mode);
            let msg = read(&p, Kind::Config).unwrap_err().to_string();
            assert!(msg.contains(&format!("chmod go-w {}", p.display())), "{msg}");
        }
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = Instant::now();
        for (path, found) in [(fifo.as_path(), "a FIFO"), (Path::new("/dev/zero"), "a character device")] {
            for kind in [Kind::Config, Kind::GroupKey, Kind::NodeKey, Kind::Pins] {
                let err = read(path, kind).unwrap_err();
                assert!(matches!(err, TrustError::NotRegular { found: f, .. } if f == found), "{err}");
                assert!(err.to_string().contains(&path.display().to_string()), "{err}");
            }
        }
        assert!(read(dir.path(), Kind::Config).is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn files_beyond_the_bound_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with_mode(dir.path(), "k", &vec![b'a'; MAX_GROUP_KEY_BYTES as usize + 1], 0o600);
        let err = read(&p, Kind::GroupKey).unwrap_err();
        assert!(matches!(err, TrustError::TooLarge { limit: MAX_GROUP_KEY_BYTES, .. }), "{err}");
        let p = file_with_mode(dir.path(), "k", &vec![b'a'; MAX_GROUP_KEY_BYTES as usize], 0o600);
        assert_eq!(read(&p, Kind::GroupKey).unwrap().len(), MAX_GROUP_KEY_BYTES as usize);
    }

    #[test]
    fn a_missing_file_is_none_only_for_read_optional() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing");
        assert!(read_optional(&p, Kind::Pins).unwrap().is_none());
        assert!(read(&p, Kind::Pins).unwrap_err().is_not_found());
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        // SAFETY: geteuid only reads the process's effective user id.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to give a file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = file_with_mode(dir.path(), "k", b"key\n", 0o600);
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        // Another user could rewrite it: refused even though root can read it.
        let err = read(&p, Kind::GroupKey).unwrap_err();
        assert!(matches!(err, TrustError::Owner { owner: 65534, me: 0, .. }), "{err}");
        assert!(err.to_string().contains("chown 0"), "{err}");
    }
}
