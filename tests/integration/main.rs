//! Integration tests: the `snapsync` binary driven in temporary directories.
//!
//! One test binary (STYLE: one binary with a shared helper); `common` holds
//! the helper that lays out a node (config, key, tree, state directory).

mod cluster;
mod common;
mod crafted_peer;
mod csync2_cli;
mod daemon_config_reload;
mod daemon_log;
mod daemon_progress;
mod daemon_sessions;
mod faults_clock;
mod faults_disk;
mod faults_network;
mod faults_source;
mod fuzz_corpus;
mod generations_retention;
mod kill_points;
mod local;
mod model_random;
mod operator_reports;
mod packaging;
mod regressions;
mod security_flood;
mod security_hostile_peer;
mod security_hostile_user;
mod security_local_files;
mod security_part_files;
mod security_peer_limits;
mod security_socket;
mod spec_example;
mod store_damage;
mod store_fixture;
mod sync_actions;
mod sync_concurrent;
mod sync_conflicts;
mod sync_dir_conflicts;
mod sync_dry_run;
mod sync_exclude;
mod sync_force;
mod sync_in_parts;
mod sync_include_root;
mod sync_no_descent;
mod sync_propagate;
mod sync_receive_only;
mod sync_report;
mod sync_security;
mod sync_source_changed;
mod sync_status_settles;
mod sync_transfer;
mod sync_type_change;
mod udp_proxy;
mod watch_mode;
