//! The one door through which snapsync puts files into the trees it
//! writes (sync and restore), safe against the other users of those trees,
//! and through which the scan lists and `lstat`s them (relative to an open
//! [`Dir`], never by a path a swapped directory could redirect).
//!
//! The daemon runs as root over directories that others may write into (an
//! upload directory). Anything it finds there under a name it might use is
//! theirs, so (SPEC §6) it never writes into, changes the mode or owner of,
//! or renames into place a file it did not create itself in this run:
//!
//! - A file is built in a fresh temporary, `.snapsync-<32 random hex>.tmp`,
//!   created with `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC` and mode 0600
//!   relative to a descriptor of the target's directory: a name planted in
//!   advance (a hard link to a file elsewhere, a file someone holds open)
//!   makes the create fail instead of being reused, and nobody else can
//!   open the file once it exists.
//! - Its owner, mode and times are set through its descriptor, never by
//!   name; then it is renamed over the target (`renameat`, same directory
//!   descriptor).
//! - After the rename the inode now at the target name is compared with
//!   the descriptor's (device and inode number). Someone who can write the
//!   directory can still swap the temporary for a file of their own between
//!   the last check and the rename (no system call renames "this open
//!   file"); that file then sits at the target name, which its owner could
//!   have put there anyway, but it is not taken for the file built:
//!   [`PlaceError::Swapped`] makes the caller report the path, and the next
//!   scan records what is there as a local change.
//! - Temporaries are recorded in a [`Journal`] (in the state directory,
//!   which only the daemon can write) before they are created, so the
//!   leftovers of a crash are recognised as the daemon's own and removed;
//!   nothing else named `.snapsync-*` is ever opened, reused or removed.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, File, FileTimes, Permissions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::hash::Hash;
use crate::tree::Meta;

mod staging;
pub use staging::{Pack, STAGING_MAX_AGE, Staged, Staging};

/// Names starting with this are snapsync's temporary files (the scanner
/// never tracks them).
pub const TEMP_PREFIX: &str = ".snapsync-";

/// The umask new files in the trees are made with when their mode is not
/// synced (`ignore mod`): the one the process was started with, not the
/// private one the stores need ([`crate::store::original_umask`]).
pub fn tree_umask() -> u32 {
    crate::store::original_umask()
}

/// Fails if a directory from `base` down to `path`'s parent exists but is
/// not a real directory: a symlink there would carry writes and deletions
/// out of the tree. (`path` itself is replaced, not gone through.) A
/// missing directory ends the check: nothing below it exists to write
/// through.
pub fn no_links_between(base: &Path, path: &Path) -> io::Result<()> {
    let Some(rest) = path.parent().and_then(|p| p.strip_prefix(base).ok()) else {
        return Ok(());
    };
    let mut at = base.to_path_buf();
    for c in std::iter::once(None).chain(rest.components().map(Some)) {
        if let Some(c) = c {
            at.push(c);
        }
        match fs::symlink_metadata(&at) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a directory (a symlink or a file is in the way)",
                    at.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", at.display()))),
        }
    }
    Ok(())
}

/// Bytes of chunk `c` at offset `off` in `f`, if they are there and hash
/// right (the file may have changed since its chunk list was made).
pub fn read_checked(f: &File, off: u64, c: &crate::chunk::ChunkRef) -> Option<Vec<u8>> {
    let buf = read_at(f, off, c.len as usize).ok()?;
    (Hash::of(&buf) == c.hash).then_some(buf)
}

/// [`read_checked`], returned in the chunk's raw stored form
/// ([`crate::chunk::TAG_RAW`], then the bytes), ready to send.
pub fn read_checked_raw(f: &File, off: u64, c: &crate::chunk::ChunkRef) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1 + c.len as usize);
    buf.push(crate::chunk::TAG_RAW);
    read_at_into(f, off, c.len as usize, &mut buf).ok()?;
    (Hash::of(&buf[1..]) == c.hash).then_some(buf)
}

/// Exactly `len` bytes of `f` at offset `off`, read into a buffer that is
/// not zeroed first (chunks are read by the gigabyte; zeroing each buffer
/// cost as much as a copy).
pub fn read_at(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    read_at_into(f, off, len, &mut buf)?;
    Ok(buf)
}

/// [`read_at`], appending to `buf`.
fn read_at_into(f: &File, off: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    let (start, end) = (buf.len(), buf.len() + len);
    buf.reserve_exact(len);
    while buf.len() < end {
        let have = buf.len();
        let at = off + (have - start) as u64;
        let spare = &mut buf.spare_capacity_mut()[..end - have];
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by
        // `buf`; pread writes at most that many bytes into it and returns
        // how many it wrote, which are then initialised.
        let n = unsafe { libc::pread(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at as libc::off_t) };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // SAFETY: pread initialised `n` more bytes, within capacity.
            n => unsafe { buf.set_len(buf.len() + n as usize) },
        }
    }
    Ok(())
}

/// Why a built file was not placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// A system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The target path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file at the target name after the rename is not the one built.
    #[error(
        "{path}: the temporary file was replaced by someone else before it was put in place; what is there now is \
         not taken for the peer's version (the next run records it as a local change)"
    )]
    Swapped {
        /// The target path.
        path: PathBuf,
    },
}

/// What kind of entry a name leads to (its symlink not followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (a fifo, a socket, a device).
    Other,
}

/// An open directory: files are created, renamed and checked relative to
/// it, so a directory swapped for a symlink after it was opened changes
/// nothing.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"))
}

/// Calls `f` with `name` NUL-terminated, copied on the stack (a file
/// name is at most 255 bytes on Linux): no allocation per name.
fn with_cname<T>(name: &[u8], f: impl FnOnce(&CStr) -> io::Result<T>) -> io::Result<T> {
    let mut buf = [0u8; 256];
    if name.len() >= buf.len() {
        return f(&cstr(OsStr::from_bytes(name))?);
    }
    buf[..name.len()].copy_from_slice(name);
    match CStr::from_bytes_with_nul(&buf[..=name.len()]) {
        Ok(c) => f(c),
        Err(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name")),
    }
}

/// The names of a directory ([`Dir::listing`]), sorted by bytes.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every name, one after another.
    bytes: Vec<u8>,
    /// Where each name is in `bytes`, in sorted order.
    spans: Vec<(usize, usize)>,
}

impl Listing {
    fn push(&mut self, name: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        self.spans.push((start, self.bytes.len()));
    }

    /// How many names there are.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The names, sorted by bytes.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(a, b)| &self.bytes[a..b])
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// A device and inode number: what a file is, whatever its name.
pub type Ident = (u64, u64);

fn ident_of(st: &libc::stat) -> Ident {
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    (st.st_dev as u64, st.st_ino as u64)
}

impl Dir {
    /// Opens directory `path`; a symlink in its last component is refused.
    pub fn open(path: &Path) -> io::Result<Dir> {
        Dir::open_with(path, libc::O_NOFOLLOW)
    }

    /// Opens directory `path` following symlinks: only for a path the
    /// configuration names (an include root).
    pub fn open_trusted(path: &Path) -> io::Result<Dir> {
        Dir::open_with(path, 0)
    }

    fn open_with(path: &Path, extra: libc::c_int) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: `c` is a valid NUL-terminated string; the descriptor
        // returned is owned by the result.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | extra) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_path_buf() })
    }

    /// Opens directory `root/rel` one component at a time, none of them
    /// followed if it is a symlink: a directory swapped for a link after
    /// it was checked cannot lead outside `root`.
    pub fn open_beneath(root: &Path, rel: &Path) -> io::Result<Dir> {
        let mut dir = Dir::open_trusted(root)?;
        for c in rel.components() {
            let std::path::Component::Normal(name) = c else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a plain relative path", rel.display()),
                ));
            };
            let cname = cstr(name)?;
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: `cname` is NUL-terminated; the descriptor returned is
            // owned by the new `Dir`.
            let fd = unsafe { libc::openat(dir.fd.as_raw_fd(), cname.as_ptr(), flags) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            dir = Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: dir.path.join(name) };
        }
        Ok(dir)
    }

    /// The path the directory was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes renames in the directory durable.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync only reads the descriptor `self` owns.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) })
    }

    /// `lstat` of `name` in the directory.
    fn stat_at(&self, name: &OsStr) -> io::Result<libc::stat> {
        self.lstat(name.as_bytes())
    }

    /// `lstat` of `name` in the directory: `fstatat(AT_SYMLINK_NOFOLLOW)`
    /// relative to its descriptor, so the kernel looks up one component,
    /// not the whole path, and a symlink in the name's place is never
    /// followed.
    pub fn lstat(&self, name: &[u8]) -> io::Result<libc::stat> {
        with_cname(name, |c| {
            // SAFETY: an all-zero `stat` is a valid value of a plain C struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `c` is NUL-terminated, `st` is writable, the
            // descriptor is open.
            check(unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
            Ok(st)
        })
    }

    /// `fstat` of the directory itself.
    pub fn stat(&self) -> io::Result<libc::stat> {
        // SAFETY: an all-zero `stat` is a valid value of a plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is writable, the descriptor is open.
        check(unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    /// Opens file `name` in the directory for reading: a symlink in its
    /// place is refused (`ELOOP`), and a fifo put there does not block the
    /// open.
    pub fn open_file(&self, name: &[u8]) -> io::Result<File> {
        with_cname(name, |c| {
            let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
            // SAFETY: `c` is NUL-terminated; the descriptor returned is
            // owned by the `File` made from it.
            let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            Ok(unsafe { File::from_raw_fd(fd) })
        })
    }

    /// The target of symlink `name` in the directory.
    pub fn read_link(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        with_cname(name, |c| {
            let mut buf = vec![0u8; 256];
            loop {
                // SAFETY: `c` is NUL-terminated and `buf` writable for its
                // length; the descriptor is open.
                let n =
                    unsafe { libc::readlinkat(self.fd.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                // A target that fills the buffer may have been cut short.
                if (n as usize) < buf.len() {
                    buf.truncate(n as usize);
                    return Ok(buf);
                }
                buf.resize(buf.len() * 2, 0);
            }
        })
    }

    /// The directory itself as a `File`, for its metadata.
    pub fn as_file(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }

    /// Makes `name` a symlink to `target` owned as `meta` says: made under
    /// a fresh name, its owner set through a descriptor of the link
    /// itself, renamed over whatever is at `name` (an empty directory must
    /// be removed first) and checked to be the link made.
    pub fn place_symlink(&self, name: &OsStr, target: &[u8], meta: &Meta) -> Result<(), PlaceError> {
        let path = self.path.join(name);
        let io_err = |source| PlaceError::Io { path: path.clone(), source };
        let target = CString::new(target).map_err(|_| io_err(io::Error::other("NUL in a symlink target")))?;
        let fd = self.fd.as_raw_fd();
        let mut tries = 0;
        let tmp = loop {
            let tmp =
                cstr(OsStr::new(&format!("{TEMP_PREFIX}{}.tmp", random_hex().map_err(io_err)?))).map_err(io_err)?;
            // SAFETY: both strings are NUL-terminated; the descriptor is open.
            match check(unsafe { libc::symlinkat(target.as_ptr(), fd, tmp.as_ptr()) }) {
                Ok(()) => break tmp,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(io_err(e)),
            }
        };
        let tmp_name = OsStr::from_bytes(tmp.as_bytes()).to_owned();
        let result = (|| {
            // SAFETY: as above; the descriptor returned is owned by `link`.
            let raw = unsafe { libc::openat(fd, tmp.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
            if raw < 0 {
                return Err(io_err(io::Error::last_os_error()));
            }
            // SAFETY: `raw` was just opened and is owned by nothing else.
            let link = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: an all-zero `stat` is valid; `link` is open.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `st` is writable, the descriptor is open, the path is "".
            check(unsafe { libc::fstatat(link.as_raw_fd(), c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH) })
                .map_err(io_err)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                return Err(PlaceError::Swapped { path: path.clone() });
            }
            if meta.uid.is_some() || meta.gid.is_some() {
                let (uid, gid) = (meta.uid.unwrap_or(u32::MAX), meta.gid.unwrap_or(u32::MAX));
                // SAFETY: as above; -1 (u32::MAX) leaves an id unchanged.
                check(unsafe {
                    libc::fchownat(
                        link.as_raw_fd(),
                        c"".as_ptr(),
                        uid,
                        gid,
                        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                    )
                })
                .map_err(io_err)?;
            }
            let to = cstr(name).map_err(io_err)?;
            // SAFETY: both names are NUL-terminated; the descriptor is open.
            check(unsafe { libc::renameat(fd, tmp.as_ptr(), fd, to.as_ptr()) }).map_err(io_err)?;
            let after = self.stat_at(name).map_err(io_err)?;
            if ident_of(&after) != ident_of(&st) {
                return Err(PlaceError::Swapped { path: path.clone() });
            }
            Ok(())
        })();
        if result.is_err()
            && let Ok(st) = self.stat_at(&tmp_name)
            && st.st_mode & libc::S_IFMT == libc::S_IFLNK
        {
            let _ = self.unlink_at(&tmp_name);
        }
        result
    }

    fn unlink_at(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: as in `stat_at`.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
    }

    /// What `name` in the directory is, its symlink not followed; `None`
    /// when nothing is there.
    pub fn entry_type(&self, name: &OsStr) -> io::Result<Option<EntryType>> {
        match self.stat_at(name) {
            Ok(st) => Ok(Some(match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => EntryType::Dir,
                libc::S_IFLNK => EntryType::Symlink,
                libc::S_IFREG => EntryType::File,
                _ => EntryType::Other,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates directory `name` with mode 0700 (the caller gives it its
    /// mode through [`Dir::open_dir`] once it is known to be the one made).
    pub fn make_dir(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: as in `stat_at`.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) })
    }

    /// Opens subdirectory `name`; a symlink in its place is refused.
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        self.open_dir_with(name, 0)
    }

    /// Opens subdirectory `name` only to reach entries below it
    /// (`O_PATH`): the directory needs search permission, not read
    /// permission, and cannot be listed ([`Dir::listing`] fails).
    pub fn open_dir_to_lookup(&self, name: &OsStr) -> io::Result<Dir> {
        self.open_dir_with(name, libc::O_PATH)
    }

    /// Opens directory `path` only to reach entries below it, as
    /// [`Dir::open_dir_to_lookup`] does; a symlink in its last component
    /// is refused.
    pub fn open_to_lookup(path: &Path) -> io::Result<Dir> {
        Dir::open_with(path, libc::O_NOFOLLOW | libc::O_PATH)
    }

    fn open_dir_with(&self, name: &OsStr, extra: libc::c_int) -> io::Result<Dir> {
        with_cname(name.as_bytes(), |c| {
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | extra;
            // SAFETY: `c` is NUL-terminated; the descriptor returned is
            // owned by the new `Dir`.
            let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: self.path.join(name) })
        })
    }

    /// Removes `name`: a file or symlink is unlinked (a symlink itself,
    /// never its target), a directory removed if empty (`ENOTEMPTY`
    /// otherwise). Returns false when nothing was there.
    pub fn remove(&self, name: &OsStr) -> io::Result<bool> {
        let flags = match self.entry_type(name)? {
            None => return Ok(false),
            Some(EntryType::Dir) => libc::AT_REMOVEDIR,
            Some(_) => 0,
        };
        let c = cstr(name)?;
        // SAFETY: as in `stat_at`.
        match check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), flags) }) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names in the directory (`.` and `..` left out), read through
    /// its descriptor.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        Ok(self.listing()?.iter().map(|n| OsStr::from_bytes(n).to_owned()).collect())
    }

    /// The names in the directory (`.` and `..` left out), read through
    /// its descriptor, sorted by bytes, all in one buffer: a listing costs
    /// a few allocations, not one per name.
    pub fn listing(&self) -> io::Result<Listing> {
        // Reads a duplicate of the descriptor (`fdopendir` takes it over
        // and `closedir` closes it), from the start.
        let fd = self.fd.try_clone()?;
        // SAFETY: lseek only moves the offset of the open descriptor.
        if unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        // SAFETY: `raw` is an open directory descriptor we own; on success
        // the stream owns it.
        let stream = unsafe { libc::fdopendir(raw) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: `raw` is still ours when fdopendir fails.
            unsafe { libc::close(raw) };
            return Err(e);
        }
        let mut listing = Listing::default();
        loop {
            // SAFETY: errno is this thread's; `stream` is a valid open
            // directory stream. readdir returns NULL at the end (errno
            // untouched) and on an error (errno set).
            let ent = unsafe {
                *libc::__errno_location() = 0;
                libc::readdir(stream)
            };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                if e.raw_os_error().is_some_and(|n| n != 0) {
                    // SAFETY: `stream` is valid and closed once.
                    unsafe { libc::closedir(stream) };
                    return Err(e);
                }
                break;
            }
            // SAFETY: `d_name` is a NUL-terminated string inside `*ent`,
            // valid until the next readdir on `stream`.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                listing.push(name);
            }
        }
        // SAFETY: `stream` is valid and closed once.
        unsafe { libc::closedir(stream) };
        let Listing { bytes, spans } = &mut listing;
        spans.sort_unstable_by(|a, b| bytes[a.0..a.1].cmp(&bytes[b.0..b.1]));
        Ok(listing)
    }

    /// Creates a fresh temporary file in the directory (recorded in
    /// `journal` first, if given).
    pub fn create_temp<'d>(&'d self, journal: Option<&'d Journal>) -> io::Result<TempFile<'d>> {
        for _ in 0..8 {
            let name = OsString::from(format!("{TEMP_PREFIX}{}.tmp", random_hex()?));
            let path = self.path.join(&name);
            if let Some(j) = journal {
                j.record(&path)?;
            }
            let c = cstr(&name)?;
            let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: `c` is NUL-terminated; the descriptor returned is
            // owned by the `File` made from it.
            let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::AlreadyExists {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            let file = unsafe { File::from_raw_fd(fd) };
            let md = file.metadata()?;
            let temp = TempFile {
                dir: self,
                name,
                file,
                ident: (md.dev(), md.ino()),
                _journal: journal,
                done: false,
                synced: false,
            };
            // The create mode is 0600 whatever the umask; this only guards
            // against a filesystem that ignores it.
            if md.mode() & 0o077 != 0 {
                temp.file.set_permissions(Permissions::from_mode(0o600))?;
            }
            return Ok(temp);
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary file name after 8 tries"))
    }
}

/// 32 hex digits from the system's random source.
fn random_hex() -> io::Result<String> {
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: writes at most `buf.len() - got` bytes into `buf[got..]`.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A temporary file this process created, in a [`Dir`]; removed when
/// dropped unless placed.
pub struct TempFile<'d> {
    dir: &'d Dir,
    name: OsString,
    file: File,
    ident: Ident,
    /// Borrowed so that the journal, which removes its log when dropped,
    /// outlives every temporary it recorded.
    _journal: Option<&'d Journal>,
    done: bool,
    /// Its data and metadata are synced ([`TempFile::sync`]).
    synced: bool,
}

impl TempFile<'_> {
    /// The open file, for writing its content.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temporary's current name (for tests and messages).
    pub fn path(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }

    /// Gives the file `meta` through its descriptor; without a recorded
    /// mode it gets `mode`.
    pub fn set_meta(&self, meta: &Meta, mode: u32) -> io::Result<()> {
        if meta.mode.is_none() {
            self.file.set_permissions(Permissions::from_mode(mode))?;
        }
        apply_meta(&self.file, meta)
    }

    /// Starts writing the file's data out without waiting for it
    /// (`sync_file_range(2)`, `SYNC_FILE_RANGE_WRITE`), so that a later
    /// [`TempFile::sync`] of many files finds most of it written. Only a
    /// hint: an error is left for the sync to report.
    pub fn start_writeback(&self) {
        // SAFETY: sync_file_range only reads the descriptor `self` owns.
        unsafe { libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }

    /// Syncs the file's data and metadata, so that [`TempFile::place`]
    /// has only to rename it. Temporaries synced from several threads at
    /// once share the filesystem's journal commits; one after another,
    /// each waits for a commit of its own.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        self.synced = true;
        Ok(())
    }

    /// Syncs the data (unless [`TempFile::sync`] did), renames the file
    /// over `name` in its directory and checks that the file now there is
    /// this one; returns its metadata (taken through the descriptor, after
    /// the rename).
    pub fn place(mut self, name: &OsStr) -> Result<fs::Metadata, PlaceError> {
        let target = self.dir.path.join(name);
        let io_err = |source| PlaceError::Io { path: target.clone(), source };
        if !self.synced {
            self.file.sync_all().map_err(io_err)?;
        }
        crate::killpoint::hit("place.synced");
        // Narrows the window; the check after the rename is the one that
        // counts.
        let before = self.dir.stat_at(&self.name).map_err(io_err)?;
        if ident_of(&before) != self.ident {
            self.done = true;
            return Err(PlaceError::Swapped { path: target });
        }
        let (from, to) = (cstr(&self.name).map_err(io_err)?, cstr(name).map_err(io_err)?);
        let fd = self.dir.fd.as_raw_fd();
        // SAFETY: both names are NUL-terminated; the descriptor is open.
        check(unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) }).map_err(io_err)?;
        crate::killpoint::hit("place.renamed");
        self.done = true;
        let after = self.dir.stat_at(name).map_err(io_err)?;
        if ident_of(&after) != self.ident {
            return Err(PlaceError::Swapped { path: target });
        }
        self.file.metadata().map_err(io_err)
    }

    /// Removes the temporary if its name still leads to it.
    fn discard(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if self.dir.stat_at(&self.name).is_ok_and(|st| ident_of(&st) == self.ident) {
            let _ = self.dir.unlink_at(&self.name);
        }
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Opens a file for reading without following a symlink in its place
/// (nor blocking on a fifo put there).
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)
}

/// Sets owner, mode and mtime on an open file or directory, in that order
/// (chown clears set-id bits, so mode follows it).
pub fn apply_meta(f: &File, meta: &Meta) -> io::Result<()> {
    if meta.uid.is_some() || meta.gid.is_some() {
        std::os::unix::fs::fchown(f, meta.uid, meta.gid)?;
    }
    if let Some(mode) = meta.mode {
        f.set_permissions(Permissions::from_mode(mode))?;
    }
    if let Some(t) = meta.mtime {
        f.set_times(FileTimes::new().set_modified(t.to_system()))?;
    }
    Ok(())
}

/// Creates directory `path` (and its parents) with mode 0700, and makes an
/// existing one 0700.
pub fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    fs::set_permissions(path, Permissions::from_mode(0o700))
}

/// The temporaries this daemon created, by path, in its state directory.
/// Each writer (one sync of one group with one peer, one restore) appends
/// the paths of its temporaries to a log of its own, `<random>.log`, each
/// path followed by a NUL, before it creates them; the log is removed when
/// the writer is done, once every temporary is placed or removed. What a
/// crash leaves is swept by the next run. One log per writer rather than
/// one file per temporary: creating and deleting a file for each file
/// placed doubled the filesystem's inode work in a first sync.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// This writer's log, made at its first record.
    log: std::sync::Mutex<Option<(PathBuf, File)>>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Every temporary recorded is placed or removed by now: a
        // temporary borrows its journal.
        if let Some((path, _)) = self.log.get_mut().ok().and_then(Option::take) {
            let _ = fs::remove_file(path);
        }
    }
}

impl Journal {
    /// The journal in `dir` (created 0700 if missing).
    pub fn open(dir: &Path) -> io::Result<Journal> {
        private_dir(dir)?;
        Ok(Journal { dir: dir.to_path_buf(), log: Default::default() })
    }

    /// The node's journal: `STATE/incoming/temps`, shared by every writer
    /// of the trees (sync and restore), so one sweep finds the leftovers
    /// of either.
    pub fn of_state(state_dir: &Path) -> io::Result<Journal> {
        // `incoming` is made private too, not only created so: a state
        // from before the stores were private has it 0755.
        let incoming = state_dir.join("incoming");
        private_dir(&incoming)?;
        Journal::open(&incoming.join("temps"))
    }

    /// Sweeps the node's journal ([`Journal::sweep`]) if it has one; a
    /// state that never wrote into a tree gets no `incoming` directory.
    pub fn sweep_state(state_dir: &Path) -> io::Result<Vec<PathBuf>> {
        if !state_dir.join("incoming").join("temps").is_dir() {
            return Ok(Vec::new());
        }
        Journal::of_state(state_dir)?.sweep()
    }

    /// Where an older release recorded `path`: a file of its own, named
    /// by the hash of the path.
    fn entry(&self, path: &Path) -> PathBuf {
        self.dir.join(Hash::of(path.as_os_str().as_bytes()).to_hex())
    }

    fn record(&self, path: &Path) -> io::Result<()> {
        let mut log = self.log.lock().expect("journal poisoned");
        // The journal lives in the state directory, often on another
        // filesystem than the tree: a full or read-only state disk must
        // not read as a problem of the tree's (the caller names only the
        // temporary's path).
        let named = |at: &Path, e: io::Error| {
            io::Error::new(e.kind(), format!("recording it in the journal of temporaries {}: {e}", at.display()))
        };
        if log.is_none() {
            let at = self.dir.join(format!("{}.log", random_hex()?));
            let f = fs::OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&at)
                .map_err(|e| named(&at, e))?;
            *log = Some((at, f));
        }
        let (at, f) = log.as_mut().expect("made above");
        let mut rec = Vec::with_capacity(path.as_os_str().len() + 1);
        rec.extend_from_slice(path.as_os_str().as_bytes());
        rec.push(0);
        // Not synced (one fsync per file placed is enough): a record lost
        // in a crash leaves a temporary file behind, never tracked, and
        // never removes anything.
        io::Write::write_all(f, &rec).map_err(|e| named(at, e))
    }

    /// The temporaries recorded in the journal file at `at`: a log, or
    /// an older release's single entry.
    fn recorded(&self, at: &Path) -> io::Result<Vec<PathBuf>> {
        let bytes = fs::read(at)?;
        if at.extension().is_none_or(|x| x != "log") {
            let path = PathBuf::from(OsString::from_vec(bytes));
            return Ok(if self.entry(&path) == at { vec![path] } else { Vec::new() });
        }
        // A record torn by a crash has no NUL: its temporary was never
        // created.
        let mut records: Vec<&[u8]> = bytes.split(|b| *b == 0).collect();
        records.pop();
        Ok(records.into_iter().filter(|r| !r.is_empty()).map(|r| PathBuf::from(OsStr::from_bytes(r))).collect())
    }

    /// Removes every recorded temporary left by an earlier run (a regular
    /// file this process's user owns, under a temporary's name); returns
    /// the paths removed. Only safe while no temporary of any writer is in
    /// use (the callers hold the store's writer lock).
    pub fn sweep(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        // This writer's own log is swept with the others, and starts
        // again at its next record.
        drop(self.log.lock().expect("journal poisoned").take());
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            for path in self.recorded(&e.path())? {
                let ours = path.file_name().is_some_and(|n| {
                    n.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) && n.as_bytes().ends_with(b".tmp")
                });
                if ours
                    && let Some(parent) = path.parent()
                    && let Ok(dir) = Dir::open(parent)
                    && let Some(name) = path.file_name()
                    && let Ok(st) = dir.stat_at(name)
                    && st.st_mode & libc::S_IFMT == libc::S_IFREG
                    && st.st_uid == me
                    && dir.unlink_at(name).is_ok()
                {
                    tracing::info!("{}: removed, a temporary file left by an interrupted run", path.display());
                    removed.push(path);
                }
            }
            fs::remove_file(e.path())?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_at_reads_exactly_the_range_or_fails() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(d.path().join("f"), &data).unwrap();
        let f = File::open(d.path().join("f")).unwrap();
        assert_eq!(read_at(&f, 1000, 70_000).unwrap(), &data[1000..71_000]);
        assert_eq!(read_at(&f, 100_000, 0).unwrap(), b"");
        assert_eq!(read_at(&f, 99_000, 2000).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_checked_chunk_reads_in_its_raw_stored_form() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(d.path().join("f"), &data).unwrap();
        let f = File::open(d.path().join("f")).unwrap();
        let part = &data[1000..71_000];
        let c = crate::chunk::ChunkRef { hash: Hash::of(part), len: part.len() as u32 };
        let raw = read_checked_raw(&f, 1000, &c).unwrap();
        assert_eq!(crate::chunk::decode(&c.hash, &raw).unwrap(), part);
        assert_eq!(raw.len(), 1 + part.len());
        // Bytes that do not hash to the name, or a range past the end.
        assert_eq!(read_checked_raw(&f, 1001, &c), None);
        assert_eq!(read_checked_raw(&f, 40_000, &c), None);
    }

    #[test]
    fn temp_is_fresh_private_and_placed() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        let t = dir.create_temp(None).unwrap();
        let name = t.path().file_name().unwrap().to_owned();
        assert!(name.to_str().unwrap().starts_with(TEMP_PREFIX));
        assert_eq!(name.len(), TEMP_PREFIX.len() + 32 + 4, "{name:?}");
        assert_eq!(t.file().metadata().unwrap().mode() & 0o777, 0o600);
        io::Write::write_all(&mut t.file(), b"new").unwrap();
        t.place(OsStr::new("target")).unwrap();
        assert_eq!(fs::read(d.path().join("target")).unwrap(), b"new");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "the temporary is gone");
    }

    #[test]
    fn temp_dropped_unplaced_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        drop(dir.create_temp(None).unwrap());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    /// A temporary replaced between fill and rename (the name now leads to
    /// someone else's file) is never taken for the file built.
    #[test]
    fn swapped_temp_is_not_adopted() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        let t = dir.create_temp(None).unwrap();
        io::Write::write_all(&mut t.file(), b"synced").unwrap();
        let planted = d.path().join("planted");
        fs::write(&planted, b"theirs").unwrap();
        fs::rename(&planted, t.path()).unwrap();
        let e = t.place(OsStr::new("target")).unwrap_err();
        assert!(matches!(e, PlaceError::Swapped { .. }), "{e}");
        // Their file was neither written nor renamed into place.
        assert!(!d.path().join("target").exists());
        let left: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(left.len(), 1);
        assert_eq!(fs::read(&left[0]).unwrap(), b"theirs");
    }

    #[test]
    fn journal_sweeps_only_recorded_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        fs::create_dir(&tree).unwrap();
        let journal = Journal::open(&d.path().join("temps")).unwrap();
        let dir = Dir::open(&tree).unwrap();
        let t = dir.create_temp(Some(&journal)).unwrap();
        let left = t.path();
        std::mem::forget(t); // a crash: neither placed nor removed
        let planted = tree.join(".snapsync-0123456789abcdef0123456789abcdef.tmp");
        fs::write(&planted, b"not ours").unwrap();
        assert_eq!(journal.sweep().unwrap(), vec![left.clone()]);
        assert!(!left.exists());
        assert_eq!(fs::read(&planted).unwrap(), b"not ours");
        assert_eq!(fs::read_dir(d.path().join("temps")).unwrap().count(), 0);
    }

    #[test]
    fn dir_entries_are_made_listed_and_removed_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("outside")).unwrap();
        fs::write(d.path().join("outside/keep"), b"keep").unwrap();
        fs::create_dir(d.path().join("root")).unwrap();
        let root = Dir::open(&d.path().join("root")).unwrap();
        let name = OsStr::new;
        assert_eq!(root.entry_type(name("sub")).unwrap(), None);
        root.make_dir(name("sub")).unwrap();
        assert_eq!(root.entry_type(name("sub")).unwrap(), Some(EntryType::Dir));
        assert_eq!(fs::metadata(d.path().join("root/sub")).unwrap().mode() & 0o777, 0o700);
        fs::write(d.path().join("root/sub/f"), b"f").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), d.path().join("root/link")).unwrap();
        assert_eq!(root.entry_type(name("link")).unwrap(), Some(EntryType::Symlink));
        assert!(root.open_dir(name("link")).is_err(), "a link is not opened as a directory");
        let mut names = root.names().unwrap();
        names.sort();
        assert_eq!(names, vec![OsString::from("link"), OsString::from("sub")]);
        // Twice: the listing starts from the beginning every time.
        assert_eq!(root.names().unwrap().len(), 2);
        let e = root.remove(name("sub")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
        let sub = root.open_dir(name("sub")).unwrap();
        assert!(sub.remove(name("f")).unwrap());
        assert!(!sub.remove(name("f")).unwrap(), "nothing there any more");
        assert!(root.remove(name("sub")).unwrap());
        // The link goes, never what it points to.
        assert!(root.remove(name("link")).unwrap());
        assert_eq!(fs::read(d.path().join("outside/keep")).unwrap(), b"keep");
        assert!(root.names().unwrap().is_empty());
    }

    #[test]
    fn open_beneath_follows_no_symlink() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("root/a/b")).unwrap();
        fs::create_dir(d.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), d.path().join("root/a/link")).unwrap();
        let root = d.path().join("root");
        assert_eq!(Dir::open_beneath(&root, Path::new("a/b")).unwrap().path(), root.join("a/b"));
        let e = Dir::open_beneath(&root, Path::new("a/link")).unwrap_err();
        // ENOTDIR with O_DIRECTORY, ELOOP without.
        assert!(matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)), "{e}");
        assert!(Dir::open_beneath(&root, Path::new("a/../..")).is_err());
    }
}
