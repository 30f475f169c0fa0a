//! Keeping the stores private to their owner.
//!
//! The state database holds every tracked path name and the chunk store
//! every byte of every kept file, root's 0600 files included: both must be
//! readable by their owner only (directories 0700, files 0600), whatever
//! umask the process was started with.
//!
//! Two measures. The binary *restricts* the process umask to 0077 before
//! anything else ([`restrict_umask`]), because fjall creates its journals
//! and tables itself, with the mode the umask leaves. And every open of a
//! store *tightens* what is already there ([`tighten_tree`]): a store made
//! before this rule, or copied in with loose modes, loses its group and
//! other bits. Tightening never follows a symbolic link, and costs one
//! `lstat` per entry when nothing needs changing.
//!
//! Files the node writes for others (synced files, restored trees) are not
//! store files: where their mode comes from the umask (`ignore mod`), they
//! use the umask the process was started with ([`original_umask`]).

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::StoreError;

/// The umask every command runs with: no access for group or others.
pub const PRIVATE_UMASK: u32 = 0o077;

/// The umask found when [`restrict_umask`] first ran.
static ORIGINAL_UMASK: OnceLock<u32> = OnceLock::new();

/// Sets the process umask to [`PRIVATE_UMASK`], remembering the one it
/// replaces for [`original_umask`]. Call it once, first thing, before any
/// thread starts.
pub fn restrict_umask() {
    // SAFETY: umask only swaps the process's file mode creation mask.
    let old = unsafe { libc::umask(PRIVATE_UMASK as libc::mode_t) } as u32;
    ORIGINAL_UMASK.get_or_init(|| old);
}

/// The umask the process was started with: the one [`restrict_umask`]
/// replaced, or the current one if it never ran (a library user).
pub fn original_umask() -> u32 {
    if let Some(&mask) = ORIGINAL_UMASK.get() {
        return mask;
    }
    // Reading the umask means setting it; the mask set meanwhile is the
    // strictest one, so a file another thread creates in between is never
    // more open than intended.
    // SAFETY: umask only swaps the process's file mode creation mask.
    let mask = unsafe { libc::umask(0o077) };
    // SAFETY: as above, putting back the mask read.
    unsafe { libc::umask(mask) };
    mask as u32
}

/// Creates the directory `dir` with mode 0700 if it is missing (its
/// parents with the umask's mode), then makes it owner-only.
pub(crate) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => tighten(dir),
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

/// Makes `root` and every directory and file below it owner-only: clears
/// the group and other bits (and any set-id or sticky bit) where one is
/// set. Symbolic links are neither followed nor changed; a missing `root`
/// is left missing.
pub(crate) fn tighten_tree(root: &Path) -> Result<(), StoreError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    match std::fs::symlink_metadata(root) {
        Ok(md) if md.is_dir() => {
            tighten_entry(root, &md)?;
            dirs.push(root.to_path_buf());
        }
        Ok(md) => tighten_entry(root, &md)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(root, e)),
    }
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            let path = entry.path();
            // `DirEntry::metadata` does not follow links.
            let md = match entry.metadata() {
                Ok(md) => md,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(&path, e)),
            };
            tighten_entry(&path, &md)?;
            if md.is_dir() {
                dirs.push(path);
            }
        }
    }
    Ok(())
}

/// Makes the one directory or file `path` owner-only (not what is in it).
pub(crate) fn tighten(path: &Path) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) => tighten_entry(path, &md),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Tightens `path`, whose `lstat` is `md`, if it is a directory or regular
/// file with a bit beyond the owner's. The change goes through a
/// descriptor opened without following links and checked to be the same
/// file, so a path swapped for a link meanwhile is never changed through.
fn tighten_entry(path: &Path, md: &std::fs::Metadata) -> Result<(), StoreError> {
    let ft = md.file_type();
    if !(ft.is_dir() || ft.is_file()) || md.mode() & 0o7077 == 0 {
        return Ok(());
    }
    let mut flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    if ft.is_dir() {
        flags |= libc::O_DIRECTORY;
    }
    let file = match File::options().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let now = file.metadata().map_err(|e| StoreError::io(path, e))?;
    if now.dev() != md.dev() || now.ino() != md.ino() {
        return Ok(());
    }
    file.set_permissions(std::fs::Permissions::from_mode(now.mode() & 0o700)).map_err(|e| StoreError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_loose_tree_is_made_owner_only_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/0.jnl"), b"secret").unwrap();
        std::fs::write(root.join("top"), b"x").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"not ours").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        for p in [&root, &root.join("a"), &root.join("a/b")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for p in [root.join("a/b/0.jnl"), root.join("top"), outside.clone()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }

        tighten_tree(&root).unwrap();
        for d in [&root, &root.join("a"), &root.join("a/b")] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&root.join("a/b/0.jnl")), 0o600);
        assert_eq!(mode(&root.join("top")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link's target is not changed");
        // Idempotent, and a missing tree is no error.
        tighten_tree(&root).unwrap();
        tighten_tree(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn a_private_dir_is_made_or_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("p/new");
        private_dir(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        let old = dir.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o775)).unwrap();
        private_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
    }
}
