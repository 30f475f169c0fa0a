//! What each command prints: a table or a line for people, one JSON
//! document with `--json`. Logs and progress never go to stdout.

use std::path::Path;

use serde_json::json;

use super::Cli;
use crate::engine::{CheckReport, LsEntry, VerifyReport};
use crate::peer::SyncReport;
use crate::restore::RestoreReport;
use crate::store::Conflict;
use crate::store::{GcReport, Generation};
use crate::tree::Timestamp;

/// Appends a line to the command's output.
macro_rules! say {
    ($o:expr) => {{
        $o.push('\n');
    }};
    ($o:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($arg)*);
    }};
}

pub(super) fn print_json(o: &mut String, v: &serde_json::Value) {
    say!(o, "{}", serde_json::to_string_pretty(v).expect("JSON values always serialize"));
}

/// RFC 3339 UTC time with seconds.
pub fn time(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(t.to_system()).to_string()
}

fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

pub(super) fn keygen(o: &mut String, cli: &Cli, file: &Path) {
    if cli.json {
        print_json(o, &json!({ "key_file": file }));
    } else if !cli.quiet {
        say!(o, "wrote new group key to {}", file.display());
    }
}

pub(super) fn check(o: &mut String, cli: &Cli, r: &CheckReport) {
    if cli.json {
        print_json(o, &serde_json::to_value(r).expect("report serializes"));
        return;
    }
    if cli.quiet {
        return;
    }
    for g in &r.groups {
        let what =
            if g.changed { format!("{} entries changed", g.stats.entries_changed) } else { "unchanged".to_owned() };
        let generation = g.generation.map(|id| format!(", generation {id} recorded")).unwrap_or_default();
        say!(
            o,
            "{}: {what}{generation} ({} entries seen, {} files read, {})",
            g.group,
            g.stats.entries_seen,
            g.stats.files_read,
            bytes(g.stats.bytes_read)
        );
    }
    scan_problems(o, &r.problems);
}

/// The paths a scan could not take, each with the reason: the run may have
/// happened in the daemon, whose log the caller does not see.
fn scan_problems(o: &mut String, problems: &[crate::scan::Problem]) {
    let errors = problems.iter().filter(|p| p.severity == crate::scan::Severity::Error).count();
    for p in problems {
        let what = if p.severity == crate::scan::Severity::Error { "error" } else { "skipped" };
        say!(o, "{what}: {p}");
    }
    if errors > 0 {
        say!(o, "{errors} paths could not be scanned");
    }
}

pub(super) fn ls(o: &mut String, cli: &Cli, entries: &[LsEntry]) {
    if cli.json {
        print_json(o, &json!({ "entries": entries }));
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
        say!(
            o,
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

pub(super) fn generations(o: &mut String, cli: &Cli, gens: &[Generation]) {
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
        print_json(o, &json!({ "generations": list }));
        return;
    }
    if gens.is_empty() {
        if !cli.quiet {
            say!(o, "no generations (groups without backup-directory keep none)");
        }
        return;
    }
    say!(o, "{:>5}  {:<20}  {:<12} {:>8} {:>11} {:>11}  CAUSE", "ID", "TIME", "GROUP", "ENTRIES", "SIZE", "ADDED");
    for g in gens {
        say!(
            o,
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

pub(super) fn restore(o: &mut String, cli: &Cli, r: &RestoreReport) {
    if cli.json {
        let mut v = serde_json::to_value(r).expect("report serializes");
        v["problems"] =
            r.problems.iter().map(|p| json!({ "path": p.path.to_string_lossy(), "message": p.message })).collect();
        print_json(o, &v);
        return;
    }
    if cli.quiet {
        return;
    }
    say!(
        o,
        "restored generation {}: {} files written ({}), {} already right, {} entries removed",
        r.generation,
        r.files_written,
        bytes(r.bytes_written),
        r.files_kept,
        r.entries_removed
    );
    if let Some(b) = r.before {
        say!(o, "the state before the restore is generation {b}");
    }
    if !r.problems.is_empty() {
        say!(o, "{} paths could not be restored (see above)", r.problems.len());
    }
}

pub(super) fn gc(o: &mut String, cli: &Cli, r: &GcReport) {
    if cli.json {
        print_json(o, &serde_json::to_value(r).expect("report serializes"));
    } else if !cli.quiet {
        say!(
            o,
            "dropped {} generations, freed {} chunks ({}) and {} tree nodes",
            r.generations_dropped.len(),
            r.chunks_freed,
            bytes(r.bytes_freed),
            r.nodes_freed
        );
    }
}

pub(super) fn verify(o: &mut String, cli: &Cli, r: &VerifyReport) {
    if cli.json {
        print_json(o, &serde_json::to_value(r).expect("report serializes"));
        return;
    }
    for m in &r.mismatches {
        say!(o, "MISMATCH {}: {}", m.path, m.problem);
    }
    if !cli.quiet {
        say!(
            o,
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

pub(super) fn sync(o: &mut String, cli: &Cli, r: &SyncReport, dry_run: bool) {
    if cli.json {
        print_json(o, &serde_json::to_value(r).expect("report serializes"));
        return;
    }
    if cli.quiet {
        return;
    }
    if let Some(check) = &r.check {
        scan_problems(o, &check.problems);
    }
    let done = if dry_run { "to apply" } else { "applied" };
    for p in &r.peers {
        if let Some(e) = &p.error {
            say!(o, "{} with {}: failed: {e}", p.group, p.peer);
            continue;
        }
        if p.in_sync && p.pushed.is_empty() {
            say!(o, "{} with {}: in sync", p.group, p.peer);
            continue;
        }
        let here = p.pulled.as_ref().map(|x| x.changes.as_slice()).unwrap_or_default();
        say!(
            o,
            "{} with {}: {} changes {done} here, {} there",
            p.group,
            p.peer,
            here.len(),
            p.pushed.len() as u64 + p.pushed_more
        );
        for c in here {
            say!(o, "  here   {:<8} {}", c.action.as_str(), c.path);
        }
        for c in &p.pushed {
            say!(o, "  {:<6} {:<8} {}", p.peer, c.action.as_str(), c.path);
        }
        if p.pushed_more > 0 {
            say!(o, "  {:<6} ... and {} more", p.peer, p.pushed_more);
        }
        if let Some(pulled) = &p.pulled {
            for problem in &pulled.problems {
                say!(o, "  not applied: {problem}");
            }
        }
    }
    let conflicts = r.conflicts();
    if conflicts > 0 {
        say!(
            o,
            "{conflicts} conflicts: nothing was overwritten; see `snapsync conflicts`, settle with `snapsync force PATH`"
        );
    }
}

pub(super) fn status(o: &mut String, cli: &Cli, r: &SyncReport, conflicts: &[Conflict], stats: &crate::peer::Stats) {
    if cli.json {
        let mut v = serde_json::to_value(r).expect("report serializes");
        v["conflicts"] = conflicts_json(conflicts);
        v["served"] = stats.to_json();
        print_json(o, &v);
        return;
    }
    sync(o, cli, r, true);
    if !conflicts.is_empty() && !cli.quiet {
        say!(o, "{} unresolved conflicts (`snapsync conflicts`)", conflicts.len());
    }
}

fn version(v: &crate::store::Version) -> String {
    v.0.iter().map(|(h, c)| format!("{h}:{c}")).collect::<Vec<_>>().join(",")
}

fn side(r: Option<&crate::store::EntryRecord>) -> String {
    match r {
        None => "absent".to_owned(),
        Some(r) if r.deleted => format!("deleted [{}]", version(&r.version)),
        Some(r) => {
            let what = match &r.body {
                crate::tree::Body::File { size, content } => format!("file {} {}", bytes(*size), content.short()),
                crate::tree::Body::Dir { .. } => "directory".to_owned(),
                crate::tree::Body::Symlink { target } => format!("symlink -> {}", String::from_utf8_lossy(target)),
            };
            let mtime = r.meta.mtime.map(|t| format!(" modified {}", time(t))).unwrap_or_default();
            format!("{what}{mtime} [{}]", version(&r.version))
        }
    }
}

fn conflicts_json(conflicts: &[Conflict]) -> serde_json::Value {
    json!(
        conflicts
            .iter()
            .map(|c| json!({
                "group": c.group,
                "path": String::from_utf8_lossy(&c.path),
                "peer": c.peer,
                "kind": c.kind,
                "local": side(c.local.as_ref()),
                "remote": side(c.remote.as_ref()),
                "found": time(c.time),
            }))
            .collect::<Vec<_>>()
    )
}

pub(super) fn conflicts(o: &mut String, cli: &Cli, conflicts: &[Conflict]) {
    if cli.json {
        print_json(o, &json!({ "conflicts": conflicts_json(conflicts) }));
        return;
    }
    if conflicts.is_empty() {
        if !cli.quiet {
            say!(o, "no conflicts");
        }
        return;
    }
    for c in conflicts {
        say!(o, "{} {} ({}, with {})", c.group, String::from_utf8_lossy(&c.path), c.kind, c.peer);
        say!(o, "  here:  {}", side(c.local.as_ref()));
        say!(o, "  {}: {}", c.peer, side(c.remote.as_ref()));
    }
}

pub(super) fn forced(o: &mut String, cli: &Cli, forced: &[(String, String)]) {
    if cli.json {
        let list: Vec<_> = forced.iter().map(|(g, p)| json!({ "group": g, "path": p })).collect();
        print_json(o, &json!({ "forced": list }));
    } else if !cli.quiet {
        for (g, p) in forced {
            say!(o, "{g} {p}: the local version wins its next conflict");
        }
    }
}

pub(super) fn trusted(o: &mut String, cli: &Cli, peer: &str, had_pin: bool) {
    if cli.json {
        print_json(o, &json!({ "peer": peer, "forgotten": had_pin }));
    } else if !cli.quiet {
        if had_pin {
            say!(o, "forgot the pinned key of {peer}; the key it presents next is pinned");
        } else {
            say!(o, "no key was pinned for {peer}");
        }
    }
}
