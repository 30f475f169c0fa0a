//! Live configuration (SPEC §3): a running daemon works with the
//! configuration as it is on disk, as csync2, which reads it on every run.
//!
//! The daemon re-reads its configuration when a file of it (the main file
//! or one it includes) changed since it was last read: before each local
//! command, before each peer's session, and on SIGHUP. A change is seen
//! by each file's identity, size and change time, so looking costs a few
//! `stat` calls. What it reads replaces the node ([`Current`]): the new
//! node shares the state, the chunk stores and the counters; sessions
//! that started before keep the node they started with. A configuration
//! that does not load, or does not suit this host, is not taken: the
//! daemon keeps the one it has, logs why once, and each command it runs
//! meanwhile shows the error.
//!
//! The endpoint's address and key stay as the daemon started with them:
//! a change of those is logged with the advice to restart the daemon.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::Config;
use crate::peer::Node;

/// What a file of the configuration was when it was read: device, inode,
/// size and change time (`None` when it could not be looked at).
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.size(), m.ctime(), m.ctime_nsec()))
}

/// The files of a configuration as read, each with its [`Stamp`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamps(Vec<(PathBuf, Stamp)>);

impl Stamps {
    fn of(files: &[PathBuf]) -> Stamps {
        Stamps(files.iter().map(|f| (f.clone(), stamp(f))).collect())
    }

    /// The same files as they are now.
    fn now(&self) -> Stamps {
        Stamps(self.0.iter().map(|(f, _)| (f.clone(), stamp(f))).collect())
    }
}

/// What [`Current::refresh`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// No file of the configuration changed.
    Unchanged,
    /// The configuration changed and the node now works with it.
    Reloaded,
    /// The configuration changed but could not be taken: why. The node
    /// keeps the configuration it had.
    Kept(String),
}

/// What [`Current`] knows of the configuration on disk.
struct Seen {
    /// The files as last read (or last tried).
    stamps: Stamps,
    /// Why the last try failed, while the files stay as they were then.
    failed: Option<String>,
}

/// The daemon's node, replaced when its configuration changes.
pub struct Current {
    node: RwLock<Arc<Node>>,
    /// The main configuration file.
    config: PathBuf,
    /// Held while the configuration is read, so one reload runs at a time.
    seen: Mutex<Seen>,
}

impl Current {
    /// `node`, made from the configuration `config` whose files (main
    /// file first) were `files` ([`Config::files`]).
    pub fn new(node: Arc<Node>, config: &Path, files: &[PathBuf]) -> Current {
        let files = if files.is_empty() { vec![config.to_path_buf()] } else { files.to_vec() };
        Current {
            node: RwLock::new(node),
            config: config.to_path_buf(),
            seen: Mutex::new(Seen { stamps: Stamps::of(&files), failed: None }),
        }
    }

    /// The node as configured now.
    pub fn node(&self) -> Arc<Node> {
        Arc::clone(&self.node.read().expect("poisoned"))
    }

    /// Re-reads the configuration if a file of it changed, and replaces
    /// the node when it loads. Blocking: it reads files, and waits for the
    /// state's writer token to open what a new backup directory needs.
    pub fn refresh(&self) -> Refresh {
        let mut seen = self.seen.lock().expect("poisoned");
        let now = seen.stamps.now();
        if now == seen.stamps {
            return match &seen.failed {
                None => Refresh::Unchanged,
                Some(why) => Refresh::Kept(why.clone()),
            };
        }
        match self.load() {
            Ok(config) => {
                seen.stamps = Stamps::of(&config.files);
                seen.failed = None;
                tracing::info!("configuration reloaded from {}", self.config.display());
                for w in &config.warnings {
                    tracing::warn!("{}: {w}", self.config.display());
                }
                Refresh::Reloaded
            }
            Err(why) => {
                let why = format!(
                    "the daemon keeps the configuration it had, as {} cannot be used: {why}",
                    self.config.display()
                );
                tracing::error!("{why}");
                seen.stamps = now;
                seen.failed = Some(why.clone());
                Refresh::Kept(why)
            }
        }
    }

    /// Loads the configuration and makes the node that works with it.
    fn load(&self) -> Result<Config, String> {
        let config = crate::config::load(&self.config).map_err(|e| e.to_string())?;
        let old = self.node();
        let engine = {
            let w = old.engine.store.writer_blocking();
            old.engine.reconfigured(&config, &w).map_err(|e| e.to_string())?
        };
        let node = old.reconfigured(engine);
        warn_about_restart(&old, &node);
        *self.node.write().expect("poisoned") = Arc::new(node);
        Ok(config)
    }
}

/// Logs what a reload cannot change in a running daemon.
fn warn_about_restart(old: &Node, new: &Node) {
    let served = |n: &Node| n.engine.groups.iter().find(|g| g.key.is_some()).map(|g| (g.local.clone(), g.key.clone()));
    let (Some((old_local, old_key)), Some((new_local, new_key))) = (served(old), served(new)) else {
        return;
    };
    if old_local.addr != new_local.addr || old_local.port != new_local.port {
        tracing::warn!("the address of {} changed: restart the daemon to listen on the new one", old.engine.host);
    }
    if old_key != new_key {
        tracing::warn!("the key file the daemon serves with changed: restart the daemon to serve with the new one");
    }
}
