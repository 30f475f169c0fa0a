//! Issue 8, items 14-16 (SPEC §5): a damaged state database or chunk store
//! never makes a node start over silently or stop syncing its live files.
//! Each test damages node a's state or store between runs, then checks
//! that a's next command succeeds and names the damage and `snapsync
//! verify --repair` (once), that a still syncs its live files, that
//! generation ids never go backwards, and that `verify --repair` makes
//! the newest generation hold what the live files hold.
//!
//! Issue 12, part 6 adds one file of a store damaged: a table file of the
//! state database, a table or blob file of the chunk store, each with one
//! flipped byte, truncated, or deleted. Damage that opening cannot see
//! (a flipped byte inside a block) shows when a block is read: that
//! command fails naming the store and the repair command, and the next
//! one recovers as above.

use std::path::{Path, PathBuf};

use crate::cluster::{Cluster, Setup};
use crate::common::{Tmpfs, snapshot, write};

const REPAIR: &str = "snapsync verify --repair";

/// Two nodes, b's daemon running; a has recorded three generations: a
/// file kept throughout, and one created, edited and deleted. Returns the
/// cluster and a's generation ids.
fn cluster_with_history() -> (Cluster, Vec<u64>) {
    let mut c = Cluster::with(Setup::nodes(2).backups(10));
    c.start("b");
    write(&c.path("a", "keep.txt"), b"kept since generation 1");
    write(&c.path("a", "d/old.txt"), b"only in the first generation");
    c.sync_ok("a");
    write(&c.path("a", "d/old.txt"), b"edited, in the second generation only");
    c.sync_ok("a");
    std::fs::remove_file(c.path("a", "d/old.txt")).unwrap();
    c.sync_ok("a");
    let ids = generation_ids(&c, "a");
    assert_eq!(ids.len(), 3, "{ids:?}");
    (c, ids)
}

fn generation_ids(c: &Cluster, name: &str) -> Vec<u64> {
    let (code, v) = c.json(name, &["generations"]);
    assert_eq!(code, 0, "generations on {name}: {v:#}");
    v["generations"].as_array().unwrap().iter().map(|g| g["id"].as_u64().unwrap()).collect()
}

/// Node a's state database directory.
fn db(c: &Cluster) -> PathBuf {
    c.node_state_dir("a").join("db")
}

/// Node a's chunk store (the one directory under the backup directory
/// whose name is a's and not a damaged copy).
fn chunk_store(c: &Cluster) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(c.root().join("backup"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("snapsync-a") && !n.contains(".damaged-")
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

/// The journal files of a fjall database.
fn journals(db: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no journal in {}", db.display());
    out
}

/// What node a must do after its state or store was damaged: the next
/// command succeeds and reports `damage` with the repair command, once;
/// live files still reach b; generations recorded after the damage get
/// ids above every earlier one; `verify --repair` succeeds and the newest
/// generation restores exactly the live tree. Returns the output of the
/// repair.
fn assert_recovers(c: &Cluster, before: &[u64], damage: &str) -> String {
    let first = c.run("a", &["check"]);
    assert_eq!(first.code, 0, "check after damage:\n{}", first.stderr);
    assert!(
        first.stderr.contains(damage) && first.stderr.contains(REPAIR),
        "check does not report {damage:?} with {REPAIR:?}:\n{}",
        first.stderr
    );
    assert_keeps_working(c, before)
}

/// For damage that opening cannot see (a table block or a chunk that
/// fails its checksum): `cmd`, the first command of a that reads it,
/// fails and names `damage`, the store and the repair command; from the
/// next command on, a recovers as [`assert_recovers`] says, reporting
/// `then`. Returns the output of the repair.
fn assert_recovers_after_read(c: &Cluster, before: &[u64], cmd: &[&str], damage: &str, then: &str) -> String {
    let hit = c.run("a", cmd);
    let said = format!("{}{}", hit.stdout, hit.stderr);
    assert_ne!(hit.code, 0, "{cmd:?} read the damage and succeeded:\n{said}");
    assert!(
        said.contains(damage) && said.contains(REPAIR),
        "{cmd:?} does not report {damage:?} with {REPAIR:?}:\n{said}"
    );
    assert_recovers(c, before, then)
}

/// The rest of [`assert_recovers`], once the damage was reported: it is
/// not reported again, live files reach b, generation ids go on
/// increasing, and `verify --repair` makes the newest generation the
/// live tree. Returns the output of the repair.
fn assert_keeps_working(c: &Cluster, before: &[u64]) -> String {
    let again = c.run("a", &["check"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(!again.stderr.contains(REPAIR), "the damage is reported more than once:\n{}", again.stderr);

    write(&c.path("a", "after.txt"), b"written after the damage");
    write(&c.path("a", "keep.txt"), b"kept, and edited after the damage");
    c.sync_ok("a");
    assert_eq!(std::fs::read(c.path("b", "after.txt")).unwrap(), b"written after the damage");
    assert_eq!(std::fs::read(c.path("b", "keep.txt")).unwrap(), b"kept, and edited after the damage");

    let ids = generation_ids(c, "a");
    let highest_before = *before.iter().max().unwrap();
    let new: Vec<u64> = ids.iter().copied().filter(|i| !before.contains(i)).collect();
    assert!(!new.is_empty(), "no generation recorded after the damage: {ids:?}");
    assert!(new.iter().all(|&i| i > highest_before), "generation ids went backwards: {before:?} then {ids:?}");

    let repair = c.run("a", &["verify", "--repair"]);
    assert_eq!(repair.code, 0, "verify --repair:\n{}\n{}", repair.stdout, repair.stderr);
    let newest = *generation_ids(c, "a").iter().max().unwrap();
    let to = c.root().join(format!("restored-{newest}"));
    let out = c.run("a", &["restore", "--generation", &newest.to_string(), "--to", to.to_str().unwrap()]);
    assert_eq!(out.code, 0, "restore of generation {newest}:\n{}", out.stderr);
    let live = c.tree("a");
    let restored = to.join(live.strip_prefix("/").unwrap());
    assert_eq!(snapshot(&restored), snapshot(&live), "generation {newest} does not hold the live tree");
    repair.stdout
}

/// Item 15: one flipped byte in the state journal made every command fail
/// with `JournalRecovery(ChecksumMismatch)`.
#[test]
fn state_journal_with_a_flipped_byte_is_moved_aside_and_rebuilt() {
    let (c, before) = cluster_with_history();
    let jnl = journals(&db(&c)).pop().unwrap();
    let mut bytes = std::fs::read(&jnl).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&jnl, bytes).unwrap();
    assert_recovers(&c, &before, "moved to");
    let state = c.node_state_dir("a");
    let aside = std::fs::read_dir(&state)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("db.damaged-"));
    assert_eq!(aside.count(), 1, "the damaged database is kept aside");
}

/// Item 14: a truncated journal made `check` start over at generation 1.
#[test]
fn state_journal_truncated_keeps_generation_ids_increasing() {
    let (c, before) = cluster_with_history();
    for jnl in journals(&db(&c)) {
        std::fs::OpenOptions::new().write(true).open(&jnl).unwrap().set_len(0).unwrap();
    }
    assert_recovers(&c, &before, "state database");
}

/// Item 14: a removed `db/` made `check` start over silently.
#[test]
fn state_database_removed_is_reported_and_ids_continue() {
    let (c, before) = cluster_with_history();
    std::fs::remove_dir_all(db(&c)).unwrap();
    assert_recovers(&c, &before, "is missing");
}

/// Item 14: a lost `meta` keyspace made a second chunk store, leaving
/// older chunks "missing".
#[test]
fn state_meta_keyspace_removed_keeps_the_chunk_store() {
    let (c, before) = cluster_with_history();
    let store = chunk_store(&c);
    // fjall numbers keyspaces in creation order after its own (0): the
    // state creates `meta` first.
    std::fs::remove_dir_all(db(&c).join("keyspaces").join("1")).unwrap();
    assert_recovers(&c, &before, "state database");
    assert_eq!(chunk_store(&c), store, "a second chunk store was made");
}

/// Item 14: a removed chunk store was noticed only by `verify`; the next
/// generations could not be restored.
#[test]
fn chunk_store_removed_is_rebuilt_from_live_files_and_losses_listed() {
    let (c, before) = cluster_with_history();
    std::fs::remove_dir_all(chunk_store(&c)).unwrap();
    let repair = assert_recovers(&c, &before, "chunk store");
    assert!(
        repair.contains("LOST generation") && repair.contains("old.txt"),
        "the repair does not list the lost content:\n{repair}"
    );
    assert!(!repair.contains("keep.txt\n"), "{repair}");
}

/// Item 14: a chunk store whose journal was truncated lost every chunk
/// while `check` said "unchanged".
#[test]
fn chunk_store_truncated_is_rebuilt_from_live_files() {
    let (c, before) = cluster_with_history();
    for jnl in journals(&chunk_store(&c)) {
        std::fs::OpenOptions::new().write(true).open(&jnl).unwrap().set_len(0).unwrap();
    }
    assert_recovers(&c, &before, "chunk store");
}

/// Item 15: damage to the backup chunk store alone stopped syncing.
#[test]
fn chunk_store_journal_with_a_flipped_byte_never_stops_syncing() {
    let (c, before) = cluster_with_history();
    let jnl = journals(&chunk_store(&c)).pop().unwrap();
    let mut bytes = std::fs::read(&jnl).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&jnl, bytes).unwrap();
    assert_recovers(&c, &before, "chunk store");
}

/// Item 16: after one "no space left" under the state, every later
/// command through the daemon failed with "FjallError: Poisoned" until the
/// daemon was restarted.
#[test]
fn daemon_recovers_after_its_state_disk_was_full() {
    let mut c = Cluster::new(2);
    let Some(fs) = Tmpfs::mount(&c.state("a"), "8m") else { return };
    c.start("a");
    c.start("b");
    write(&c.path("a", "first.txt"), b"before the disk filled");
    c.check("a");
    let filler = fs.fill();
    for i in 0..200 {
        write(&c.path("a", &format!("full/{i:03}-a-name-long-enough-to-need-space-in-the-journal")), b"x");
    }
    let full = c.run("a", &["check"]);
    assert_ne!(full.code, 0, "check on a full disk succeeded:\n{}", full.stderr);
    assert!(
        full.stderr.contains("No space left") || full.stderr.contains("no space"),
        "the first error does not say the disk is full:\n{}",
        full.stderr
    );
    std::fs::remove_file(filler).unwrap();
    let after = c.run("a", &["check"]);
    assert_eq!(after.code, 0, "check after space was freed:\n{}", after.stderr);
    assert!(!after.stderr.contains("Poisoned"), "{}", after.stderr);
    c.sync_ok("a");
    assert_eq!(std::fs::read(c.path("b", "full/199-a-name-long-enough-to-need-space-in-the-journal")).unwrap(), b"x");
    c.stop("a");
    c.stop("b");
}

/// Item 16, for the chunk store: a full backup disk poisoned the chunk
/// store, and every later check through the daemon failed.
#[test]
fn daemon_recovers_after_its_backup_disk_was_full() {
    let mut c = Cluster::with(Setup::nodes(2).backups(3));
    let backup = c.root().join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    let Some(fs) = Tmpfs::mount(&backup, "16m") else { return };
    c.start("a");
    c.start("b");
    write(&c.path("a", "first.txt"), b"before the disk filled");
    c.check("a");
    let filler = fs.fill();
    write(&c.path("a", "big.bin"), &crate::common::bytes(16, 2 << 20));
    let full = c.run("a", &["check"]);
    assert_ne!(full.code, 0, "check on a full backup disk succeeded:\n{}", full.stderr);
    assert!(full.stderr.contains("No space left"), "the first error does not say the disk is full:\n{}", full.stderr);
    std::fs::remove_file(filler).unwrap();
    let after = c.run("a", &["check"]);
    assert_eq!(after.code, 0, "check after space was freed:\n{}", after.stderr);
    c.sync_ok("a");
    assert_eq!(std::fs::read(c.path("b", "big.bin")).unwrap(), crate::common::bytes(16, 2 << 20));
    let v = c.run("a", &["verify"]);
    assert_eq!(v.code, 0, "verify after the full disk:\n{}{}", v.stdout, v.stderr);
    c.stop("a");
    c.stop("b");
}

/// Item 15: a fresh state built after damage must not overwrite edits
/// silently: a file edited on both hosts while a's state was lost is a
/// conflict, and each host keeps its own version until it is settled;
/// one edited only on b reaches a.
#[test]
fn fresh_state_after_damage_reports_concurrent_edits_as_conflicts() {
    let (c, _) = cluster_with_history();
    write(&c.path("a", "both.txt"), b"agreed");
    write(&c.path("a", "theirs.txt"), b"agreed");
    c.sync_ok("a");
    std::fs::remove_dir_all(db(&c)).unwrap();
    write(&c.path("a", "both.txt"), b"a's edit while its state was lost");
    write(&c.path("b", "both.txt"), b"b's edit");
    write(&c.path("b", "theirs.txt"), b"b's edit only");
    c.check("b");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");
    assert!(crate::cluster::any_conflict(&v), "{v:#}");
    assert_eq!(std::fs::read(c.path("a", "both.txt")).unwrap(), b"a's edit while its state was lost");
    assert_eq!(std::fs::read(c.path("b", "both.txt")).unwrap(), b"b's edit");
    assert_eq!(std::fs::read(c.path("a", "theirs.txt")).unwrap(), b"b's edit only");
}

// Issue 12, part 6: one table or blob file of a store damaged. fjall keeps
// recent writes in its journal and memtables and writes *table* files
// (keys and small values, in checksummed blocks) when a memtable is
// flushed; a keyspace with key-value separation, as the chunk store's,
// writes large values to *blob* files beside them. The cluster below
// makes both with ordinary runs: enough entries that the state flushes
// when it closes, and more chunk bytes in one run than the chunk store's
// memtable holds.

/// Symbolic links, with long targets, that make the first run write more
/// state than the state flushes on close (`FLUSH_ON_CLOSE_BYTES`, 1 MiB):
/// a link's target is kept in its directory's record and in the tree
/// node, and links cost no content to send.
const LINKS: usize = 300;

/// The first version of `d/old.bin`: more than the chunk store's memtable
/// (`DB_MEMTABLE_BYTES`, 8 MiB), so its chunks are flushed into a blob
/// file. It is deleted in the third generation: no live file holds it.
fn old_content() -> Vec<u8> {
    crate::common::bytes(61, 9 << 20)
}

/// As [`cluster_with_history`], with the first generation large enough
/// that a's state and chunk store hold table files, and the chunk store
/// a blob file holding the first version of `d/old.bin`.
fn cluster_with_tables() -> (Cluster, Vec<u64>) {
    let mut c = Cluster::with(Setup::nodes(2).backups(10));
    c.start("b");
    for i in 0..LINKS {
        // Dangling, 3 KiB long and unlike each other. Links are never
        // read again by a later run (only a file changed within the
        // timestamp tick of a scan is), so the table the first run
        // flushed keeps holding their live records.
        let link = c.path("a", &format!("links/{:02}/{i:04}", i % 10));
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(format!("{i:04}/{}", "t".repeat(3 << 10)), link).unwrap();
    }
    write(&c.path("a", "keep.txt"), b"kept since generation 1");
    write(&c.path("a", "d/old.bin"), &old_content());
    c.sync_ok("a");
    write(&c.path("a", "d/old.bin"), b"edited, in the second generation only");
    c.sync_ok("a");
    std::fs::remove_file(c.path("a", "d/old.bin")).unwrap();
    c.sync_ok("a");
    let ids = generation_ids(&c, "a");
    assert_eq!(ids.len(), 3, "{ids:?}");
    (c, ids)
}

/// The newest file (highest number) of a keyspace's `tables` or `blobs`
/// directory: the one holding the latest flushed values.
fn newest(dir: &Path) -> PathBuf {
    let files = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    files
        .map(|e| e.unwrap().path())
        .max_by_key(|p| p.file_name().unwrap().to_str().unwrap().parse::<u64>().unwrap())
        .unwrap_or_else(|| panic!("no file in {}", dir.display()))
}

/// The newest table of a's directory records (the state's `dirs`
/// keyspace, fjall's third: after its own and `meta`).
fn state_table(c: &Cluster) -> PathBuf {
    newest(&db(c).join("keyspaces/2/tables"))
}

/// The newest table or (`kind` "blobs") blob file of a's chunk store
/// (its one keyspace, `chunks`, after fjall's own).
fn chunk_file(c: &Cluster, kind: &str) -> PathBuf {
    newest(&chunk_store(c).join("keyspaces/1").join(kind))
}

/// One of three damages done to a file, and its size before.
#[derive(Clone, Copy, Debug)]
enum Damage {
    FlippedByte,
    Truncated,
    Deleted,
}

fn damage(file: &Path, how: Damage) -> u64 {
    let size = std::fs::metadata(file).unwrap().len();
    match how {
        Damage::FlippedByte => {
            let mut bytes = std::fs::read(file).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x5a;
            std::fs::write(file, bytes).unwrap();
        }
        Damage::Truncated => std::fs::OpenOptions::new().write(true).open(file).unwrap().set_len(size / 2).unwrap(),
        Damage::Deleted => std::fs::remove_file(file).unwrap(),
    }
    eprintln!("{how:?}: {} ({size} bytes)", file.display());
    size
}

/// The repair lists the first version of `d/old.bin` as lost, and no
/// live file.
fn assert_lists_old_bin_lost(repair: &str) {
    assert!(
        repair.contains("LOST generation") && repair.contains("old.bin"),
        "the repair does not list the lost content:\n{repair}"
    );
    assert!(!repair.contains("keep.txt") && !repair.contains("links/"), "{repair}");
}

/// A flipped byte in a table of directory records is found by the first
/// check, which reads every record: it fails naming the database and the
/// repair command; the next check moves the database aside and builds a
/// fresh state.
#[test]
fn state_table_with_a_flipped_byte_is_found_by_the_next_read() {
    let (c, before) = cluster_with_tables();
    damage(&state_table(&c), Damage::FlippedByte);
    assert_recovers_after_read(&c, &before, &["check"], "state database", "moved to");
}

/// A truncated or deleted table of directory records: opening reads each
/// table's trailer and counts the tables the keyspace's version lists, so
/// the database cannot be opened; it is moved aside at once and a fresh
/// state built.
#[test]
fn state_table_truncated_is_moved_aside_on_open() {
    let (c, before) = cluster_with_tables();
    damage(&state_table(&c), Damage::Truncated);
    assert_recovers(&c, &before, "cannot be opened");
}

#[test]
fn state_table_deleted_is_moved_aside_on_open() {
    let (c, before) = cluster_with_tables();
    damage(&state_table(&c), Damage::Deleted);
    assert_recovers(&c, &before, "cannot be opened");
}

/// A flipped byte in the chunk store's table (its keys). Opening reads
/// the table's index and meta blocks and (a probe) its first data block,
/// so a flip there is found on open and the store moved aside at once; a
/// flip in a later block is found by the first command that reads it
/// (`verify` reads every key), which fails naming the chunk store and the
/// repair command, and the next command moves the store aside. Which
/// block the middle of the table falls in depends on how many chunks the
/// flush took; each way is checked in full. Before
/// the fix, every later command failed with the checksum error and no
/// repair command, `verify --repair` included.
#[test]
fn chunk_table_with_a_flipped_byte_is_moved_aside() {
    let (c, before) = cluster_with_tables();
    damage(&chunk_file(&c, "tables"), Damage::FlippedByte);
    let hit = c.run("a", &["verify"]);
    assert_ne!(hit.code, 0, "verify of a damaged chunk store succeeded:\n{}{}", hit.stdout, hit.stderr);
    assert!(hit.stderr.contains("chunk store") && hit.stderr.contains(REPAIR), "{}", hit.stderr);
    let repair = if hit.stderr.contains("moved to") {
        assert_keeps_working(&c, &before)
    } else {
        assert_recovers(&c, &before, "found damaged while reading")
    };
    assert_lists_old_bin_lost(&repair);
}

/// A truncated or deleted table or blob file of the chunk store: opening
/// reads every file's trailer and counts the files its version lists, so
/// the store cannot be opened; it is moved aside at once, a new one takes
/// the live files, and the repair lists the first `d/old.bin` as lost.
fn assert_chunk_file_damage_found_on_open(kind: &str, how: Damage) {
    let (c, before) = cluster_with_tables();
    damage(&chunk_file(&c, kind), how);
    let repair = assert_recovers(&c, &before, "chunk store");
    assert_lists_old_bin_lost(&repair);
}

#[test]
fn chunk_table_truncated_is_moved_aside_on_open() {
    assert_chunk_file_damage_found_on_open("tables", Damage::Truncated);
}

#[test]
fn chunk_table_deleted_is_moved_aside_on_open() {
    assert_chunk_file_damage_found_on_open("tables", Damage::Deleted);
}

#[test]
fn chunk_blob_file_truncated_is_moved_aside_on_open() {
    assert_chunk_file_damage_found_on_open("blobs", Damage::Truncated);
}

#[test]
fn chunk_blob_file_deleted_is_moved_aside_on_open() {
    assert_chunk_file_damage_found_on_open("blobs", Damage::Deleted);
}

/// A flipped byte in a blob file damages one chunk's value: only what
/// reads that chunk sees it. `verify` names the chunk and the repair
/// command; the store is kept (the other chunks are whole), and the
/// repair drops that chunk and lists the one generation path that held
/// it, the first `d/old.bin`.
#[test]
fn chunk_blob_with_a_flipped_byte_loses_one_chunk() {
    let (c, before) = cluster_with_tables();
    damage(&chunk_file(&c, "blobs"), Damage::FlippedByte);
    let store = chunk_store(&c);
    let v = c.run("a", &["verify"]);
    assert_eq!(v.code, 1, "verify of a damaged chunk:\n{}{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("MISMATCH chunk") && v.stdout.contains(REPAIR), "{}", v.stdout);
    let repair = assert_keeps_working(&c, &before);
    assert!(repair.contains("dropped 1 damaged chunks"), "{repair}");
    assert_lists_old_bin_lost(&repair);
    assert!(!repair.contains("generation 2"), "only the first version held the chunk:\n{repair}");
    assert_eq!(chunk_store(&c), store, "the store was replaced for one damaged chunk");
}

/// The same damage met by a sync: b holds a file with the content of the
/// first `d/old.bin`, so a finds every chunk of it in its store and
/// fetches none. Before the fix the damaged chunk stayed listed, no pass
/// fetched it, and a never placed the file; now the pass that meets it
/// names the damage and drops the chunk, and the next pass of the same
/// sync fetches it from b.
#[test]
fn chunk_blob_with_a_flipped_byte_is_fetched_again_from_the_peer() {
    let (c, before) = cluster_with_tables();
    damage(&chunk_file(&c, "blobs"), Damage::FlippedByte);
    write(&c.path("b", "back.bin"), &old_content());
    c.check("b");
    let sync = c.run("a", &["sync"]);
    assert_eq!(sync.code, 0, "{}{}", sync.stdout, sync.stderr);
    assert!(
        sync.stderr.contains("back.bin") && sync.stderr.contains("is damaged: chunk") && sync.stderr.contains(REPAIR),
        "the damaged chunk is not reported:\n{}",
        sync.stderr
    );
    assert_eq!(std::fs::read(c.path("a", "back.bin")).unwrap(), old_content());
    let repair = assert_keeps_working(&c, &before);
    assert!(!repair.contains("LOST"), "the chunk fetched again made the first generation whole:\n{repair}");
}

/// A daemon holds its state open for every command and session: damage a
/// read finds there cannot be moved aside under it, and every later
/// command and peer session failed on the same block until the daemon
/// was restarted. Now the daemon stops once a read flagged the damage and
/// starts itself again in place (the same process): that open moves the
/// damaged database aside and rebuilds it, and the node serves b again
/// with no supervisor and no operator.
#[test]
fn daemon_restarts_itself_when_a_read_finds_its_state_damaged() {
    let (mut c, before) = cluster_with_tables();
    damage(&state_table(&c), Damage::FlippedByte);
    c.start("a");
    let pid = c.daemon_pid("a");
    let hit = c.run("a", &["check"]);
    assert_ne!(hit.code, 0, "check through the daemon read the damage and succeeded:\n{}", hit.stderr);
    assert!(hit.stderr.contains("state database") && hit.stderr.contains(REPAIR), "{}", hit.stderr);
    c.wait_for_log("a", "started: a serving", 2, crate::cluster::EXIT_TIMEOUT);
    let log = c.log("a");
    assert!(log.contains("the daemon stopped") && log.contains("moved to") && log.contains(REPAIR), "{log}");
    assert_eq!(c.daemon_pid("a"), pid);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "a's daemon is gone:\n{log}");
    write(&c.path("b", "from-b.txt"), b"served by a's daemon again");
    c.sync_ok("b");
    assert_eq!(std::fs::read(c.path("a", "from-b.txt")).unwrap(), b"served by a's daemon again");
    assert_keeps_working(&c, &before);
    c.stop("a");
}
