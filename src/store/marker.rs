//! The state marker: what must outlive a damaged state database.
//!
//! Terms:
//! - The *marker* is a small text file, `STATE/marker`, kept beside the
//!   fjall database rather than in it. It names the state's *store id*
//!   (random, made once), the highest version counter (`seq`) and the next
//!   generation id the node has handed out or is about to, and the name of
//!   the node's chunk store in each backup directory.
//! - The marker also keeps the counters the database held, committed and
//!   synced, when the marker was written (`settled-seq`,
//!   `settled-next-generation`).
//! - A state is *behind its marker* when its counters are lower than the
//!   marker's. When they are still at least the settled ones, only the
//!   commit the marker announced last is missing: the process stopped
//!   between writing the marker and committing (a kill or power cut), the
//!   commit was never acknowledged, and nothing is lost. Lower than the
//!   settled counters, commits that were acknowledged are gone (a
//!   truncated or damaged journal): that is damage.
//!
//! Why outside fjall: a truncated or corrupt journal, a removed `db/`, or a
//! lost `meta` keyspace would otherwise make the node start over at
//! version 1 and generation 1, reusing ids peers and backups already hold
//! for other content (issue 8, item 14). The marker is written durably
//! (temporary file, fsync, rename, fsync of the directory) *before* the
//! commit that raises a counter, so whatever happens to the database, no
//! id it ever held is handed out again.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StoreError;

/// The marker's file name in the state directory.
pub(crate) const MARKER_FILE: &str = "marker";
const MAGIC: &str = "snapsync-state-marker 1";

/// The marker's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The state's store id (hex).
    pub store_id: String,
    /// No version counter above this was handed out.
    pub seq: u64,
    /// No generation id at or above this was handed out.
    pub next_generation: u64,
    /// The version counter the database held, committed, when the marker
    /// was written.
    pub settled_seq: u64,
    /// The next generation id the database held, committed, when the
    /// marker was written.
    pub settled_next_generation: u64,
    /// The chunk store name in each backup directory.
    pub chunk_stores: Vec<(PathBuf, String)>,
}

impl Marker {
    /// A marker for a new state, with a fresh store id.
    pub fn new() -> Result<Marker, StoreError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| StoreError::io(Path::new(MARKER_FILE), std::io::Error::other(e.to_string())))?;
        Ok(Marker {
            store_id: hex(&id),
            seq: 0,
            next_generation: 1,
            settled_seq: 0,
            settled_next_generation: 1,
            chunk_stores: Vec::new(),
        })
    }

    /// Whether a database holding counters `seq` and `next_generation`
    /// lost commits that were acknowledged: it is below the counters the
    /// database held when the marker was last written. Missing only the
    /// commit the marker announced is an interrupted commit, not a loss.
    pub fn lost_commits(&self, seq: u64, next_generation: u64) -> bool {
        seq < self.settled_seq || next_generation < self.settled_next_generation
    }

    /// The chunk store name recorded for backup directory `dir`.
    pub fn chunk_store(&self, dir: &Path) -> Option<&str> {
        self.chunk_stores.iter().find(|(d, _)| d == dir).map(|(_, n)| n.as_str())
    }

    /// Reads the marker of state directory `dir`: `Ok(None)` when there is
    /// none, an error naming the file when it does not parse.
    pub fn read(dir: &Path) -> Result<Option<Marker>, StoreError> {
        let path = dir.join(MARKER_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        parse(&text).map(Some).ok_or_else(|| StoreError::Corrupt {
            path: path.clone(),
            what: "state marker".into(),
            why: "does not parse".into(),
        })
    }

    /// Writes the marker durably into state directory `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let mut text = format!(
            "{MAGIC}\nstore-id {}\nseq {}\nnext-generation {}\nsettled-seq {}\nsettled-next-generation {}\n",
            self.store_id, self.seq, self.next_generation, self.settled_seq, self.settled_next_generation
        );
        for (d, n) in &self.chunk_stores {
            text.push_str(&format!("chunk-store {} {}\n", hex(d.as_os_str().as_bytes()), n));
        }
        let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
        let path = dir.join(MARKER_FILE);
        // The state directory is private and locked by us: the temporary
        // name is ours to replace.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
        drop(f);
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            // A full disk: leave no temporary behind.
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::io(&path, e));
        }
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn parse(text: &str) -> Option<Marker> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let mut m = Marker::default();
    let mut seen_id = false;
    // A marker written before the settled counters were kept: every
    // counter it announced counts as settled, so a database behind it is
    // reported as before.
    let (mut settled_seq, mut settled_next) = (None, None);
    for line in lines {
        let (key, rest) = line.split_once(' ')?;
        match key {
            "store-id" => {
                m.store_id = rest.to_owned();
                seen_id = true;
            }
            "seq" => m.seq = rest.parse().ok()?,
            "next-generation" => m.next_generation = rest.parse().ok()?,
            "settled-seq" => settled_seq = Some(rest.parse().ok()?),
            "settled-next-generation" => settled_next = Some(rest.parse().ok()?),
            "chunk-store" => {
                let (d, n) = rest.split_once(' ')?;
                let d = PathBuf::from(std::ffi::OsStr::from_bytes(&unhex(d)?));
                m.chunk_stores.push((d, n.to_owned()));
            }
            _ => return None,
        }
    }
    m.settled_seq = settled_seq.unwrap_or(m.seq);
    m.settled_next_generation = settled_next.unwrap_or(m.next_generation);
    seen_id.then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Marker::new().unwrap();
        m.seq = 42;
        m.next_generation = 7;
        m.chunk_stores.push((PathBuf::from("/backup dir/x"), "snapsync-h-00ff".into()));
        m.write(dir.path()).unwrap();
        assert_eq!(Marker::read(dir.path()).unwrap(), Some(m.clone()));
        m.seq = 43;
        m.settled_seq = 42;
        m.settled_next_generation = 6;
        m.write(dir.path()).unwrap();
        assert_eq!(Marker::read(dir.path()).unwrap(), Some(m));
    }

    #[test]
    fn a_marker_without_settled_counters_counts_all_as_settled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARKER_FILE), format!("{MAGIC}\nstore-id ab\nseq 9\nnext-generation 4\n"))
            .unwrap();
        let m = Marker::read(dir.path()).unwrap().unwrap();
        assert_eq!((m.settled_seq, m.settled_next_generation), (9, 4));
        assert!(m.lost_commits(8, 4) && m.lost_commits(9, 3) && !m.lost_commits(9, 4));
    }

    #[test]
    fn damaged_marker_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARKER_FILE), "garbage").unwrap();
        assert!(matches!(Marker::read(dir.path()), Err(StoreError::Corrupt { .. })));
        assert_eq!(Marker::read(tempfile::tempdir().unwrap().path()).unwrap(), None);
    }
}
