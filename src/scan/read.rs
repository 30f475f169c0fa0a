//! Reading one file consistently.
//!
//! A file that is being written while it is read must never be recorded
//! half-read (SPEC §4.14). The file is opened without following links,
//! `fstat`ed before and after its bytes are chunked, and the read counts
//! only if both agree (size, mtime, ctime, inode). A file changed within a
//! timestamp tick of the read (whose times writes during the read may not
//! have moved) is read a second time after the tick and counts only if it
//! reads the same. Otherwise it is tried again a few times and then
//! skipped until the next run.

use std::fs::File;
use std::io;

use super::Loc;
use crate::chunk::ChunkRef;
use crate::store::{ChunkStore, Stat, StoreError};
use crate::tree::Timestamp;

/// How often a changing file is read before it is skipped.
const ATTEMPTS: usize = 3;

/// How close to "now" an mtime makes the stat cache untrustworthy. Two
/// seconds covers filesystems with coarse timestamps and clock ticks.
const RACY_WINDOW_SECS: i64 = 2;

/// The coarsest tick of the file timestamps the kernel sets (they come
/// from a clock that advances once per jiffy, up to 10 ms), with margin.
/// Writes within one tick leave `st_mtime` and `st_ctime` as they were.
const TIMESTAMP_TICK: std::time::Duration = std::time::Duration::from_millis(20);

pub(super) struct ReadOut {
    pub chunks: Vec<ChunkRef>,
    pub stat: Stat,
    pub racy: bool,
    pub added_bytes: u64,
}

pub(super) enum ReadError {
    /// It kept changing while read.
    Unstable,
    /// It disappeared.
    Gone,
    /// It could not be read.
    Io(io::Error),
    /// The chunk store failed: fatal for the run.
    Store(StoreError),
}

/// Reads and chunks the file at `at`, storing chunks in `backups` if given.
pub(super) fn read_stable(at: Loc<'_>, backups: Option<&ChunkStore>) -> Result<ReadOut, ReadError> {
    for _ in 0..ATTEMPTS {
        // Not following a link, and not blocking: if a fifo took the
        // file's place since the lstat, the open must not wait for a
        // writer (the type check below skips it).
        let mut f = match at.open_file() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Gone),
            // ELOOP: a symlink was put in its place since the lstat.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        let started = std::time::SystemTime::now();
        let before = fstat(&f)?;
        if before.mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let mut added = 0u64;
        let mut store_err = None;
        let chunks = crate::chunk::chunk_file(&mut f, before.size, |c, data| {
            if let Some(cs) = backups {
                match cs.put(&c.hash, data) {
                    Ok(n) => added += n,
                    Err(e) => {
                        store_err = Some(e);
                        return Err(io::Error::other("chunk store failed"));
                    }
                }
            }
            Ok(())
        });
        if let Some(e) = store_err {
            return Err(ReadError::Store(e));
        }
        let chunks = chunks.map_err(ReadError::Io)?;
        let after = fstat(&f)?;
        let len: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        if before != after || len != before.size {
            tracing::debug!("{}: changed while being read, reading again", at.path().display());
            continue;
        }
        // Changed within a timestamp tick of the read: writes during the
        // read may have left the times as they were (a file rewritten in
        // place while it is read would be recorded half old, half new).
        // Once the tick is over, the file must still have those times and
        // read the same.
        if changed_within_a_tick_of(&after, started) {
            std::thread::sleep(TIMESTAMP_TICK);
            if !reads_the_same(&mut f, &after, &chunks)? {
                tracing::debug!("{}: changed while being read, reading again", at.path().display());
                continue;
            }
        }
        // A future mtime is not racy: a later write would set an earlier one.
        let age = Timestamp::now().secs - after.mtime.secs;
        let racy = (0..RACY_WINDOW_SECS).contains(&age);
        return Ok(ReadOut { chunks, stat: after, racy, added_bytes: added });
    }
    Err(ReadError::Unstable)
}

/// Whether `stat`'s change time is no earlier than a timestamp tick
/// before `started`.
fn changed_within_a_tick_of(stat: &Stat, started: std::time::SystemTime) -> bool {
    let Ok(since_epoch) = started.duration_since(std::time::UNIX_EPOCH) else { return true };
    let from = since_epoch.saturating_sub(TIMESTAMP_TICK);
    let ctime = (stat.ctime.secs, stat.ctime.nanos);
    ctime >= (from.as_secs() as i64, from.subsec_nanos())
}

/// Whether `f` still has the times of `stat` and holds the bytes `chunks`
/// describe: read again from the start, chunked the same way, checked
/// against the same stat after.
fn reads_the_same(f: &mut File, stat: &Stat, chunks: &[ChunkRef]) -> Result<bool, ReadError> {
    use std::io::Seek;
    if fstat(f)? != *stat {
        return Ok(false);
    }
    f.rewind().map_err(ReadError::Io)?;
    let again = crate::chunk::chunk_file(f, stat.size, |_, _| Ok(())).map_err(ReadError::Io)?;
    Ok(again == chunks && fstat(f)? == *stat)
}

fn fstat(f: &File) -> Result<Stat, ReadError> {
    f.metadata().map(|md| super::stat_of(&md)).map_err(ReadError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn changed_at(t: SystemTime) -> Stat {
        Stat { ctime: Timestamp::from_system(t), ..Stat::default() }
    }

    #[test]
    fn only_a_change_within_a_tick_of_the_read_calls_for_a_second_read() {
        let started = SystemTime::now();
        assert!(changed_within_a_tick_of(&changed_at(started), started));
        // The coarse file clock lags: a write during the read may carry a
        // time just before the read started.
        assert!(changed_within_a_tick_of(&changed_at(started - Duration::from_millis(5)), started));
        assert!(changed_within_a_tick_of(&changed_at(started + Duration::from_millis(5)), started));
        assert!(!changed_within_a_tick_of(&changed_at(started - Duration::from_secs(1)), started));
    }

    #[test]
    fn a_file_rewritten_after_its_read_does_not_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 300_000]).unwrap();
        let out = read_stable(Loc::Root(&path), None).ok().expect("a quiet file reads");
        let mut f = File::open(&path).unwrap();
        assert!(reads_the_same(&mut f, &out.stat, &out.chunks).ok().unwrap());
        std::fs::write(&path, vec![2u8; 300_000]).unwrap();
        assert!(!reads_the_same(&mut f, &out.stat, &out.chunks).ok().unwrap());
    }
}
