//! Reading one file consistently.
//!
//! A file that is being written while it is read must never be recorded
//! half-read (SPEC §4.14). The file is opened without following links,
//! `fstat`ed before and after its bytes are chunked, and the read counts
//! only if both agree (size, mtime, ctime, inode). The kernel takes file
//! times from a clock that advances once per tick (a jiffy, 1-10 ms), so
//! writes within the tick of the last change leave them as they were: a
//! file last changed in the tick the read started in (by the same clock,
//! `CLOCK_REALTIME_COARSE`) is read a second time once that tick is over,
//! and counts only if it reads the same. Otherwise it is tried again a few
//! times and then skipped until the next run.

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
        let started = coarse_now();
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
        // Changed in the tick the read started in: writes during the read
        // may have left the times as they were (a file rewritten in place
        // while it is read would be recorded half old, half new). Once the
        // tick is over, the file must still have those times and read the
        // same.
        if let Some(tick) = last_tick_of(&after, started) {
            wait_past(tick);
            if !reads_the_same(&mut f, &after, &chunks)? {
                tracing::debug!("{}: changed while being read, reading again", at.path().display());
                continue;
            }
        }
        let racy = recent(after.mtime);
        return Ok(ReadOut { chunks, stat: after, racy, added_bytes: added });
    }
    Err(ReadError::Unstable)
}

/// Whether a file time `t` is so close to now that a change in the same
/// clock tick could have left it as it is: a stat cache taken now cannot
/// be trusted. A time in the future is not recent: a later change would
/// set an earlier one.
pub(super) fn recent(t: Timestamp) -> bool {
    (0..RACY_WINDOW_SECS).contains(&(Timestamp::now().secs - t.secs))
}

/// The longest tick of the coarse clock (a jiffy at 100 Hz), with margin.
const MAX_TICK: std::time::Duration = std::time::Duration::from_millis(12);

/// The kernel's coarse clock, which file times are taken from.
fn coarse_now() -> Timestamp {
    // SAFETY: an all-zero timespec is a valid value of a plain C struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is writable; CLOCK_REALTIME_COARSE always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    Timestamp { secs: ts.tv_sec, nanos: ts.tv_nsec as u32 }
}

/// When `stat` was changed in the tick of the coarse clock a read began
/// in (`started`) or later, the time the clock must pass before the file
/// reads as it will stay: its change time. A change time of a whole second
/// (a filesystem that keeps seconds only) counts as the whole second.
fn last_tick_of(stat: &Stat, started: Timestamp) -> Option<Timestamp> {
    let (changed, started) = if stat.ctime.nanos == 0 {
        (Timestamp { secs: stat.ctime.secs, nanos: 999_999_999 }, Timestamp { secs: started.secs, nanos: 0 })
    } else {
        (stat.ctime, started)
    };
    ((changed.secs, changed.nanos) >= (started.secs, started.nanos)).then_some(changed)
}

/// Sleeps until the coarse clock is past `t`: a tick or two (1-10 ms), or
/// up to a second for a filesystem that keeps seconds only. A clock set
/// back behind the file's time (a daemon under a faked clock, a clock
/// stepped back) is waited for no longer than the longest tick, 10 ms, or
/// that second.
fn wait_past(t: Timestamp) {
    let most = if t.nanos == 999_999_999 { std::time::Duration::from_millis(1010) } else { MAX_TICK };
    let until = std::time::Instant::now() + most;
    loop {
        let now = coarse_now();
        if (now.secs, now.nanos) > (t.secs, t.nanos) || std::time::Instant::now() >= until {
            return;
        }
        // The clock's resolution is one tick: a millisecond wakes soon
        // after it moves without spinning.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
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

    fn changed_at(secs: i64, nanos: u32) -> Stat {
        Stat { ctime: Timestamp { secs, nanos }, ..Stat::default() }
    }

    #[test]
    fn only_a_change_in_the_tick_of_the_read_calls_for_a_second_read() {
        let started = Timestamp { secs: 100, nanos: 4_000_000 };
        let same_tick = changed_at(100, 4_000_000);
        assert_eq!(last_tick_of(&same_tick, started), Some(same_tick.ctime));
        // A fine-grained time (kernels since 6.13 give one to a file whose
        // times were just looked at) can be later than the coarse clock.
        assert!(last_tick_of(&changed_at(100, 5_500_000), started).is_some());
        // Any write in the tick the read started in would have moved it.
        assert_eq!(last_tick_of(&changed_at(100, 1), started), None);
        assert_eq!(last_tick_of(&changed_at(99, 999_999_999), started), None);
        // Whole seconds only: the whole second is the tick.
        assert_eq!(last_tick_of(&changed_at(100, 0), started), Some(Timestamp { secs: 100, nanos: 999_999_999 }));
        assert_eq!(last_tick_of(&changed_at(99, 0), started), None);
    }

    #[test]
    fn waiting_past_a_tick_ends_once_the_coarse_clock_moves_on() {
        let now = coarse_now();
        wait_past(now);
        let later = coarse_now();
        assert!((later.secs, later.nanos) > (now.secs, now.nanos));
        // A file time ahead of the clock (the clock was set back) is not
        // waited for.
        let started = std::time::Instant::now();
        wait_past(Timestamp { secs: now.secs + 3600, nanos: 1 });
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "{:?}", started.elapsed());
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
