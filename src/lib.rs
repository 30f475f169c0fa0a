//! snapsync: multi-host file synchronization over a content-addressed store.
//!
//! The library holds all of snapsync's work; `src/main.rs` is glue that
//! parses the command line and calls into [`cli`].
//!
//! Modules, lowest layer first. A module only uses modules listed above it
//! (docs/design.md, "Code layout").
//!
//! - [`audit`]: the audit log line for every change applied to disk.
//! - [`exit`]: the exit statuses of every command.
//! - [`killpoint`]: a test hook that ends the process at a named step
//!   (`SNAPSYNC_KILL_AT`), for crash-safety tests.
//! - [`hash`]: the BLAKE3 digest type that names chunks, contents and nodes.
//! - [`progress`]: how long work reports its progress (shown by the caller).
//! - [`interrupt`]: how a run is asked to stop (Ctrl-C, a caller gone).
//! - [`trusted`]: reading config and key files safely (regular, bounded,
//!   owner-only writable or private).
//! - [`key`]: group key files (csync2 format).
//! - [`config`]: the csync2-compatible configuration language and path patterns.
//! - [`chunk`]: FastCDC content-defined chunking and chunk hashing.
//! - [`tree`]: entries, the canonical Merkle node encoding, tree hashing,
//!   version vectors and logical paths.
//! - [`store`]: the node's state database (fjall), its writer token,
//!   content store, generations, gc.
//! - [`fs`]: the safe file layer, the only code that writes into the
//!   trees: directory-descriptor-relative operations that never follow a
//!   link, fresh private temporaries, metadata through descriptors,
//!   placement checked by inode, a journal of temporaries and a staging
//!   area for chunks (uses `store` for the umask the process started with).
//! - [`scan`]: the parallel walk of included trees with the stat cache.
//! - [`engine`]: one node's local operations (check, ls, verify, force, gc,
//!   history).
//! - [`restore`]: writing a generation back to disk, verified.
//! - [`net`]: QUIC endpoint, group CA, node certificates, pins.
//! - [`proto`]: peer protocol messages, framing, limits and validation
//!   (uses `hash`, `chunk`, `tree`; not `store`).
//! - [`node`]: one opened node shared by the tasks of a process.
//! - [`sync`]: reconciling: per-entry decisions, the walk, the apply, the
//!   client side of requests to a peer.
//! - [`peer`]: sessions with peers and serving their requests.
//! - [`daemon`]: `serve`: the QUIC endpoint, the local socket, signals.
//! - [`cli`]: command-line parsing, output and exit codes.
//! - `fuzzing` (hidden): the properties the fuzz targets check, shared
//!   with the test that replays their corpus (uses `config`, `chunk`,
//!   `tree`, `store`, `proto`).

pub mod audit;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod exit;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod interrupt;
pub mod key;
pub mod killpoint;
pub mod net;
pub mod node;
pub mod peer;
pub mod progress;
pub mod proto;
pub mod restore;
pub mod scan;
pub mod store;
pub mod sync;
pub mod tree;
pub mod trusted;
