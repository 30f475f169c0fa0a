//! Stopping a run when its caller asks: Ctrl-C on a command that runs
//! here, or, in the daemon, the command that sent it going away.
//!
//! An [`Interrupt`] is shared by everything one operation runs. Work that
//! can stop safely stops where it waits: a sync closes its sessions, so
//! each exchange fails at its next wait on the network, and a change being
//! applied is finished first (it is never cut off in the middle; see
//! [`crate::peer`]); a scan stops visiting entries and records nothing of
//! the group it was scanning. Nothing is half-written: what stopped is what
//! a peer that went away, or a crash, would leave.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the caller of one operation asked it to stop; cheap to clone.
#[derive(Clone)]
pub struct Interrupt(Arc<Inner>);

struct Inner {
    /// Looked at once per entry by a scan: an atomic, not a lock.
    raised: AtomicBool,
    /// Wakes the tasks that wait for it.
    wake: tokio::sync::watch::Sender<bool>,
}

impl Interrupt {
    /// Not asked to stop yet.
    pub fn new() -> Self {
        Interrupt(Arc::new(Inner { raised: AtomicBool::new(false), wake: tokio::sync::watch::Sender::new(false) }))
    }

    /// Asks the operation to stop.
    pub fn raise(&self) {
        self.0.raised.store(true, Ordering::Relaxed);
        self.0.wake.send_replace(true);
    }

    /// Whether the operation was asked to stop.
    pub fn raised(&self) -> bool {
        self.0.raised.load(Ordering::Relaxed)
    }

    /// Returns once the operation is asked to stop.
    pub async fn wait(&self) {
        let mut rx = self.0.wake.subscribe();
        // The sender lives as long as `self`: this never fails.
        let _ = rx.wait_for(|raised| *raised).await;
    }
}

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt::new()
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interrupt({})", self.raised())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_raised_and_later_waits_return_at_once() {
        let i = Interrupt::new();
        assert!(!i.raised());
        let waiter = tokio::spawn({
            let i = i.clone();
            async move { i.wait().await }
        });
        i.raise();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await.unwrap().unwrap();
        assert!(i.raised());
        tokio::time::timeout(std::time::Duration::from_secs(10), i.wait()).await.unwrap();
    }
}
