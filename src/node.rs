//! One opened node, shared by the tasks of a process.
//!
//! A [`Node`] is the engine (configuration, state, chunk stores), the
//! node's identities (one per group key), what it served and received
//! ([`Stats`]), and what its sessions share: chunks recently encoded for
//! peers, and one lock per peer and group that serializes that peer's
//! pulls. Whatever writes the state holds the store's writer token
//! ([`crate::store::Writer`]): `Node::write_locked` and
//! [`Node::write_blocking`] take it around a closure, so a daemon serving
//! several peers and local commands at once still has exactly one writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::Engine;
use crate::hash::Hash;
use crate::net::NodeIdentity;
use crate::store::Writer;

/// Counters a node keeps about what it served and did; `status --json`
/// and the tests read them.
#[derive(Debug, Default)]
pub struct Stats {
    /// `GetRoots` requests answered.
    pub roots_served: AtomicU64,
    /// `GetDir` requests answered.
    pub dirs_served: AtomicU64,
    /// Chunks sent to peers.
    pub chunks_served: AtomicU64,
    /// Chunks received from peers.
    pub chunks_received: AtomicU64,
    /// Bytes of chunk data received (stored form).
    pub bytes_received: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as they are now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            roots_served: get(&self.roots_served),
            dirs_served: get(&self.dirs_served),
            chunks_served: get(&self.chunks_served),
            chunks_received: get(&self.chunks_received),
            bytes_received: get(&self.bytes_received),
        }
    }
}

/// [`Stats`] read at one moment (`status --json` shows them as `served`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// `GetRoots` requests answered.
    pub roots_served: u64,
    /// `GetDir` requests answered.
    pub dirs_served: u64,
    /// Chunks sent to peers.
    pub chunks_served: u64,
    /// Chunks received from peers.
    pub chunks_received: u64,
    /// Bytes of chunk data received (stored form).
    pub bytes_received: u64,
}

/// One opened node, shared by the tasks of a process.
pub struct Node {
    /// The engine: configuration, state and chunk stores.
    pub engine: Engine,
    /// Where the node's state lives.
    state_dir: PathBuf,
    /// Identities by group key file, made on first use.
    pub(crate) identities: std::sync::Mutex<HashMap<PathBuf, Arc<NodeIdentity>>>,
    /// What this node served and received.
    pub stats: Arc<Stats>,
    /// Chunks encoded for peers lately.
    pub(crate) encoded: Arc<EncodedCache>,
    /// One per peer and group: a peer's pulls of one group run one at a
    /// time, so a peer that asks for many at once gets one reconcile's
    /// worth of this node's memory, not many.
    pulls: Arc<std::sync::Mutex<HashMap<(String, String), PullLock>>>,
    /// Per peer host (lower case), the budget of its request frames being
    /// read ([`crate::proto::REQUEST_BUDGET`]); the empty name's is shared
    /// by the `Hello` of every connection whose certificate names a host
    /// no group lists. Only listed hosts get one of their own, so the map
    /// stays small.
    requests: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>>,
    /// What a watching daemon knows of the trees on disk.
    pub watched: Arc<Watched>,
    /// Sessions this node opened, kept between a daemon's runs.
    pub kept: crate::peer::KeptSessions,
}

/// What the daemon's watcher (`serve --watch`) knows of the trees on
/// disk, so that a `sync` can skip the walk of a tree nothing touched
/// (SPEC §8).
///
/// It counts the *touches*: events of the watcher that may be a change,
/// counted as they arrive, before the watcher looks at them. A check
/// records everything up to a touch count, its *mark*: a full check the
/// touches before it started, a watch run the touches the watcher had
/// taken in when it chose the paths to check. A group is *clean* while
/// the watcher is healthy (every directory watched, no event lost) and
/// its checks since the last full one (made while healthy) cover every
/// touch so far. Anything else (no watcher, a watch limit reached, an
/// overflowed event queue, a failed check) leaves the group dirty, and a
/// `sync` walks it as usual.
#[derive(Debug, Default)]
pub struct Watched {
    inner: std::sync::Mutex<WatchedInner>,
}

#[derive(Debug, Default)]
struct WatchedInner {
    healthy: bool,
    touches: u64,
    /// Per group, the mark its checks cover (absent: no full check since
    /// the watcher became healthy, or a check failed since).
    covered: HashMap<String, u64>,
}

impl Watched {
    /// The watcher starts (true) or stops trusting its events (false):
    /// either way every group is dirty until its next full check.
    pub fn set_healthy(&self, healthy: bool) {
        let mut inner = self.inner.lock().expect("poisoned");
        inner.healthy = healthy;
        inner.covered.clear();
    }

    /// An event arrived that may be a change.
    pub fn touch(&self) {
        self.inner.lock().expect("poisoned").touches += 1;
    }

    /// The touches so far: the mark of a full check that starts now.
    pub fn mark(&self) -> u64 {
        self.inner.lock().expect("poisoned").touches
    }

    /// A check of `group` recorded every change up to touch `mark`; `full`
    /// when it walked the whole tree, otherwise it checked every path the
    /// touches since the group's last check named.
    pub fn checked(&self, group: &str, mark: u64, full: bool) {
        let mut inner = self.inner.lock().expect("poisoned");
        if !inner.healthy {
            return;
        }
        match inner.covered.get_mut(group) {
            Some(m) => *m = (*m).max(mark),
            None if full => {
                inner.covered.insert(group.to_owned(), mark);
            }
            None => {}
        }
    }

    /// A check of `group` failed or left changes out: it is dirty until a
    /// full check.
    pub fn dirty(&self, group: &str) {
        self.inner.lock().expect("poisoned").covered.remove(group);
    }

    /// Whether nothing changed in `group` since its last check.
    pub fn clean(&self, group: &str) -> bool {
        let inner = self.inner.lock().expect("poisoned");
        inner.healthy && inner.covered.get(group) == Some(&inner.touches)
    }
}

/// Serializes one peer's pulls of one group.
type PullLock = Arc<tokio::sync::Mutex<()>>;

impl Node {
    /// Wraps an opened engine whose state is in `state_dir`.
    pub fn new(engine: Engine, state_dir: &Path) -> Node {
        Node {
            engine,
            state_dir: state_dir.to_path_buf(),
            identities: std::sync::Mutex::default(),
            stats: Arc::default(),
            encoded: Arc::default(),
            pulls: Arc::default(),
            requests: Arc::default(),
            watched: Arc::default(),
            kept: Default::default(),
        }
    }

    /// The same node with `engine` (made by [`Engine::reconfigured`] from
    /// this node's): counters, cached chunks and pull locks are shared with
    /// this node, whose sessions may still run; identities are made anew
    /// from the key files the new configuration names, and sessions kept
    /// between runs too.
    pub fn reconfigured(&self, engine: Engine) -> Node {
        Node {
            engine,
            state_dir: self.state_dir.clone(),
            identities: std::sync::Mutex::default(),
            stats: Arc::clone(&self.stats),
            encoded: Arc::clone(&self.encoded),
            pulls: Arc::clone(&self.pulls),
            requests: Arc::clone(&self.requests),
            watched: Arc::clone(&self.watched),
            kept: self.kept.like(),
        }
    }

    /// The budget of `peer`'s request frames being read (`""`: of the
    /// connections not yet welcomed).
    pub(crate) fn request_budget(&self, peer: &str) -> Arc<tokio::sync::Semaphore> {
        let mut budgets = self.requests.lock().expect("poisoned");
        let budget = budgets
            .entry(peer.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(crate::proto::REQUEST_BUDGET)));
        Arc::clone(budget)
    }

    /// The lock that serializes `peer`'s pulls of `group`.
    pub(crate) fn pull_lock(&self, peer: &str, group: &str) -> PullLock {
        let mut pulls = self.pulls.lock().expect("poisoned");
        Arc::clone(pulls.entry((peer.to_owned(), group.to_owned())).or_default())
    }

    /// The node's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Holds the state's writer token ([`Writer`]) while `f` runs on a
    /// blocking thread.
    pub(crate) async fn write_locked<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Node, &Writer) -> T + Send + 'static,
    ) -> T {
        let w = self.engine.store.writer().await;
        let node = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&node, &w)).await.expect("blocking task panicked")
    }

    /// Holds the state's writer token while `f` runs on this thread, which
    /// must not be a runtime worker (a local command's blocking thread).
    pub fn write_blocking<T>(&self, f: impl FnOnce(&Node, &Writer) -> T) -> T {
        let w = self.engine.store.writer_blocking();
        f(self, &w)
    }

    /// Waits (at most `limit`) until nothing writes the state, and keeps
    /// new writers out until the process ends. False if it timed out.
    pub async fn quiesce(&self, limit: std::time::Duration) -> bool {
        match tokio::time::timeout(limit, self.engine.store.writer()).await {
            Ok(w) => {
                std::mem::forget(w);
                true
            }
            Err(_) => false,
        }
    }
}

/// How many bytes of encoded chunks [`EncodedCache`] keeps: a few hundred
/// chunks, enough for peers pulling the same change at about the same
/// time, small beside the daemon's other memory. In a first sync of 20k
/// files to two peers, counted, the cache held at most 9 MiB while the
/// second peer was served from it (about every other chunk); once one
/// peer had fallen more than the budget (16 MiB then) behind the other,
/// nothing more was served from it, and the full budget only held chunks
/// that would not be asked for again. With 8 MiB, about a quarter of the
/// chunks were served from it in the benchmark's first sync; 4 MiB made no
/// measurable difference to its time.
const ENCODED_CACHE_BYTES: usize = 4 << 20;

/// Chunks recently read and compressed for a peer, shared by every
/// session of the node: peers pulling the same content at about the same
/// time (the usual case: one host's change goes to all the others) get it
/// read, checked and compressed once. A chunk leaves as soon as it has
/// been served as many times as there are peer sessions (each peer has
/// had it), else oldest out first; so during a first sync to several
/// peers it holds only the chunks between the slowest peer and the
/// fastest. Emptied when the last peer session ends
/// ([`EncodedCache::hold`]): an idle daemon keeps none of it.
#[derive(Default)]
pub(crate) struct EncodedCache {
    inner: std::sync::Mutex<CacheInner>,
    /// Peer sessions being served.
    sessions: std::sync::atomic::AtomicUsize,
}

/// A peer session's use of the [`EncodedCache`]; the last one dropped
/// empties it.
pub(crate) struct CacheHold(Arc<EncodedCache>);

impl CacheHold {
    /// Ends the hold; true when it was the last one (the cache is then
    /// empty, and the node has no peer session).
    pub(crate) fn release(self) -> bool {
        let cache = Arc::clone(&self.0);
        drop(self);
        cache.sessions.load(std::sync::atomic::Ordering::Acquire) == 0
    }
}

impl Drop for CacheHold {
    fn drop(&mut self) {
        if self.0.sessions.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            drop(std::mem::take(&mut *self.0.inner.lock().expect("poisoned")));
        }
    }
}

impl Node {
    /// Gives back what a finished command or session left in memory: the
    /// state's memtables are written out when large, and what the C
    /// library's malloc holds free goes back to the system. The daemon's
    /// own allocator (jemalloc, src/main.rs) returns freed pages by itself;
    /// the C libraries (TLS, zstd's contexts) allocate from glibc's, which
    /// keeps what a burst of work freed in its arenas. Blocking (it may
    /// wait for a flush).
    pub(crate) fn settle_memory(&self) {
        self.engine.store.flush_if_large();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free heap pages to the kernel;
        // it touches no memory in use and is safe to call from any thread.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[derive(Default)]
struct CacheInner {
    /// Each chunk with the number of times it was served.
    map: std::collections::HashMap<Hash, (Arc<Vec<u8>>, usize)>,
    /// Oldest first; may name chunks already gone (served to every peer).
    order: std::collections::VecDeque<Hash>,
    bytes: usize,
}

impl EncodedCache {
    /// Marks a peer session as using the cache until the hold is dropped.
    pub(crate) fn hold(self: &Arc<Self>) -> CacheHold {
        self.sessions.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        CacheHold(Arc::clone(self))
    }

    /// The chunk, if cached; counts it served once more, and drops it once
    /// every peer session has been served it.
    pub(crate) fn get(&self, hash: &Hash) -> Option<Arc<Vec<u8>>> {
        let sessions = self.sessions.load(std::sync::atomic::Ordering::Acquire);
        let mut c = self.inner.lock().expect("poisoned");
        let (stored, served) = c.map.get_mut(hash)?;
        *served += 1;
        let stored = Arc::clone(stored);
        if *served >= sessions {
            c.map.remove(hash);
            c.bytes -= stored.len();
            c.compact();
        }
        Some(stored)
    }

    /// Keeps `stored`, just read and compressed for one peer (served once).
    pub(crate) fn put(&self, hash: Hash, stored: Arc<Vec<u8>>) {
        if self.sessions.load(std::sync::atomic::Ordering::Acquire) <= 1 {
            // One peer: nobody else will ask for it.
            return;
        }
        let mut c = self.inner.lock().expect("poisoned");
        c.bytes += stored.len();
        if let Some((replaced, _)) = c.map.insert(hash, (stored, 1)) {
            c.bytes -= replaced.len();
            return;
        }
        c.order.push_back(hash);
        while c.bytes > ENCODED_CACHE_BYTES {
            let Some(old) = c.order.pop_front() else { break };
            if let Some((v, _)) = c.map.remove(&old) {
                c.bytes -= v.len();
            }
        }
    }
}

impl CacheInner {
    /// Forgets the names of chunks already gone once they outnumber those
    /// kept, so that the order stays as long as the map, give or take.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|h| map.contains_key(h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_clean_only_while_checks_cover_every_touch() {
        let w = Watched::default();
        assert!(!w.clean("g"), "no watcher: dirty");
        w.set_healthy(true);
        assert!(!w.clean("g"), "no full check yet");
        // A watch run does not make a group clean before a full check.
        w.checked("g", 0, false);
        assert!(!w.clean("g"));
        let mark = w.mark();
        w.checked("g", mark, true);
        assert!(w.clean("g"));
        w.touch();
        assert!(!w.clean("g"), "a touch not checked yet");
        w.checked("g", w.mark(), false);
        assert!(w.clean("g"));
        // A check that covers less than an earlier one does not undo it.
        w.checked("g", 0, false);
        assert!(w.clean("g"));
        w.dirty("g");
        assert!(!w.clean("g"));
        w.checked("g", w.mark(), true);
        w.set_healthy(false);
        assert!(!w.clean("g"), "lost events: dirty");
    }

    #[test]
    fn encoded_cache_keeps_the_newest_within_its_budget() {
        let cache = Arc::new(EncodedCache::default());
        // Three peer sessions: a chunk served to two of them stays.
        let _holds = [cache.hold(), cache.hold(), cache.hold()];
        let chunk = Arc::new(vec![0u8; ENCODED_CACHE_BYTES / 4]);
        let hashes: Vec<Hash> = (0u8..6).map(|i| Hash::of(&[i])).collect();
        for h in &hashes {
            cache.put(*h, Arc::clone(&chunk));
            // Putting the same chunk again changes nothing.
            cache.put(*h, Arc::clone(&chunk));
        }
        assert!(cache.get(&hashes[0]).is_none() && cache.get(&hashes[1]).is_none());
        assert!(hashes[2..].iter().all(|h| cache.get(h).is_some()));
        assert_eq!(cache.inner.lock().unwrap().bytes, 4 * chunk.len());
    }

    #[test]
    fn a_chunk_served_to_every_peer_session_leaves_the_cache() {
        let cache = Arc::new(EncodedCache::default());
        let one = cache.hold();
        // With one peer session nothing is kept: nobody else will ask.
        cache.put(Hash::of(b"a"), Arc::new(vec![1; 10]));
        assert!(cache.get(&Hash::of(b"a")).is_none());
        let two = cache.hold();
        let hashes: Vec<Hash> = (0..1000u32).map(|i| Hash::of(&i.to_le_bytes())).collect();
        for h in &hashes {
            cache.put(*h, Arc::new(vec![2; 10]));
        }
        // The second peer takes each chunk once: then it is gone.
        for h in &hashes {
            assert!(cache.get(h).is_some());
            assert!(cache.get(h).is_none());
        }
        let c = cache.inner.lock().unwrap();
        assert_eq!((c.map.len(), c.bytes), (0, 0));
        assert!(c.order.len() <= 64, "the order forgets chunks gone: {} left", c.order.len());
        drop(c);
        drop((one, two));
    }
}
