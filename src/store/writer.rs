//! The right to write a node's state.
//!
//! A process has one [`Store`](super::Store) per state directory (its
//! lock file sees to that across processes); inside the process, every
//! write of the state goes through a [`Batch`](super::Batch), and a batch
//! can only be started with a [`Writer`]: a token that exists once per
//! store at a time. Whatever writes the state (a check, a reconcile's
//! local steps, `force`, `mark`, `restore`, `gc`, `verify --repair`)
//! first waits for the token and holds it until its writes are committed,
//! so two of them never interleave their reads and writes of the version
//! counter, the directory records or the version digest.
//!
//! The token is a guard of the store's writer mutex: dropping it lets the
//! next writer in. It is `Send` and `'static`, so a task can hand it to a
//! blocking thread for the duration of its work.

use std::sync::Arc;

/// The store's writer mutex.
pub(super) type WriterLock = Arc<tokio::sync::Mutex<()>>;

/// Held by whatever writes the state; see the module documentation.
#[must_use = "the token is what allows writing; dropping it lets the next writer in"]
pub struct Writer {
    guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Writer {
    pub(super) async fn acquire(lock: &WriterLock) -> Writer {
        Writer { guard: Arc::clone(lock).lock_owned().await }
    }

    /// Waits on this thread, which must not be a runtime worker.
    pub(super) fn acquire_blocking(lock: &WriterLock) -> Writer {
        Writer { guard: Arc::clone(lock).blocking_lock_owned() }
    }

    /// The token if no one holds it now.
    pub(super) fn try_acquire(lock: &WriterLock) -> Option<Writer> {
        Arc::clone(lock).try_lock_owned().ok().map(|guard| Writer { guard })
    }

    /// Whether this token is the one of the store whose mutex is `lock`.
    pub(super) fn is_of(&self, lock: &WriterLock) -> bool {
        Arc::ptr_eq(tokio::sync::OwnedMutexGuard::mutex(&self.guard), lock)
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}
