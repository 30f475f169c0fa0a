//! What each command prints: a table or a line for people, one JSON
//! document with `--json`. Logs and progress never go to stdout.

use std::path::Path;

use serde_json::json;

use super::Cli;
use crate::engine::{CheckReport, LsEntry, VerifyReport};
use crate::restore::RestoreReport;
use crate::store::{GcReport, Generation};
use crate::tree::Timestamp;

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON values always serialize"));
}

/// RFC 3339 UTC time with seconds.
pub fn time(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(t.to_system()).to_string()
}

fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

pub(super) fn keygen(cli: &Cli, file: &Path) {
    if cli.json {
        print_json(&json!({ "key_file": file }));
    } else if !cli.quiet {
        println!("wrote new group key to {}", file.display());
    }
}

pub(super) fn check(cli: &Cli, r: &CheckReport) {
    if cli.json {
        print_json(&serde_json::to_value(r).expect("report serializes"));
        return;
    }
    if cli.quiet {
        return;
    }
    for g in &r.groups {
        let what =
            if g.changed { format!("{} entries changed", g.stats.entries_changed) } else { "unchanged".to_owned() };
        let generation = g.generation.map(|id| format!(", generation {id} recorded")).unwrap_or_default();
        println!(
            "{}: {what}{generation} ({} entries seen, {} files read, {})",
            g.group,
            g.stats.entries_seen,
            g.stats.files_read,
            bytes(g.stats.bytes_read)
        );
    }
    let errors = r.problems.iter().filter(|p| p.severity == crate::scan::Severity::Error).count();
    if errors > 0 {
        println!("{errors} paths could not be scanned (see above)");
    }
}

pub(super) fn ls(cli: &Cli, entries: &[LsEntry]) {
    if cli.json {
        print_json(&json!({ "entries": entries }));
        return;
    }
    for e in entries {
        let owner = match (e.uid, e.gid) {
            (None, None) => "-".to_owned(),
            (u, g) => {
                format!("{}:{}", u.map_or("-".into(), |u| u.to_string()), g.map_or("-".into(), |g| g.to_string()))
            }
        };
        let what = match (&e.hash, &e.target) {
            (Some(h), _) => h[..16].to_owned(),
            (None, Some(t)) => format!("-> {t}"),
            (None, None) => "-".to_owned(),
        };
        println!(
            "{:<7} {:>4} {:>11} {:>12} {:<30} {:<19} {}",
            e.kind,
            e.mode.as_deref().unwrap_or("-"),
            owner,
            e.size.map_or("-".into(), |s| s.to_string()),
            e.mtime.as_deref().unwrap_or("-"),
            what,
            e.path.display()
        );
    }
}

pub(super) fn generations(cli: &Cli, gens: &[Generation]) {
    if cli.json {
        let list: Vec<_> = gens
            .iter()
            .map(|g| {
                json!({
                    "id": g.id,
                    "group": g.group,
                    "time": time(g.time),
                    "cause": g.cause,
                    "entries": g.entries,
                    "bytes": g.bytes,
                    "added_bytes": g.added_bytes,
                    "root": g.roots.hash().to_hex(),
                })
            })
            .collect();
        print_json(&json!({ "generations": list }));
        return;
    }
    if gens.is_empty() {
        if !cli.quiet {
            println!("no generations (groups without backup-directory keep none)");
        }
        return;
    }
    println!("{:>5}  {:<20}  {:<12} {:>8} {:>11} {:>11}  CAUSE", "ID", "TIME", "GROUP", "ENTRIES", "SIZE", "ADDED");
    for g in gens {
        println!(
            "{:>5}  {:<20}  {:<12} {:>8} {:>11} {:>11}  {}",
            g.id,
            time(g.time),
            g.group,
            g.entries,
            bytes(g.bytes),
            bytes(g.added_bytes),
            g.cause
        );
    }
}

pub(super) fn restore(cli: &Cli, r: &RestoreReport) {
    if cli.json {
        let mut v = serde_json::to_value(r).expect("report serializes");
        v["problems"] =
            r.problems.iter().map(|p| json!({ "path": p.path.to_string_lossy(), "message": p.message })).collect();
        print_json(&v);
        return;
    }
    if cli.quiet {
        return;
    }
    println!(
        "restored generation {}: {} files written ({}), {} already right, {} entries removed",
        r.generation,
        r.files_written,
        bytes(r.bytes_written),
        r.files_kept,
        r.entries_removed
    );
    if let Some(b) = r.before {
        println!("the state before the restore is generation {b}");
    }
    if !r.problems.is_empty() {
        println!("{} paths could not be restored (see above)", r.problems.len());
    }
}

pub(super) fn gc(cli: &Cli, r: &GcReport) {
    if cli.json {
        print_json(&serde_json::to_value(r).expect("report serializes"));
    } else if !cli.quiet {
        println!(
            "dropped {} generations, freed {} chunks ({}) and {} tree nodes",
            r.generations_dropped.len(),
            r.chunks_freed,
            bytes(r.bytes_freed),
            r.nodes_freed
        );
    }
}

pub(super) fn verify(cli: &Cli, r: &VerifyReport) {
    if cli.json {
        print_json(&serde_json::to_value(r).expect("report serializes"));
        return;
    }
    for m in &r.mismatches {
        println!("MISMATCH {}: {}", m.path, m.problem);
    }
    if !cli.quiet {
        println!(
            "verified {} files and {} chunks: {} mismatches{}",
            r.files_checked,
            r.chunks_checked,
            r.mismatches.len(),
            if r.files_changed_since_check > 0 {
                format!(" ({} files changed since the last check were not compared)", r.files_changed_since_check)
            } else {
                String::new()
            }
        );
    }
}
