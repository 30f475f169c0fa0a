//! snapsync: multi-host file synchronization over a content-addressed store.
//!
//! The library holds all of snapsync's work; `src/main.rs` is glue that
//! parses the command line and calls into [`cli`].
//!
//! Modules, lowest layer first. A module only uses modules listed above it.
//!
//! - [`audit`]: the audit log line for every change applied to disk.
//! - [`hash`]: the BLAKE3 digest type that names chunks, contents and nodes.
//! - [`trusted`]: reading config and key files safely (regular, bounded,
//!   owner-only writable or private).
//! - [`key`]: group key files (csync2 format).
//! - [`config`]: the csync2-compatible configuration language and path patterns.
//! - [`chunk`]: FastCDC content-defined chunking and chunk hashing.
//! - [`tree`]: entries, the canonical Merkle node encoding, tree hashing.
//! - [`fs`]: the safe file layer, the one door for putting files into
//!   trees: directory-descriptor-relative operations that never follow a
//!   link, fresh private temporaries, metadata through descriptors,
//!   placement checked by inode, a journal of temporaries and a staging
//!   area for chunks.
//! - [`store`]: the node's state database (fjall), content store, generations, gc.
//! - [`scan`]: the parallel walk of included trees with the stat cache.
//! - [`engine`]: one node's local operations (check, ls, verify, gc).
//! - [`restore`]: writing a generation back to disk, verified.
//! - [`net`]: QUIC endpoint, group CA, node certificates, pins.
//! - [`proto`]: peer protocol messages, framing, limits and validation
//!   (uses `hash`, `chunk`, `tree`, `store`).
//! - [`sync`]: per-entry reconcile decisions, conflicts and `auto`
//!   policies (uses `config`, `tree`, `store`).
//! - [`peer`]: sessions with peers: serving their requests, reconciling
//!   with them, applying what a reconcile takes (uses all of the above).
//! - [`cli`]: command-line parsing, output, exit codes and the daemon.

pub mod audit;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod exit;
pub mod fs;
pub mod hash;
pub mod key;
pub mod net;
pub mod node;
pub mod peer;
pub mod proto;
pub mod restore;
pub mod scan;
pub mod store;
pub mod sync;
pub mod tree;
pub mod trusted;
