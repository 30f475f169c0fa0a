//! Sessions a daemon keeps open between its runs (protocol version 3).
//!
//! A run ends its session with `Done` instead of `Bye`; the session waits
//! here, by group and peer, for the next run to the same peer, which then
//! skips the handshake and `Hello`. An idle session is closed after
//! [`KEEP_IDLE`], well before the peer would close it
//! ([`crate::proto::SESSION_IDLE_TIMEOUT`]). Only a daemon keeps sessions
//! ([`KeptSessions::enable`]): a command that exits would leave its peers
//! waiting for a session that never ends in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::session::Opened;

/// How long a session stays open after its run, waiting for the next.
pub const KEEP_IDLE: Duration = Duration::from_secs(20);

/// How long the first request of a run on a kept session may take before
/// the session is taken for gone and a new one is opened: a peer that
/// restarted since drops the old connection's packets unanswered.
pub const KEPT_PROBE: Duration = Duration::from_secs(2);

/// Idle sessions by (group, peer host).
type Idle = HashMap<(String, String), (u64, Opened)>;

/// The sessions a node keeps between runs.
#[derive(Default)]
pub struct KeptSessions {
    enabled: AtomicBool,
    next_id: AtomicU64,
    idle: Arc<Mutex<Idle>>,
}

impl KeptSessions {
    /// Keeps sessions from now on (a daemon's node).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// A node made from this one's (a reload) keeps sessions if it did;
    /// the sessions themselves, made under the old configuration, stay
    /// behind and close.
    pub fn like(&self) -> KeptSessions {
        let kept = KeptSessions::default();
        kept.enabled.store(self.enabled(), Ordering::Relaxed);
        kept
    }

    /// Whether sessions are kept.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The idle session with `peer` for `group`, taken out for a run.
    pub(super) fn take(&self, group: &str, peer: &str) -> Option<Opened> {
        let mut idle = self.idle.lock().expect("poisoned");
        idle.remove(&(group.to_owned(), peer.to_owned())).map(|(_, opened)| opened)
    }

    /// Keeps `opened` for the next run with `peer` for `group`, and closes
    /// it after [`KEEP_IDLE`] unless a run takes it first. A session
    /// already kept there (two runs at once) stays; this one is closed.
    pub(super) fn put(&self, group: &str, peer: &str, opened: Opened) {
        let key = (group.to_owned(), peer.to_owned());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut idle = self.idle.lock().expect("poisoned");
            if idle.contains_key(&key) {
                drop(idle);
                opened.close();
                return;
            }
            idle.insert(key.clone(), (id, opened));
        }
        let idle = Arc::downgrade(&self.idle);
        tokio::spawn(async move {
            tokio::time::sleep(KEEP_IDLE).await;
            let Some(idle) = idle.upgrade() else { return };
            let mut idle = idle.lock().expect("poisoned");
            if idle.get(&key).is_some_and(|(kept, _)| *kept == id)
                && let Some((_, opened)) = idle.remove(&key)
            {
                opened.close();
            }
        });
    }

    /// Closes every idle session (the daemon stops).
    pub fn close_all(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("poisoned"));
        for (_, opened) in idle.into_values() {
            opened.close();
        }
    }
}

impl Drop for KeptSessions {
    fn drop(&mut self) {
        self.close_all();
    }
}
