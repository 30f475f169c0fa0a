//! Watch mode (`serve --watch`): local changes reach the peers as they
//! happen, without waiting for the next `sync` from cron.
//!
//! Terms:
//! - The *watcher* holds one inotify watch per directory of the included
//!   trees (excluded directories are not watched), added as directories
//!   appear. Its events name the paths that changed.
//! - A *pending* path changed and is not checked yet. It is *held* while
//!   a writer may still have it open: from its creation or its first
//!   written byte until the writer closes it (inotify's `IN_CLOSE_WRITE`),
//!   or [`HELD_QUIET`] without any event. A pending path that is neither
//!   held nor above a held one is *ready*.
//! - A *watch run* checks the ready paths only (`sync` limited to them)
//!   and reconciles with every reachable peer. Ready paths wait for the
//!   *quiet*, a spell without events that make a path ready, but no
//!   longer than [`MAX_DELAY`] after the first of them. The quiet is
//!   [`QUICK`] when the tree was idle, so a lone change (a file written
//!   and closed, a rename, a delete, a `mkdir`) starts its run a few
//!   milliseconds after its last event. Events that come while a run
//!   works are taken by the next run, which batches a burst (a release
//!   unpacked); every run that ends with more events already in makes the
//!   quiet [`QUIET_GROWTH`] times longer, up to [`QUIET`], and it is back
//!   to [`QUICK`] once no event came for [`QUIET`]. So a burst moves in a
//!   few runs, not one per file. A file still being written is never
//!   read, so a peer never gets half of it.
//! - A *full reconcile* (a `sync` of every tree) runs when the watcher
//!   starts, every `--full-every` seconds as a safety net, and after the
//!   kernel dropped events (queue overflow). When the watch limit of the
//!   kernel (`fs.inotify.max_user_watches`) is reached, the watcher says
//!   so, lets go of its watches and falls back to full reconciles at
//!   least every [`FALLBACK_EVERY`].
//!
//! While the watcher is healthy it tells the node which groups nothing
//! touched since their last check ([`crate::node::Watched`]), so a `sync`
//! from cron answers without walking them.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode};
use notify::{INotifyWatcher, RecursiveMode, Watcher as _};

use super::Current;
use crate::config::Class;
use crate::interrupt::Interrupt;
use crate::peer::{Node, SyncOptions, SyncReport};

/// How long ready paths wait for the events to stop when the tree was
/// idle. The events of one operation (a rename's two halves, an editor's
/// close and the rename of its temporary over the file, a `mkdir` and the
/// first files put in it) come from the writer's consecutive system calls,
/// microseconds apart, and reach this thread together through notify's;
/// 2 ms is well above that while small beside the run itself (tens of
/// ms). A writer that pauses longer (put off the CPU on a busy host) only
/// splits its burst: what comes during the run is taken by the next, and
/// the quiet grows ([`QUIET_GROWTH`]).
pub const QUICK: Duration = Duration::from_millis(2);

/// The shortest quiet of a run of more than [`FEW`] paths. The scan reads
/// a file changed in the tick of the kernel's file-time clock its read
/// started in (a jiffy, up to 10 ms) a second time once that tick is over
/// (`scan::read`), a pause per file: a run of many files just written
/// waits once here instead, so that they are past their tick when read.
/// A run of a few paths starts after [`QUICK`]: its pauses in the scan
/// cost no more than waiting here.
pub const SETTLE: Duration = Duration::from_millis(12);

/// Up to this many paths a run waits for the quiet alone; more wait at
/// least [`SETTLE`].
pub const FEW: usize = 4;

/// How many times longer the quiet gets after a run that ended with more
/// events already in: a burst reaches [`QUIET`] in four runs
/// (2, 8, 32, 128, 300 ms).
pub const QUIET_GROWTH: u32 = 4;

/// The longest quiet: what ready paths wait for while a burst goes on.
pub const QUIET: Duration = Duration::from_millis(300);

/// The longest a ready path waits while events keep coming.
pub const MAX_DELAY: Duration = Duration::from_millis(1500);

/// How long a held path stays held without any event: a writer that keeps
/// a file open and idle this long is taken to be done with it.
pub const HELD_QUIET: Duration = Duration::from_secs(10);

/// The longest between two full reconciles once the watch limit is
/// reached.
pub const FALLBACK_EVERY: Duration = Duration::from_secs(60);

/// The longest a due full reconcile waits for files being written.
pub const FULL_DEFER: Duration = Duration::from_secs(60);

/// The default interval of the full reconcile (`serve --full-every`).
pub const FULL_EVERY: Duration = Duration::from_secs(600);

/// The longest the watcher waits for events before it looks again at the
/// stop flag and the configuration. Not a delay of any change: an event
/// wakes it at once, and it wakes when ready paths are due.
const POLL: Duration = Duration::from_millis(50);

/// Test knob: at most this many directories are watched, as if the
/// kernel's limit were reached there.
pub const LIMIT_ENV: &str = "SNAPSYNC_WATCH_LIMIT";

/// How the watcher runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The interval of the full reconcile.
    pub full_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { full_every: FULL_EVERY }
    }
}

/// The running watcher, as the daemon holds it.
pub struct Handle {
    stop: Arc<AtomicBool>,
    interrupt: Interrupt,
    /// Closed when the watcher's thread ends.
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Handle {
    /// Stops the watcher: it starts no further run, and the run it is in
    /// stops at its next safe point. Waits for that, at most `limit`;
    /// false if it timed out.
    pub async fn stop(mut self, limit: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        self.interrupt.raise();
        match self.ended.take() {
            Some(ended) => tokio::time::timeout(limit, ended).await.is_ok(),
            None => true,
        }
    }
}

/// Watches the included trees of `current`'s node, and returns once the
/// watches are in place (changes made after that are seen).
pub async fn start(current: Arc<Current>, opts: Options) -> Handle {
    let stop = Arc::new(AtomicBool::new(false));
    let interrupt = Interrupt::new();
    let rt = tokio::runtime::Handle::current();
    let (armed_tx, armed_rx) = tokio::sync::oneshot::channel();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopped, interrupted) = (Arc::clone(&stop), interrupt.clone());
    let spawned = std::thread::Builder::new().name("watch".into()).spawn(move || {
        // Dropped when the thread ends, however it ends.
        let _ended = ended_tx;
        let mut w = Watch::new(current, opts, rt, stopped, interrupted);
        w.arm();
        let _ = armed_tx.send(());
        w.run();
    });
    let ended = match spawned {
        Ok(_) => {
            let _ = armed_rx.await;
            Some(ended_rx)
        }
        Err(e) => {
            tracing::error!("cannot start the watcher ({e}): changes move at the next `sync` only");
            None
        }
    };
    Handle { stop, interrupt, ended }
}

/// Whether an event of the watcher may be a change to what `node`
/// tracks: not a mere open or read, nor about the temporaries snapsync
/// writes files in, nor about excluded paths only.
fn may_change(node: &Node, ev: &notify::Result<notify::Event>) -> bool {
    let Ok(ev) = ev else { return true };
    if ev.need_rescan() {
        return true;
    }
    if matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) {
        return false;
    }
    ev.paths.iter().any(|p| !is_temp(p) && !groups_of(node, p).is_empty())
}

/// Whether `path` is a temporary snapsync builds a file in.
fn is_temp(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(crate::scan::TEMP_PREFIX))
}

/// The groups of `node` that track `path` (inside one of their roots, not
/// excluded).
fn groups_of(node: &Node, path: &Path) -> Vec<String> {
    node.engine
        .groups
        .iter()
        .filter(|g| g.roots.iter().any(|r| path.starts_with(&r.local)) && g.matcher.classify(path) != Class::Excluded)
        .map(|g| g.name.clone())
        .collect()
}

/// When ready paths are due: the quiet they wait for, longer while a burst
/// goes on, and back to [`QUICK`] when the tree was idle.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// The last event that left a path ready.
    last: Instant,
    /// The quiet ready paths wait for now: [`QUICK`] to [`QUIET`].
    quiet: Duration,
}

impl Pace {
    fn new(now: Instant) -> Pace {
        Pace { last: now, quiet: QUICK }
    }

    /// An event left a path ready at `now`; after `QUIET` without one it
    /// starts a new burst.
    fn event(&mut self, now: Instant) {
        if now.duration_since(self.last) >= QUIET {
            self.quiet = QUICK;
        }
        self.last = now;
    }

    /// A run that started at `started` is over, and the events that came
    /// meanwhile are taken in: if there were any, the burst goes on, and
    /// the next run waits for a longer quiet.
    fn run_over(&mut self, started: Instant) {
        if self.last >= started {
            self.quiet = (self.quiet * QUIET_GROWTH).min(QUIET);
        }
    }

    /// When `ready` paths, the first of them seen at `oldest`, are due.
    fn due(&self, ready: usize, oldest: Instant) -> Instant {
        let quiet = if ready > FEW { self.quiet.max(SETTLE) } else { self.quiet };
        (self.last + quiet).min(oldest + MAX_DELAY)
    }

    /// Whether no event came for the longest quiet.
    fn settled(&self, now: Instant) -> bool {
        now.duration_since(self.last) >= QUIET
    }
}

/// A path changed and not checked yet.
#[derive(Debug, Clone, Copy)]
struct Change {
    /// A writer may still have it open.
    held: bool,
    /// When it was first seen changed.
    since: Instant,
    /// Its last event.
    last: Instant,
}

/// Why watches could not be added.
enum ArmError {
    /// The watch limit is reached at this directory.
    Limit(PathBuf),
}

type Events = mpsc::Receiver<notify::Result<notify::Event>>;

struct Watch {
    current: Arc<Current>,
    /// The node as configured now.
    node: Arc<Node>,
    /// The node the watches were made for.
    armed: Arc<Node>,
    opts: Options,
    rt: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    /// Raised with `stop`: stops the run in progress.
    interrupt: Interrupt,
    watcher: Option<(INotifyWatcher, Events)>,
    /// Directories (and file roots) watched.
    watched: HashSet<PathBuf>,
    /// At most this many watches ([`LIMIT_ENV`]).
    limit: Option<usize>,
    pending: BTreeMap<PathBuf, Change>,
    /// Events taken in that may be a change ([`may_change`]): the mark of
    /// the next watch run.
    taken: u64,
    pace: Pace,
    next_full: Instant,
    /// Events were lost: the next run is a full reconcile.
    lost: bool,
    /// The watch limit was reached: full reconciles only.
    fallback: bool,
}

impl Watch {
    fn new(
        current: Arc<Current>,
        opts: Options,
        rt: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
        interrupt: Interrupt,
    ) -> Watch {
        let node = current.node();
        let limit = std::env::var(LIMIT_ENV).ok().and_then(|v| v.parse().ok());
        Watch {
            current,
            armed: Arc::clone(&node),
            node,
            opts,
            rt,
            stop,
            interrupt,
            watcher: None,
            watched: HashSet::new(),
            limit,
            pending: BTreeMap::new(),
            taken: 0,
            pace: Pace::new(Instant::now()),
            next_full: Instant::now(),
            lost: false,
            fallback: false,
        }
    }

    /// Watches every directory of the node's included trees; on the watch
    /// limit, falls back to periodic full reconciles.
    fn arm(&mut self) {
        self.node.watched.set_healthy(false);
        self.watcher = None;
        // The events the old watcher had counted and not sent are gone.
        self.taken = self.node.watched.mark();
        self.watched.clear();
        self.fallback = false;
        let (tx, rx) = mpsc::channel();
        // Counted as they arrive: a `sync` asking while they wait to be
        // taken in must not find the tree clean.
        // Both sides count with the node the watches are made for.
        let armed = Arc::clone(&self.node);
        self.armed = Arc::clone(&self.node);
        let handler = move |ev: notify::Result<notify::Event>| {
            if may_change(&armed, &ev) {
                armed.watched.touch();
            }
            let _ = tx.send(ev);
        };
        let watcher = match INotifyWatcher::new(handler, notify::Config::default()) {
            Ok(w) => w,
            Err(e) => {
                // EMFILE here is the per-user limit of inotify instances.
                let hint = match &e.kind {
                    notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
                        "; raise it with `sysctl fs.inotify.max_user_instances=N`"
                    }
                    _ => "",
                };
                self.give_up(&format!("cannot start inotify ({e}){hint}"));
                return;
            }
        };
        self.watcher = Some((watcher, rx));
        let roots: Vec<PathBuf> =
            self.node.engine.groups.iter().flat_map(|g| g.roots.iter().map(|r| r.local.clone())).collect();
        let started = Instant::now();
        for root in roots {
            if let Err(ArmError::Limit(dir)) = self.add_tree(&root) {
                self.limit_reached(&dir);
                return;
            }
        }
        tracing::info!(
            target: "snapsync::daemon",
            "watching {} directories of the included trees ({:.2} s)",
            self.watched.len(),
            started.elapsed().as_secs_f64()
        );
        self.node.watched.set_healthy(true);
        self.next_full = Instant::now();
    }

    fn limit_reached(&mut self, dir: &Path) {
        self.give_up(&format!(
            "the inotify watch limit is reached at {} ({} directories watched); raise it with \
             `sysctl fs.inotify.max_user_watches=N` (and in /etc/sysctl.d/ to keep it)",
            dir.display(),
            self.watched.len()
        ));
    }

    /// Stops watching, for good: full reconciles only.
    fn give_up(&mut self, why: &str) {
        let every = self.opts.full_every.min(FALLBACK_EVERY);
        tracing::error!(
            target: "snapsync::daemon",
            "{why}: watching stopped, falling back to a full reconcile every {} s",
            every.as_secs()
        );
        self.watcher = None;
        self.watched.clear();
        self.pending.clear();
        self.fallback = true;
        self.node.watched.set_healthy(false);
        self.next_full = Instant::now();
    }

    /// Watches `top` and every directory below it that some group does
    /// not exclude.
    ///
    /// A local user may swap a directory of the tree for a symlink at any
    /// moment, and inotify follows links in the path it is given. So each
    /// directory is opened beneath its include root (no link followed),
    /// listed through that descriptor, and its watch kept only if the path
    /// still names the directory opened once the watch is in place: a
    /// link cannot lead the watcher into, or through, trees outside.
    fn add_tree(&mut self, top: &Path) -> Result<(), ArmError> {
        let mut stack = vec![top.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if self.watched.contains(&dir) {
                continue;
            }
            let Some(opened) = self.open_beneath_root(&dir) else { continue };
            let Ok(ident) = opened.as_file().and_then(|f| f.metadata()).map(|m| (m.dev(), m.ino())) else {
                continue;
            };
            if self.limit.is_some_and(|l| self.watched.len() >= l) {
                return Err(ArmError::Limit(dir));
            }
            let Some((watcher, _)) = self.watcher.as_mut() else { return Ok(()) };
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {}
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => return Err(ArmError::Limit(dir)),
                // Gone already, or unreadable: the scan reports it.
                Err(e) => {
                    tracing::debug!("cannot watch {}: {e}", dir.display());
                    continue;
                }
            }
            let same = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == ident);
            if !same {
                // Swapped while the watch was placed: the next event or
                // full reconcile takes whatever is there now.
                let _ = watcher.unwatch(&dir);
                continue;
            }
            self.watched.insert(dir.clone());
            let Ok(names) = opened.names() else { continue };
            for name in names {
                if opened.entry_type(&name).is_ok_and(|t| t == Some(crate::fs::EntryType::Dir)) {
                    let path = dir.join(&name);
                    if !self.groups_of(&path).is_empty() {
                        stack.push(path);
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens directory `dir` from the include root it is in, following
    /// no symlink below the root; `None` when it is not a directory there
    /// (gone, replaced, or in no root).
    fn open_beneath_root(&self, dir: &Path) -> Option<crate::fs::Dir> {
        let root = self.node.engine.groups.iter().find_map(|g| g.root_of_local(dir))?;
        let rel = dir.strip_prefix(&root.local).ok()?;
        crate::fs::Dir::open_beneath(&root.local, rel).ok()
    }

    /// Forgets the watches of `dir` and below (moved away or removed).
    fn drop_tree(&mut self, dir: &Path) {
        let below: Vec<PathBuf> = self.watched.iter().filter(|p| p.starts_with(dir)).cloned().collect();
        for p in below {
            if let Some((watcher, _)) = self.watcher.as_mut() {
                let _ = watcher.unwatch(&p);
            }
            self.watched.remove(&p);
        }
    }

    /// The groups that track `path`, as the node is configured now.
    fn groups_of(&self, path: &Path) -> Vec<String> {
        groups_of(&self.node, path)
    }

    fn run(&mut self) {
        // When something may be due next: the receive waits no longer.
        let mut wake = Instant::now();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            self.receive(wake.saturating_duration_since(Instant::now()).min(POLL));
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            // A reloaded configuration may include other trees.
            if !Arc::ptr_eq(&self.current.node(), &self.node) {
                let node = self.current.node();
                let roots = |n: &Node| -> Vec<PathBuf> {
                    n.engine.groups.iter().flat_map(|g| g.roots.iter().map(|r| r.local.clone())).collect()
                };
                let rearm = roots(&node) != roots(&self.node);
                self.node = node;
                if rearm {
                    tracing::info!(target: "snapsync::daemon", "the included trees changed: watching them anew");
                    self.pending.clear();
                    self.arm();
                }
            }
            let now = Instant::now();
            let held_any = self.pending.values().any(|c| c.held && now.duration_since(c.last) < HELD_QUIET);
            // A full reconcile waits for files being written, but not
            // for ever (a log file appended to all day).
            let due = now >= self.next_full && (!held_any || self.fallback || now >= self.next_full + FULL_DEFER);
            // After lost events the whole tree is walked: that waits for
            // the longest quiet, as the burst that overflowed the queue
            // may go on.
            let settled = self.pace.settled(now);
            if due || self.lost && !held_any && settled {
                self.full();
                wake = Instant::now();
                continue;
            }
            wake = if now < self.next_full { self.next_full } else { self.next_full + FULL_DEFER };
            if self.lost {
                wake = wake.min(self.pace.last + QUIET);
            }
            if self.fallback {
                continue;
            }
            match self.ready(now) {
                Ok(paths) => {
                    self.partial(paths);
                    wake = Instant::now();
                }
                Err(Some(at)) => wake = wake.min(at),
                Err(None) => {}
            }
        }
    }

    /// Takes in the watcher's events for at most `wait`.
    fn receive(&mut self, wait: Duration) {
        let Some((_, rx)) = self.watcher.as_ref() else {
            std::thread::sleep(wait);
            return;
        };
        let mut got = Vec::new();
        match rx.recv_timeout(wait) {
            Ok(ev) => got.push(ev),
            Err(mpsc::RecvTimeoutError::Timeout) => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.give_up("the watcher stopped");
                return;
            }
        }
        got.extend(rx.try_iter());
        for ev in got {
            if may_change(&self.armed, &ev) {
                self.taken += 1;
            }
            match ev {
                Ok(ev) => self.note(ev),
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                    let dir = e.paths.first().cloned().unwrap_or_default();
                    self.limit_reached(&dir);
                    return;
                }
                Err(e) => {
                    tracing::warn!(target: "snapsync::daemon", "watcher: {e}; a full reconcile follows");
                    self.events_lost();
                }
            }
        }
    }

    fn events_lost(&mut self) {
        self.lost = true;
        for g in &self.node.engine.groups {
            self.node.watched.dirty(&g.name);
        }
    }

    /// Takes in one event.
    fn note(&mut self, ev: notify::Event) {
        if ev.need_rescan() {
            tracing::warn!(target: "snapsync::daemon", "the kernel dropped file events: a full reconcile follows");
            self.events_lost();
            return;
        }
        let now = Instant::now();
        for path in &ev.paths {
            if is_temp(path) {
                continue;
            }
            let groups = self.groups_of(path);
            if groups.is_empty() {
                continue;
            }
            // `None`: not a change; otherwise whether the path is held.
            let held = match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(false),
                EventKind::Access(_) => None,
                EventKind::Create(CreateKind::Folder) => {
                    if let Err(ArmError::Limit(dir)) = self.add_tree(path) {
                        self.limit_reached(&dir);
                        return;
                    }
                    Some(false)
                }
                // Opened to be written (a link or a special file is
                // complete as created).
                EventKind::Create(_) => Some(std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())),
                EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => Some(true),
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                    if self.watched.contains(path) {
                        self.drop_tree(path);
                    }
                    Some(false)
                }
                EventKind::Modify(ModifyKind::Name(_)) => {
                    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
                        && let Err(ArmError::Limit(dir)) = self.add_tree(path)
                    {
                        self.limit_reached(&dir);
                        return;
                    }
                    Some(false)
                }
                _ => Some(false),
            };
            let Some(held) = held else { continue };
            let metadata_only = matches!(ev.kind, EventKind::Modify(ModifyKind::Metadata(_)));
            let c = self.pending.entry(path.clone()).or_insert(Change { held, since: now, last: now });
            c.last = now;
            if !metadata_only {
                c.held = held;
            }
            if matches!(ev.kind, EventKind::Remove(RemoveKind::Folder)) {
                c.held = false;
            }
            // The quiet counts events that leave a path ready: the writes
            // of a file still open (a log appended all day, a large file
            // being unpacked) make nothing ready, and do not keep other
            // paths waiting.
            if !c.held {
                self.pace.event(now);
            }
        }
    }

    /// The paths a watch run checks now, if it is time for one; else
    /// when that may change (a held path let go, ready paths due), if
    /// anything is pending.
    fn ready(&mut self, now: Instant) -> Result<Vec<PathBuf>, Option<Instant>> {
        let held: Vec<(&PathBuf, &Change)> =
            self.pending.iter().filter(|(_, c)| c.held && now.duration_since(c.last) < HELD_QUIET).collect();
        let let_go = held.iter().map(|(_, c)| c.last + HELD_QUIET).min();
        let ready: Vec<(&PathBuf, &Change)> = self
            .pending
            .iter()
            // A held path is below (or is) itself.
            .filter(|(p, _)| !held.iter().any(|(h, _)| h.starts_with(p)))
            .collect();
        let Some(oldest) = ready.iter().map(|(_, c)| c.since).min() else { return Err(let_go) };
        let due = self.pace.due(ready.len(), oldest);
        if now < due {
            return Err(Some(let_go.map_or(due, |t| t.min(due))));
        }
        let paths: Vec<PathBuf> = ready.iter().map(|(p, _)| (*p).clone()).collect();
        let held: Vec<PathBuf> = held.into_iter().map(|(p, _)| p.clone()).collect();
        for p in &paths {
            self.pending.remove(p);
        }
        let roots: Vec<PathBuf> =
            self.node.engine.groups.iter().flat_map(|g| g.roots.iter().map(|r| r.local.clone())).collect();
        Ok(fewest(paths, &held, &roots))
    }

    /// A watch run: checks `paths` and reconciles; then sets the quiet
    /// for the next one by whether events came meanwhile.
    fn partial(&mut self, paths: Vec<PathBuf>) {
        let started = Instant::now();
        let node = self.refreshed();
        // Groups with nothing left pending are clean once this run's check
        // recorded what it found.
        let busy: HashSet<String> = self.pending.keys().flat_map(|p| self.groups_of(p)).collect();
        let mark = self.taken;
        let what = format!("watch, {} changed {}", paths.len(), if paths.len() == 1 { "path" } else { "paths" });
        let opts = SyncOptions { paths, interrupt: self.interrupt.clone(), ..SyncOptions::default() };
        self.sync(&node, opts, &what, |report| match report {
            Some(report) if report.check.as_ref().is_some_and(|c| c.problems.is_empty()) => {
                for g in node.engine.groups.iter().filter(|g| !busy.contains(&g.name)) {
                    node.watched.checked(&g.name, mark, false);
                }
            }
            _ => {
                for g in &node.engine.groups {
                    node.watched.dirty(&g.name);
                }
            }
        });
        self.receive(Duration::ZERO);
        self.pace.run_over(started);
    }

    /// A full reconcile.
    fn full(&mut self) {
        let node = self.refreshed();
        // What is pending now is covered by the walk, except files still
        // being written, which wait for their writer as before.
        let now = Instant::now();
        self.pending.retain(|_, c| c.held && now.duration_since(c.last) < HELD_QUIET);
        self.lost = false;
        let every = if self.fallback { self.opts.full_every.min(FALLBACK_EVERY) } else { self.opts.full_every };
        self.next_full = now + every;
        let opts = SyncOptions { interrupt: self.interrupt.clone(), ..SyncOptions::default() };
        // The sync itself records what its walk found clean.
        self.sync(&node, opts, "full reconcile", |_| {});
    }

    /// The node as configured now (the configuration re-read if it
    /// changed).
    fn refreshed(&self) -> Arc<Node> {
        let _ = self.current.refresh();
        self.current.node()
    }

    /// Runs one sync, hands its report (`None`: it failed) to `settle`,
    /// then logs it as the daemon logs every sync run: whoever reads the
    /// line finds the run's outcome settled.
    fn sync(&self, node: &Arc<Node>, opts: SyncOptions, what: &str, settle: impl FnOnce(Option<&SyncReport>)) {
        let started = Instant::now();
        let result = self.rt.block_on(crate::peer::sync(Arc::clone(node), opts));
        settle(result.as_ref().ok());
        match result {
            Ok(report) => {
                let failed = report.peers.iter().filter(|p| p.error.is_some()).count();
                tracing::info!(
                    target: "snapsync::daemon",
                    "sync run: {what}, exchanges {}, failed {}, conflicts {}, {:.2} s",
                    report.peers.len(),
                    failed,
                    report.conflicts(),
                    started.elapsed().as_secs_f64()
                );
                for p in report.peers.iter().filter(|p| p.error.is_some()) {
                    tracing::debug!("{} ({}): {}", p.peer, p.group, p.error.as_deref().unwrap_or_default());
                }
            }
            Err(_) if self.interrupt.raised() => {
                tracing::info!(target: "snapsync::daemon", "sync run: {what}: stopped, as the daemon stops");
            }
            Err(e) => tracing::error!(target: "snapsync::daemon", "sync run: {what}: {e}"),
        }
    }
}

/// `paths` without those below another one, and with the entries of a
/// directory inside `roots` that changed in large numbers replaced by the
/// directory (one listing instead of many lookups), unless it holds a
/// `held` file still being written.
fn fewest(mut paths: Vec<PathBuf>, held: &[PathBuf], roots: &[PathBuf]) -> Vec<PathBuf> {
    const MANY: usize = 64;
    let mut by_parent: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for p in &paths {
        if let Some(parent) = p.parent() {
            *by_parent.entry(parent.to_path_buf()).or_default() += 1;
        }
    }
    for (parent, n) in by_parent {
        let inside = roots.iter().any(|r| parent.starts_with(r));
        if n > MANY && inside && !held.iter().any(|h| h.starts_with(&parent)) {
            paths.push(parent);
        }
    }
    crate::sync::minimal(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_lone_change_is_due_after_the_short_quiet() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        let at = t0 + ms(1000);
        pace.event(at);
        assert_eq!(pace.due(1, at), at + QUICK);
        // A rename's two halves, an editor's temporary renamed over a file.
        assert_eq!(pace.due(FEW, at), at + QUICK);
        // Many files just written are read once they are past the scan's
        // timestamp tick.
        assert_eq!(pace.due(FEW + 1, at), at + SETTLE);
    }

    #[test]
    fn the_quiet_grows_while_runs_end_with_more_events_and_falls_back_when_idle() {
        // A writer makes a path ready every 10 ms for 5 s; a run starts
        // when its paths are due and takes 20 ms, the events meanwhile
        // waiting for the next. Time is simulated, a millisecond a step.
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        let mut oldest = None;
        let mut running_until = None;
        let mut quiets = Vec::new();
        for i in 0..5000 {
            let now = t0 + ms(1000 + i);
            if let Some((started, until)) = running_until
                && now >= until
            {
                pace.run_over(started);
                quiets.push(pace.quiet);
                running_until = None;
            }
            if i % 10 == 0 {
                pace.event(now);
                oldest.get_or_insert(now);
            }
            if running_until.is_none()
                && let Some(first) = oldest
                && now >= pace.due(1, first)
            {
                running_until = Some((now, now + ms(20)));
                oldest = None;
            }
        }
        assert_eq!(quiets[..4], [ms(8), ms(32), ms(128), QUIET], "{quiets:?}");
        assert!(quiets[4..].iter().all(|&q| q == QUIET), "{quiets:?}");
        // 5 s of events: a few runs to grow the quiet, then one per
        // MAX_DELAY, not one per event.
        assert!(quiets.len() <= 8, "{} runs: {quiets:?}", quiets.len());
        // A run that ends with no event since it started leaves the quiet
        // as it is, and so does the next event within QUIET.
        let last = pace.last;
        pace.run_over(last + ms(1));
        assert_eq!(pace.quiet, QUIET);
        pace.event(last + QUIET - ms(1));
        assert_eq!(pace.quiet, QUIET);
        // Idle for QUIET: the next change is a lone one again.
        let now = pace.last + QUIET;
        assert!(pace.settled(now));
        pace.event(now);
        assert_eq!(pace.quiet, QUICK);
        assert_eq!(pace.due(1, now), now + QUICK);
    }

    #[test]
    fn a_stream_of_events_delays_ready_paths_at_most_max_delay() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        pace.quiet = QUIET;
        let first = t0 + ms(1000);
        // An event every millisecond: the quiet never comes.
        for i in 0..3000 {
            pace.event(first + ms(i));
        }
        assert!(!pace.settled(first + ms(3000)));
        assert_eq!(pace.due(1, first), first + MAX_DELAY);
    }

    #[test]
    fn fewest_drops_paths_below_others() {
        let got = fewest(vec![p("/t/a/b"), p("/t/a"), p("/t/c"), p("/t/ab")], &[], &[p("/t")]);
        assert_eq!(got, [p("/t/a"), p("/t/ab"), p("/t/c")]);
    }

    #[test]
    fn many_entries_of_a_directory_become_the_directory_unless_one_is_held() {
        let many: Vec<PathBuf> = (0..100).map(|i| p(&format!("/t/d/f{i}"))).collect();
        assert_eq!(fewest(many.clone(), &[], &[p("/t")]), [p("/t/d")]);
        // A file still being written is never read: its directory is not
        // checked as a whole.
        assert_eq!(fewest(many.clone(), &[p("/t/d/open")], &[p("/t")]).len(), 100);
        // Nor is a directory above the included tree.
        assert_eq!(fewest(many, &[], &[p("/t/d/f1")]).len(), 100);
    }
}
