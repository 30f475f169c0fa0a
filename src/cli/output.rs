//! What each command prints: a table or a line for people, one JSON
//! document with `--json`. Logs and progress never go to stdout.
//!
//! Names in text output are *escaped* ([`escape`]): file names, link
//! targets and error messages come from any peer of the group, and a name
//! holding `ESC [` or a newline must not recolour, move or fake lines on the
//! operator's terminal. JSON output stays exact (serde_json escapes on its
//! own).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use serde_json::json;

use super::Cli;
use crate::config::ResolvedGroup;
use crate::engine::{CheckReport, LsEntry, VerifyReport};
use crate::engine::{GenerationDiff, History};
use crate::peer::SyncReport;
use crate::proto::ChangeAction;
use crate::restore::{RestorePlan, RestoreReport};
use crate::store::{Conflict, Force};
use crate::store::{GcReport, Generation, KeepReason};
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

/// Text safe to print on a terminal, as bytes it stands for can be told
/// back from it: printable characters stay, a backslash becomes `\\`,
/// newline, tab and carriage return become `\n`, `\t` and `\r`, and every
/// other control character (C0, DEL, C1), every bidirectional formatting
/// character, and every byte that is not part of valid UTF-8 becomes
/// `\xNN`, one per byte (so a C1 character shows as the
/// two bytes of its UTF-8 form). Pasted inside bash's `$'...'` the result
/// gives the original bytes back.
pub fn escape_bytes(b: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(b) {
        return escape(s);
    }
    let mut out = String::with_capacity(b.len() + 16);
    for chunk in b.utf8_chunks() {
        escape_into(&mut out, chunk.valid());
        for byte in chunk.invalid() {
            push_hex(&mut out, *byte);
        }
    }
    Cow::Owned(out)
}

/// [`escape_bytes`] of a string: unchanged (borrowed) when nothing needs
/// escaping, which is the common case.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    escape_into(&mut out, s);
    Cow::Owned(out)
}

/// [`escape_bytes`] of a path.
pub fn escape_path(p: &Path) -> Cow<'_, str> {
    escape_bytes(p.as_os_str().as_encoded_bytes())
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_bidi_control(c)
}

/// Unicode's bidirectional formatting characters (embeddings, overrides,
/// isolates, and the marks): they reorder what a terminal shows, so a name
/// could display as another ("Trojan Source", CVE-2021-42574).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // `is_control` is Unicode's Cc: C0, DEL and C1, exactly.
            c if c.is_control() || is_bidi_control(c) => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    push_hex(out, b);
                }
            }
            c => out.push(c),
        }
    }
}

fn push_hex(out: &mut String, b: u8) {
    use std::fmt::Write as _;
    let _ = write!(out, "\\x{b:02x}");
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

/// The JSON document of a command that failed: why, and its exit status.
pub(super) fn error_json(why: &str, code: u8) -> String {
    let mut o = String::new();
    print_json(&mut o, &json!({ "error": why, "exit_code": code }));
    o
}

pub(super) fn keygen(o: &mut String, cli: &Cli, file: &Path) {
    if cli.json {
        print_json(o, &json!({ "key_file": file }));
    } else if !cli.quiet {
        say!(o, "wrote new group key to {}", escape_path(file));
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
        let what = if g.changed {
            format!("{} changed", count(g.stats.entries_changed, "entry", "entries"))
        } else {
            "unchanged".to_owned()
        };
        let generation = g.generation.map(|id| format!(", generation {id} recorded")).unwrap_or_default();
        say!(
            o,
            "{}: {what}{generation} ({} seen, {} read, {})",
            g.group,
            count(g.stats.entries_seen, "entry", "entries"),
            count(g.stats.files_read, "file", "files"),
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
        say!(o, "{what}: {}: {}", escape_path(&p.path), escape(&p.message));
    }
    if errors > 0 {
        say!(o, "{} could not be scanned", count(errors as u64, "path", "paths"));
    }
}

pub(super) fn ls(o: &mut String, cli: &Cli, entries: &[LsEntry]) {
    if cli.json {
        print_json(o, &json!({ "entries": entries }));
        return;
    }
    if !entries.is_empty() && !cli.quiet {
        say!(o, "{:<7} {:>4} {:>11} {:>12} {:<30} {:<19} PATH", "KIND", "MODE", "OWNER", "SIZE", "MODIFIED", "CONTENT");
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
            (None, Some(t)) => format!("-> {}", escape(t)),
            (None, None) => "-".to_owned(),
        };
        say!(
            o,
            "{:<7} {:>4} {:>11} {:>12} {:<30} {:<19} {}",
            e.kind,
            e.mode.as_deref().unwrap_or("-"),
            owner,
            e.size.map_or("-".into(), |s| s.to_string()),
            e.mtime.as_deref().map_or("-".into(), ls_time),
            what,
            escape_path(&e.path)
        );
    }
}

/// An `ls` mtime (`seconds.nanoseconds`) as a UTC date and time to the
/// nanosecond; as it is if it does not parse.
fn ls_time(raw: &str) -> String {
    let parsed = raw.split_once('.').and_then(|(s, n)| Some((s.parse::<i64>().ok()?, n.parse::<u32>().ok()?)));
    match parsed {
        Some((secs, nanos)) if secs >= 0 => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos);
            humantime::format_rfc3339_nanos(t).to_string()
        }
        _ => raw.to_owned(),
    }
}

/// Why a generation is kept, for people ("-" when the next collection
/// drops it).
fn kept_text(groups: &[ResolvedGroup], group: &str, reasons: &[KeepReason]) -> String {
    if reasons.is_empty() {
        return "- (dropped by the next gc)".to_owned();
    }
    let parts: Vec<String> = reasons
        .iter()
        .map(|r| match r {
            KeepReason::Newest => "newest".to_owned(),
            KeepReason::Restoring => "being restored".to_owned(),
            KeepReason::RestoredBy(by) => format!("restored by generation {by}"),
            KeepReason::Versions { paths: 1, example } => {
                format!("a version of {}", local_text(groups, group, &String::from_utf8_lossy(example)))
            }
            KeepReason::Versions { paths, example } => format!(
                "versions of {paths} paths ({}, ...)",
                local_text(groups, group, &String::from_utf8_lossy(example))
            ),
            KeepReason::Within => "backup-keep within".to_owned(),
            KeepReason::Bucket(rule) => format!("backup-keep {rule}"),
        })
        .collect();
    parts.join("; ")
}

/// Why a generation is kept, as JSON objects.
fn kept_json(groups: &[ResolvedGroup], group: &str, reasons: &[KeepReason]) -> Vec<serde_json::Value> {
    let path = |logical: &[u8]| {
        let logical = String::from_utf8_lossy(logical);
        groups
            .iter()
            .find(|g| g.name == group)
            .and_then(|g| g.to_local(Path::new(&*logical)))
            .map_or_else(|| logical.to_string(), |p| p.to_string_lossy().into_owned())
    };
    reasons
        .iter()
        .map(|r| match r {
            KeepReason::Newest => json!({ "reason": "newest" }),
            KeepReason::Restoring => json!({ "reason": "restoring" }),
            KeepReason::RestoredBy(by) => json!({ "reason": "restored", "by": by }),
            KeepReason::Versions { paths, example } => {
                json!({ "reason": "versions", "paths": paths, "example": path(example) })
            }
            KeepReason::Within => json!({ "reason": "within" }),
            KeepReason::Bucket(rule) => json!({ "reason": rule }),
        })
        .collect()
}

pub(super) fn generations(
    o: &mut String,
    cli: &Cli,
    groups: &[ResolvedGroup],
    gens: &[Generation],
    kept: &HashMap<u64, Vec<KeepReason>>,
) {
    let none = Vec::new();
    let reasons = |g: &Generation| kept.get(&g.id).unwrap_or(&none);
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
                    "kept": kept_json(groups, &g.group, reasons(g)),
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
    let causes: Vec<Cow<'_, str>> = gens.iter().map(|g| escape(&g.cause)).collect();
    let width = causes.iter().map(|c| c.chars().count()).max().unwrap_or(0).max("CAUSE".len());
    say!(
        o,
        "{:>5}  {:<20}  {:<12} {:>8} {:>11} {:>11}  {:<width$}  KEPT",
        "ID",
        "TIME",
        "GROUP",
        "ENTRIES",
        "SIZE",
        "ADDED",
        "CAUSE"
    );
    for (g, cause) in gens.iter().zip(&causes) {
        say!(
            o,
            "{:>5}  {:<20}  {:<12} {:>8} {:>11} {:>11}  {:<width$}  {}",
            g.id,
            time(g.time),
            g.group,
            g.entries,
            bytes(g.bytes),
            bytes(g.added_bytes),
            cause,
            kept_text(groups, &g.group, reasons(g))
        );
    }
}

pub(super) fn generation_diff(o: &mut String, cli: &Cli, d: &GenerationDiff) {
    if cli.json {
        print_json(o, &serde_json::to_value(d).expect("report serializes"));
        return;
    }
    let to = d.to.map_or_else(|| "the current tree".to_owned(), |m| format!("generation {m}"));
    let lines = d.changes.iter().map(|c| format!("{:<8} {:<7} {}", c.change, c.kind, escape_path(&c.path)));
    list_lines(o, cli, "", lines);
    if !cli.quiet {
        say!(
            o,
            "{} differ between generation {} and {to} (group {})",
            count(d.changes.len() as u64, "path", "paths"),
            d.from,
            d.group
        );
    }
}

pub(super) fn history(o: &mut String, cli: &Cli, h: &History) {
    if cli.json {
        let mut v = serde_json::to_value(h).expect("report serializes");
        for (x, version) in h.versions.iter().zip(v["versions"].as_array_mut().expect("a list")) {
            version["time"] = json!(time(x.time));
        }
        print_json(o, &v);
        return;
    }
    if h.versions.is_empty() {
        if !cli.quiet {
            say!(o, "no kept generation holds {}", escape_path(&h.path));
        }
        return;
    }
    say!(o, "{:>5}  {:<20}  {:<7} {:>11}  {:<16}  CAUSE", "GEN", "TIME", "KIND", "SIZE", "HASH");
    for v in &h.versions {
        let kind = if v.deleted { "deleted" } else { v.kind.unwrap_or("-") };
        let size = v.size.map_or_else(|| "-".to_owned(), bytes);
        let hash = match (&v.hash, &v.target) {
            (Some(h), _) => h.chars().take(16).collect::<String>(),
            (None, Some(t)) => format!("-> {}", escape(t)),
            (None, None) => "-".to_owned(),
        };
        say!(
            o,
            "{:>5}  {:<20}  {:<7} {:>11}  {:<16}  {}",
            v.generation,
            time(v.time),
            kind,
            size,
            hash,
            escape(&v.cause)
        );
    }
    if !cli.quiet {
        say!(
            o,
            "{} of {} kept (group {}); `snapsync restore --generation N PATH` brings one back",
            count(h.versions.len() as u64, "version", "versions"),
            escape_path(&h.path),
            h.group
        );
    }
}

pub(super) fn restore_plan(o: &mut String, cli: &Cli, p: &RestorePlan) {
    if cli.json {
        print_json(o, &serde_json::to_value(p).expect("report serializes"));
        return;
    }
    let lines = p.changes.iter().map(|c| format!("would {:<6} {:<7} {}", c.action, c.kind, escape_path(&c.path)));
    list_lines(o, cli, "", lines);
    if !cli.quiet {
        let writes = p.changes.iter().filter(|c| c.action == "write").count() as u64;
        let removes = p.changes.len() as u64 - writes;
        say!(
            o,
            "restoring generation {} would write {} and remove {} (dry run: nothing changed)",
            p.generation,
            count(writes, "entry", "entries"),
            count(removes, "entry", "entries")
        );
    }
}

pub(super) fn restore(o: &mut String, cli: &Cli, r: &RestoreReport, to: Option<&Path>) {
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
    let place = match to {
        Some(dir) => format!("below {}", escape_path(dir)),
        None => "in place".to_owned(),
    };
    say!(
        o,
        "restored generation {} {place}: {} written ({}), {} already right, {} removed",
        r.generation,
        count(r.files_written, "file", "files"),
        bytes(r.bytes_written),
        r.files_kept,
        count(r.entries_removed, "entry", "entries")
    );
    if let Some(b) = r.before {
        say!(o, "the state before the restore is generation {b}");
    }
    for p in &r.problems {
        say!(o, "not restored: {}: {}", escape_path(&p.path), escape(&p.message));
    }
    if !r.problems.is_empty() {
        say!(o, "{} could not be restored", count(r.problems.len() as u64, "path", "paths"));
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
        say!(o, "MISMATCH {}: {}", escape(&m.path), escape(&m.problem));
    }
    if let Some(rep) = &r.repair {
        for m in &rep.lost {
            say!(o, "LOST {}: {}", escape(&m.path), escape(&m.problem));
        }
        say!(
            o,
            "repair: dropped {} damaged chunks, stored {} live files again; {} generation paths are lost",
            rep.chunks_dropped,
            rep.files_stored,
            rep.lost.len()
        );
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

/// How many entries of a long list are printed without `-v`.
const LIST_CUT: usize = 50;

/// `n` and the noun, singular or plural.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The path on this host that logical path `logical` of `group` names,
/// escaped for a terminal: what `force`, `restore` and `ls` take. The
/// logical path itself when this host does not map it (a group or root it
/// does not have).
fn local_text(groups: &[ResolvedGroup], group: &str, logical: &str) -> String {
    let local = groups.iter().find(|g| g.name == group).and_then(|g| g.to_local(Path::new(logical)));
    match local {
        Some(p) => escape_path(&p).into_owned(),
        None => escape(logical).into_owned(),
    }
}

/// Lists `items` (already formatted lines), all of them with `-v`, else at
/// most [`LIST_CUT`] and a count of the rest.
fn list_lines(o: &mut String, cli: &Cli, indent: &str, items: impl ExactSizeIterator<Item = String>) {
    list_lines_of(o, cli, indent, items, 0);
}

/// [`list_lines`] for a list that leaves out `unlisted` more items, which
/// the count of the rest includes.
fn list_lines_of(o: &mut String, cli: &Cli, indent: &str, items: impl ExactSizeIterator<Item = String>, unlisted: u64) {
    let total = items.len();
    let shown = if cli.verbose > 0 { total } else { total.min(LIST_CUT) };
    for line in items.take(shown) {
        say!(o, "{indent}{line}");
    }
    let rest = (total - shown) as u64 + unlisted;
    if rest > 0 {
        let where_all = if unlisted > 0 { "the log's audit lines list them all" } else { "`-v` lists them all" };
        say!(o, "{indent}... and {rest} more ({where_all})");
    }
}

/// What one peer exchange changed, counted: changes (conflicts and
/// version merges left out) here and there, and conflicts.
fn tally(p: &crate::peer::PeerReport) -> (u64, u64, u64) {
    let real = |a: ChangeAction| !matches!(a, ChangeAction::Conflict | ChangeAction::Merge);
    let here =
        p.pulled.as_ref().map_or(0, |x| x.changes.iter().filter(|c| real(c.action)).count() as u64 + x.more_changes);
    let there = p.pushed.iter().filter(|c| real(c.action)).count() as u64 + p.pushed_more;
    let conflicts_here = p.pulled.as_ref().map_or(0, |x| x.conflicts.len() as u64);
    let conflicts_there = p.pushed.iter().filter(|c| c.action == ChangeAction::Conflict).count() as u64;
    (here, there, conflicts_here.max(conflicts_there))
}

pub(super) fn sync(
    o: &mut String,
    cli: &Cli,
    groups: &[ResolvedGroup],
    r: &SyncReport,
    dry_run: bool,
    elapsed: Option<std::time::Duration>,
) {
    if cli.json {
        print_json(o, &serde_json::to_value(r).expect("report serializes"));
        return;
    }
    if cli.quiet {
        return;
    }
    if let Some(check) = &r.check {
        scan_problems(o, &check.problems);
        for g in check.groups.iter().filter(|g| g.pending) {
            say!(
                o,
                "{}: {} not recorded yet; the next check or sync records them",
                g.group,
                count(g.stats.entries_changed, "local change", "local changes")
            );
            let lines =
                g.pending_paths.iter().map(|path| format!("local  changed  {}", local_text(groups, &g.group, path)));
            list_lines(o, cli, "  ", lines);
        }
    }
    let done = if dry_run { "to apply" } else { "applied" };
    let (mut all_here, mut all_there, mut all_conflicts, mut received, mut failed) = (0, 0, 0, 0, 0);
    for p in &r.peers {
        if let Some(e) = &p.error {
            failed += 1;
            say!(o, "{} with {}: failed: {}", p.group, p.peer, escape(e));
            continue;
        }
        let (here, there, conflicts) = tally(p);
        all_here += here;
        all_there += there;
        all_conflicts += conflicts;
        received += p.pulled.as_ref().map_or(0, |x| x.bytes_fetched);
        let problems_here = p.pulled.as_ref().map_or(&[][..], |x| x.problems.as_slice());
        if here == 0 && there == 0 && conflicts == 0 && problems_here.is_empty() && p.pushed_problems_total == 0 {
            say!(o, "{} with {}: {}", p.group, p.peer, if p.in_sync { "in sync" } else { "nothing to do" });
            continue;
        }
        let mut parts = vec![format!("{} {done} here", count(here, "change", "changes")), format!("{there} there")];
        if conflicts > 0 {
            parts.push(count(conflicts, "conflict", "conflicts"));
        }
        say!(o, "{} with {}: {}", p.group, p.peer, parts.join(", "));
        let pulled = p.pulled.as_ref().map(|x| x.changes.as_slice()).unwrap_or_default();
        let lines = pulled
            .iter()
            .filter(|c| c.action != ChangeAction::Merge)
            .map(|c| format!("{:<8} {:<8} {}", "here", c.action.as_str(), local_text(groups, &p.group, &c.path)))
            .chain(
                p.pushed
                    .iter()
                    .filter(|c| c.action != ChangeAction::Merge)
                    // A conflict both sides found is listed once, as here.
                    .filter(|c| {
                        c.action != ChangeAction::Conflict
                            || !pulled.iter().any(|h| h.action == ChangeAction::Conflict && h.path == c.path)
                    })
                    .map(|c| {
                        format!("{:<8} {:<8} {}", p.peer, c.action.as_str(), local_text(groups, &p.group, &c.path))
                    }),
            )
            .collect::<Vec<_>>();
        list_lines_of(o, cli, "  ", lines.into_iter(), p.pulled.as_ref().map_or(0, |x| x.more_changes));
        if p.pushed_more > 0 {
            say!(o, "  {:<8} ... and {} more", p.peer, p.pushed_more);
        }
        for problem in problems_here {
            say!(o, "  not applied here: {}", escape(problem));
        }
        for problem in &p.pushed_problems {
            say!(o, "  not applied on {}: {}", p.peer, escape(problem));
        }
        let unlisted = p.pushed_problems_total.saturating_sub(p.pushed_problems.len() as u64);
        if unlisted > 0 {
            say!(o, "  not applied on {}: ... and {unlisted} more (see its log)", p.peer);
        }
    }
    if all_conflicts > 0 {
        say!(
            o,
            "{}: nothing was overwritten; see `snapsync conflicts`, settle with `snapsync force PATH`",
            count(all_conflicts, "conflict", "conflicts")
        );
    }
    // The closing line: what the whole run did, where it is seen last.
    let mut parts = vec![
        count(r.peers.len() as u64, "exchange", "exchanges"),
        format!("{} {done} here, {all_there} there", count(all_here, "change", "changes")),
    ];
    if all_conflicts > 0 {
        parts.push(count(all_conflicts, "conflict", "conflicts"));
    }
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if received > 0 {
        parts.push(format!("{} received", bytes(received)));
    }
    if let Some(t) = elapsed {
        parts.push(format!("{:.2} s", t.as_secs_f64()));
    }
    say!(o, "{}: {}", if dry_run { "dry run" } else { "sync" }, parts.join(", "));
}

pub(super) fn status(
    o: &mut String,
    cli: &Cli,
    groups: &[ResolvedGroup],
    r: &SyncReport,
    conflicts: &[Conflict],
    forces: &[Force],
    stats: &crate::peer::Stats,
) {
    if cli.json {
        let mut v = serde_json::to_value(r).expect("report serializes");
        v["conflicts"] = conflicts_json(groups, conflicts);
        v["forces"] = forces_json(forces);
        v["served"] = serde_json::to_value(stats.snapshot()).expect("counters serialize");
        print_json(o, &v);
        return;
    }
    sync(o, cli, groups, r, true, None);
    if !conflicts.is_empty() && !cli.quiet {
        say!(
            o,
            "{} (`snapsync conflicts`)",
            count(conflicts.len() as u64, "unresolved conflict", "unresolved conflicts")
        );
    }
    if !forces.is_empty() && !cli.quiet {
        say!(o, "{} (`snapsync force --list`):", count(forces.len() as u64, "force pending", "forces pending"));
        force_lines(o, groups, forces);
    }
}

fn version(v: &crate::store::Version) -> String {
    v.0.iter().map(|(h, c)| format!("{h}:{c}")).collect::<Vec<_>>().join(",")
}

/// One side of a conflict for people; `verbose` adds the version vector.
/// The peer-chosen link target is escaped for a terminal.
fn side_text(r: Option<&crate::store::EntryRecord>, verbose: bool) -> String {
    let mut text = match r {
        None => "never had it".to_owned(),
        Some(r) if r.deleted => "deleted".to_owned(),
        Some(r) => {
            let what = match &r.body {
                crate::tree::Body::File { size, content } => {
                    format!("file, {}, content {}", bytes(*size), content.short())
                }
                crate::tree::Body::Dir { .. } => "directory".to_owned(),
                crate::tree::Body::Symlink { target } => format!("symlink to {}", escape_bytes(target)),
            };
            match r.meta.mtime {
                Some(t) => format!("{what}, modified {}", time(t)),
                None => what,
            }
        }
    };
    if verbose && let Some(r) = r {
        text.push_str(&format!(" (version {})", version(&r.version)));
    }
    text
}

/// One side of a conflict as JSON: what is there, field by field.
fn side_json(r: Option<&crate::store::EntryRecord>) -> serde_json::Value {
    let Some(r) = r else { return json!({ "state": "absent" }) };
    let versions: serde_json::Map<String, serde_json::Value> =
        r.version.0.iter().map(|(h, c)| (h.clone(), json!(c))).collect();
    if r.deleted {
        return json!({ "state": "deleted", "version": versions });
    }
    let mut v = match &r.body {
        crate::tree::Body::File { size, content } => {
            json!({ "state": "file", "size": size, "content": content.to_hex() })
        }
        crate::tree::Body::Dir { .. } => json!({ "state": "directory" }),
        crate::tree::Body::Symlink { target } => {
            json!({ "state": "symlink", "target": String::from_utf8_lossy(target) })
        }
    };
    if let Some(t) = r.meta.mtime {
        v["mtime"] = json!(time(t));
    }
    v["version"] = json!(versions);
    v
}

fn conflicts_json(groups: &[ResolvedGroup], conflicts: &[Conflict]) -> serde_json::Value {
    json!(
        conflicts
            .iter()
            .map(|c| {
                let logical = String::from_utf8_lossy(&c.path);
                let local = groups.iter().find(|g| g.name == c.group).and_then(|g| g.to_local(Path::new(&*logical)));
                json!({
                    "group": c.group,
                    "path": logical,
                    "local_path": local.map(|p| p.to_string_lossy().into_owned()),
                    "peer": c.peer,
                    "kind": c.kind,
                    "local": side_json(c.local.as_ref()),
                    "remote": side_json(c.remote.as_ref()),
                    "found": time(c.time),
                })
            })
            .collect::<Vec<_>>()
    )
}

pub(super) fn conflicts(o: &mut String, cli: &Cli, groups: &[ResolvedGroup], conflicts: &[Conflict]) {
    if cli.json {
        print_json(o, &json!({ "conflicts": conflicts_json(groups, conflicts) }));
        return;
    }
    if conflicts.is_empty() {
        if !cli.quiet {
            say!(o, "no conflicts");
        }
        return;
    }
    let width = conflicts.iter().map(|c| c.peer.len()).max().unwrap_or(0).max("here".len());
    for c in conflicts {
        let path = local_text(groups, &c.group, &String::from_utf8_lossy(&c.path));
        say!(o, "{path}  ({}, group {}, with {})", c.kind, c.group, c.peer);
        say!(o, "  {:<width$}  {}", "here", side_text(c.local.as_ref(), cli.verbose > 0));
        say!(o, "  {:<width$}  {}", c.peer, side_text(c.remote.as_ref(), cli.verbose > 0));
    }
    say!(
        o,
        "{}; settle each with `snapsync force PATH` on the host whose version should win",
        count(conflicts.len() as u64, "conflict", "conflicts")
    );
}

fn forces_json(forces: &[Force]) -> serde_json::Value {
    json!(
        forces
            .iter()
            .map(|f| json!({
                "group": f.group,
                "path": String::from_utf8_lossy(&f.path),
                "versions": f.versions.iter().map(version).collect::<Vec<_>>(),
                "reached": f.reached,
                "forced": time(f.time),
            }))
            .collect::<Vec<_>>()
    )
}

/// One line per force: group, path, and the peers it has reached.
fn force_lines(o: &mut String, groups: &[ResolvedGroup], forces: &[Force]) {
    for f in forces {
        let reached = if f.reached.is_empty() {
            String::new()
        } else {
            format!(" (reached {})", f.reached.iter().map(|p| escape(p).into_owned()).collect::<Vec<_>>().join(", "))
        };
        let path = local_text(groups, &f.group, &String::from_utf8_lossy(&f.path));
        say!(o, "  {path}  (group {}, forced {}{reached})", f.group, time(f.time));
    }
}

/// `force` (`cancelled`: `force --cancel`): the forces made or dropped.
pub(super) fn forced(o: &mut String, cli: &Cli, groups: &[ResolvedGroup], forces: &[Force], cancelled: bool) {
    if cli.json {
        let key = if cancelled { "cancelled" } else { "forced" };
        print_json(o, &json!({ key: forces_json(forces) }));
    } else if !cli.quiet {
        for f in forces {
            let path = local_text(groups, &f.group, &String::from_utf8_lossy(&f.path));
            if cancelled {
                say!(o, "{path}: force cancelled");
            } else {
                say!(o, "{path}: this version wins its conflict, or its next reconcile, with each peer");
            }
        }
    }
}

/// `force --list`: the forces pending.
pub(super) fn forces(o: &mut String, cli: &Cli, groups: &[ResolvedGroup], forces: &[Force]) {
    if cli.json {
        print_json(o, &json!({ "forces": forces_json(forces) }));
    } else if !cli.quiet {
        if forces.is_empty() {
            say!(o, "no forces pending");
        } else {
            force_lines(o, groups, forces);
        }
    }
}

pub(super) fn trusted(o: &mut String, cli: &Cli, peer: &str, had_pin: bool) {
    if cli.json {
        print_json(o, &json!({ "peer": peer, "forgotten": had_pin }));
    } else if !cli.quiet {
        if had_pin {
            say!(o, "forgot the pinned key of {}; the key it presents next is pinned", escape(peer));
        } else {
            say!(o, "no key was pinned for {}", escape(peer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_printable_text_alone() {
        assert!(matches!(escape("plain/dir/é ü 日本.txt"), Cow::Borrowed(_)));
        assert!(matches!(escape_bytes("a b/c".as_bytes()), Cow::Borrowed(_)));
    }

    #[test]
    fn a_diff_escapes_the_peers_text_on_a_terminal_only() {
        let theirs = "a\tb\n\x1b[2Jwiped\n";
        let ours = "a\tb\nkept\n";
        let shown = unified(theirs, ours, "b:/f", "a:/f", true);
        assert_eq!(shown, "--- b:/f\n+++ a:/f\n@@ -1,2 +1,2 @@\n a\tb\n-\\x1b[2Jwiped\n+kept\n");
        let exact = unified(theirs, ours, "b:/f", "a:/f", false);
        assert!(exact.contains("-\x1b[2Jwiped\n"), "{exact:?}");
    }

    #[test]
    fn escape_shows_control_characters_as_c_escapes() {
        assert_eq!(escape("red\x1b[31mX\nfake line"), "red\\x1b[31mX\\nfake line");
        assert_eq!(escape("a\tb\rc\0d\x7fe"), "a\\tb\\rc\\x00d\\x7fe");
        // C1: the CSI character U+009B is the two bytes of its UTF-8 form.
        assert_eq!(escape("x\u{9b}31m"), "x\\xc2\\x9b31m");
        // A backslash is doubled, so `\n` in a name stays told apart from a newline.
        assert_eq!(escape("back\\nslash"), "back\\\\nslash");
    }

    #[test]
    fn escape_bytes_shows_invalid_utf8_as_hex() {
        assert_eq!(escape_bytes(b"ok\xff\xfe-\xc3\xa9-\xc3"), "ok\\xff\\xfe-é-\\xc3");
        assert_eq!(escape_path(Path::new("/t/\x1b]0;title\x07")), "/t/\\x1b]0;title\\x07");
    }

    /// A right-to-left override would make `txt.exe` display as `exe.txt`.
    #[test]
    fn escape_shows_bidi_formatting_characters_as_hex() {
        assert_eq!(escape("a\u{202e}txt.exe"), "a\\xe2\\x80\\xaetxt.exe");
        assert_eq!(escape("x\u{2066}y\u{2069}"), "x\\xe2\\x81\\xa6y\\xe2\\x81\\xa9");
    }

    #[test]
    fn escape_output_has_no_control_characters() {
        let all: Vec<u8> = (0..=255u8).collect();
        let shown = escape_bytes(&all);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        let utf8: String = (0u32..0x250).filter_map(char::from_u32).collect();
        assert!(!escape(&utf8).chars().any(char::is_control));
    }
}

/// The text of a live file's side, when a unified diff can show it.
fn text_of(side: &crate::peer::PeekSide) -> Option<&str> {
    side.record.as_ref().filter(|r| !r.deleted && matches!(r.body, crate::tree::Body::File { .. }))?;
    side.content.as_deref().and_then(diffable)
}

/// Whether `bytes` is text a unified diff can show: UTF-8 with no NUL.
fn diffable(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|s| !s.contains('\0'))
}

/// A unified diff of the peer's text (`---`) against this host's (`+++`),
/// the two named in the header as given. With `escaped` (for a terminal)
/// every hunk line is escaped except its tabs: the content comes from the
/// peer. Without (for JSON), the text is exact.
fn unified(theirs: &str, ours: &str, their_name: &str, our_name: &str, escaped: bool) -> String {
    let diff = similar::TextDiff::from_lines(theirs, ours);
    let hunks = diff.unified_diff().context_radius(3).missing_newline_hint(true).to_string();
    let mut out = format!("--- {their_name}\n+++ {our_name}\n");
    if !escaped {
        out.push_str(&hunks);
        return out;
    }
    for line in hunks.lines() {
        let shown: Vec<Cow<'_, str>> = line.split('\t').map(escape).collect();
        out.push_str(&shown.join("\t"));
        out.push('\n');
    }
    out
}

/// `diff`: for each peer, a unified diff of a small text file that
/// differs, or both sides' kind, size, hash, time and version.
pub(super) fn diff(o: &mut String, cli: &Cli, host: &str, report: &crate::peer::DiffReport) {
    let path = escape_path(&report.path);
    let theirs_and_ours = |remote: &crate::peer::PeekSide, peer: &str, escaped: bool| {
        let (theirs, ours) = (text_of(remote)?, text_of(&report.local)?);
        let path = if escaped { path.clone() } else { report.path.to_string_lossy() };
        Some(unified(theirs, ours, &format!("{peer}:{path}"), &format!("{host}:{path}"), escaped))
    };
    if cli.json {
        let peers: Vec<serde_json::Value> = report
            .peers
            .iter()
            .map(|p| match &p.remote {
                Ok(remote) => {
                    let same = remote.same_as(&report.local);
                    let diff = if same { None } else { theirs_and_ours(remote, &p.peer, false) };
                    json!({
                        "peer": p.peer,
                        "same": same,
                        "remote": side_json(remote.record.as_ref()),
                        "diff": diff,
                        "error": null,
                    })
                }
                Err(e) => json!({ "peer": p.peer, "same": null, "remote": null, "diff": null, "error": e.to_string() }),
            })
            .collect();
        print_json(
            o,
            &json!({
                "path": report.path.to_string_lossy(),
                "group": report.group,
                "logical_path": String::from_utf8_lossy(&report.logical),
                "local": side_json(report.local.record.as_ref()),
                "unrecorded": report.unrecorded,
                "peers": peers,
            }),
        );
        return;
    }
    if report.unrecorded {
        say!(
            o,
            "{path}: changed here since the last check: the sides below show what was recorded; run `snapsync check {path}` to record it"
        );
    }
    for p in &report.peers {
        let remote = match &p.remote {
            Ok(r) => r,
            Err(e) => {
                say!(o, "{path}: with {}: failed: {}", p.peer, escape(&e.to_string()));
                continue;
            }
        };
        let width = p.peer.len().max(host.len());
        let sides = |o: &mut String| {
            say!(o, "  {:<width$}  {}", host, side_text(report.local.record.as_ref(), true));
            say!(o, "  {:<width$}  {}", p.peer, side_text(remote.record.as_ref(), true));
        };
        if remote.same_as(&report.local) {
            if LiveMeta::of(remote) == LiveMeta::of(&report.local) {
                say!(o, "{path}: same on {host} and {}", p.peer);
            } else {
                say!(o, "{path}: same content on {host} and {}, other metadata:", p.peer);
                sides(o);
            }
            continue;
        }
        match theirs_and_ours(remote, &p.peer, true) {
            Some(d) => {
                say!(o, "{path}: differs between {host} and {}:", p.peer);
                sides(o);
                o.push_str(&d);
            }
            None => {
                say!(o, "{path}: differs between {host} and {} (no text diff: not text, or over 1 MiB):", p.peer);
                sides(o);
            }
        }
    }
}

/// The metadata of a live entry that `diff` shows beside its content.
#[derive(PartialEq, Eq)]
struct LiveMeta(Option<crate::tree::Meta>);

impl LiveMeta {
    fn of(side: &crate::peer::PeekSide) -> LiveMeta {
        LiveMeta(side.record.as_ref().filter(|r| !r.deleted).map(|r| r.meta.clone()))
    }
}
