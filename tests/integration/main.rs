//! Integration tests: the `snapsync` binary driven in temporary directories.
//!
//! One test binary (STYLE: one binary with a shared helper); `common` holds
//! the helper that lays out a node (config, key, tree, state directory).

mod common;
mod local;
mod regressions;
mod spec_example;
mod store_fixture;
