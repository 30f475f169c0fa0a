//! snapsync under csync2's name: installed as `csync2` (a symlink to the
//! binary), it takes csync2's command line, with csync2's meaning, default
//! config names and exit statuses (SPEC §3), so wrapper scripts
//! (`csync2 -m FILE; csync2 -u`) and cron lines (`csync2 -x`) keep working.
//!
//! Terms: csync2 runs in one *mode* per invocation, chosen by a flag (`-x`,
//! `-c`, `-u`, ...), with *modifiers* (`-r`, `-d`, `-v`, ...) and options
//! taking a value (`-C NAME`, `-N HOST`, `-D DIR`, `-P PEERS`, `-G GROUPS`,
//! `-k FILE`); flags combine as getopt combines them (`-cr`, `-xv`, `-TT`).
//! Each mode runs the snapsync command that does its work:
//!
//! | csync2 | snapsync |
//! |---|---|
//! | `-x [-d] [-r] [FILE...]` | `sync [--dry-run] [FILE...]` |
//! | `-u [-d] [-r] [FILE...]` | `update [--dry-run] [FILE...]` |
//! | `-c [-r] [FILE...]`, `-h [-r] FILE...` | `check [FILE...]` |
//! | `-m FILE...` | `mark FILE...` |
//! | `-f [-r] FILE...` | `force [-r] FILE...` |
//! | `-T [FILE]`, `-TT` | `status` (exit 2 when in sync, as csync2) |
//! | `-TT FILE [PEER]`, `-TT [MYNAME] PEER FILE` | `diff FILE [--peer PEER]` (exit 2 when the same) |
//! | `-M` | the paths a sync would send, and local changes not recorded |
//! | `-L` | `ls` (paths only) |
//! | `-R` | `check` (entries the configuration no longer includes go) |
//! | `-i`, `-ii`, `-iii` | `serve` |
//! | `-k FILE` | `keygen FILE` |
//!
//! Exit statuses are csync2's: 0 success, 1 any error (conflicts
//! included), and 2 for `-T` when everything is in sync and for `-L`, `-M`
//! and `-H` when they have nothing to list. `-S` and `-p` have no
//! equivalent and exit 1; `-B`, `-A`, `-I`, `-l`, `-t` change nothing
//! here and are accepted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Cli, Command, DEFAULT_STATE_DIR, EXIT_DIFFERENCES, EXIT_OK, ReconcileArgs, run_into};

/// csync2's exit statuses.
const OK: u8 = 0;
const ERROR: u8 = 1;
/// `-T`: in sync; `-TT FILE`: the same on every peer; `-L`, `-M`, `-H`:
/// nothing to list.
const EMPTY: u8 = 2;

/// Whether the program was started under csync2's name.
pub(super) fn invoked_as_csync2() -> bool {
    std::env::args_os().next().and_then(|a| Path::new(&a).file_name().map(|n| n == "csync2")).unwrap_or(false)
}

/// A csync2 command line, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Args {
    /// Mode flags in the order given (`T` once per `-T`, `i` per `-i`).
    modes: Vec<char>,
    recursive: bool,
    dry_run: bool,
    verbose: u8,
    quiet: bool,
    config_name: Option<String>,
    state_dir: Option<PathBuf>,
    host: Option<String>,
    peers: Vec<String>,
    groups: Vec<String>,
    key_file: Option<PathBuf>,
    files: Vec<PathBuf>,
}

/// Options that take a value (the rest of the word, or the next word).
const WITH_VALUE: &[char] = &['C', 'D', 'N', 'P', 'G', 'k', 'p', 's', 'W', 'Z'];
/// Flags that choose the mode.
const MODES: &[char] = &['x', 'u', 'c', 'h', 'm', 'f', 'T', 'M', 'L', 'R', 'i', 'H', 'S', 'k', 'o'];
/// Modifiers with no effect here.
const ACCEPTED: &[char] = &['B', 'A', 'I', 'l', 't', 'y', 'F', 'X', 'U'];

/// Parses csync2's command line (program name left out), getopt style.
pub(super) fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut i = 0;
    let mut files_only = false;
    while i < args.len() {
        let word = &args[i];
        i += 1;
        if files_only || !word.starts_with('-') || word == "-" {
            a.files.push(PathBuf::from(word));
            continue;
        }
        if word == "--" {
            files_only = true;
            continue;
        }
        let flags: Vec<char> = word[1..].chars().collect();
        let mut j = 0;
        while j < flags.len() {
            let f = flags[j];
            j += 1;
            if WITH_VALUE.contains(&f) {
                let value: String = if j < flags.len() {
                    flags[j..].iter().collect()
                } else if i < args.len() {
                    i += 1;
                    args[i - 1].clone()
                } else {
                    return Err(format!("option -{f} needs a value"));
                };
                j = flags.len();
                let list = || value.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>();
                match f {
                    'C' => a.config_name = Some(value.clone()),
                    'D' => a.state_dir = Some(PathBuf::from(&value)),
                    'N' => a.host = Some(value.clone()),
                    'P' => a.peers.extend(list()),
                    'G' => a.groups.extend(list()),
                    'k' => {
                        a.modes.push('k');
                        a.key_file = Some(PathBuf::from(&value));
                    }
                    'p' => {
                        return Err(
                            "-p: snapsync takes each host's port from the configuration (name@addr:port)".into()
                        );
                    }
                    // -s (timestamps file), -W, -Z: nothing to do here.
                    _ => {}
                }
                continue;
            }
            match f {
                'r' => a.recursive = true,
                'd' => a.dry_run = true,
                'v' => a.verbose = a.verbose.saturating_add(1),
                'q' => a.quiet = true,
                f if MODES.contains(&f) => a.modes.push(f),
                f if ACCEPTED.contains(&f) => {}
                f => return Err(format!("unknown option -{f}")),
            }
        }
    }
    Ok(a)
}

/// What one csync2 invocation runs: the snapsync command, and how its
/// outcome is told (`Listing` modes print their own lines).
#[derive(Debug)]
enum Plan {
    /// Run the command; map its exit status.
    Run(Command),
    /// `-T`/`-TT`: `status`, exit 2 when in sync; `-TT FILE`: `diff`,
    /// exit 2 when the same.
    Test(Command),
    /// `-L`: the tracked paths, exit 2 when none.
    ListEntries,
    /// `-M`: what a sync would send, and local changes not recorded.
    ListDirty,
    /// `-H`: csync2's hints; snapsync keeps none.
    ListHints,
}

/// The snapsync command for a parsed csync2 command line.
fn plan(a: &Args) -> Result<Plan, String> {
    let mut modes: Vec<char> = a.modes.clone();
    modes.dedup();
    // `-c` with `-u` is what `-x` does.
    if modes.contains(&'c') && modes.contains(&'u') {
        modes.retain(|&m| m != 'c' && m != 'u');
        modes.push('x');
    }
    let [mode] = modes[..] else {
        return Err(if modes.is_empty() {
            "no mode given (one of -x -u -c -m -f -T -M -L -R -i -k)".to_owned()
        } else {
            format!("more than one mode given: {}", modes.iter().map(|m| format!("-{m}")).collect::<Vec<_>>().join(" "))
        });
    };
    let files = a.files.clone();
    let needs_files = |what: &str| {
        if files.is_empty() { Err(format!("-{what} needs at least one file")) } else { Ok(()) }
    };
    Ok(match mode {
        'x' | 'u' => {
            let args =
                ReconcileArgs { paths: files, dry_run: a.dry_run, peer: a.peers.clone(), group: a.groups.clone() };
            Plan::Run(if mode == 'x' { Command::Sync(args) } else { Command::Update(args) })
        }
        'c' | 'R' => Plan::Run(Command::Check { paths: files }),
        'h' => {
            needs_files("h")?;
            Plan::Run(Command::Check { paths: files })
        }
        'm' => {
            needs_files("m")?;
            Plan::Run(Command::Mark { paths: files })
        }
        'f' => {
            needs_files("f")?;
            Plan::Run(Command::Force { paths: files, recursive: a.recursive, list: false, cancel: false })
        }
        'T' if a.modes.iter().filter(|&&m| m == 'T').count() > 1 && !files.is_empty() => Plan::Test(diff_command(a)?),
        'T' => Plan::Test(Command::Status { peer: a.peers.clone(), group: a.groups.clone() }),
        'M' => Plan::ListDirty,
        'L' => Plan::ListEntries,
        'H' => Plan::ListHints,
        'i' => Plan::Run(Command::Serve { watch: false, full_every: 600, log: super::LogSink::Stderr }),
        'k' => Plan::Run(Command::Keygen {
            file: a.key_file.clone().expect("-k sets its file"),
            no_node: super::NoNode::default(),
        }),
        'S' => {
            return Err(
                "-S (list a pair's database) has no equivalent; `snapsync status --peer PEER` compares with one peer"
                    .into(),
            );
        }
        'o' => return Err("-o (compare mode) has no equivalent; `snapsync status` lists what differs".into()),
        m => return Err(format!("-{m} is not a mode")),
    })
}

/// `-TT FILE`: `diff FILE`. The peer may be named as well, after the file
/// (`-TT FILE PEER`) or in csync2's own order (`-TT PEER FILE`, `-TT
/// MYNAME PEER FILE`), or with `-P`.
fn diff_command(a: &Args) -> Result<Command, String> {
    let word = |p: &PathBuf| p.to_string_lossy().into_owned();
    let (path, peer) = match &a.files[..] {
        [file] => (file.clone(), None),
        // The file is the word that is a path.
        [x, y] if y.is_absolute() || (y.components().count() > 1 && x.components().count() == 1) => {
            (y.clone(), Some(word(x)))
        }
        [file, peer] => (file.clone(), Some(word(peer))),
        [_me, peer, file] => (file.clone(), Some(word(peer))),
        _ => return Err("-TT takes FILE [PEER] (or MYNAME PEER FILE)".into()),
    };
    let mut peers = a.peers.clone();
    peers.extend(peer);
    Ok(Command::Diff { path, peer: peers })
}

/// csync2's system directory: `$CSYNC2_SYSTEM_DIR`, else `/etc`.
fn system_dir() -> PathBuf {
    std::env::var_os("CSYNC2_SYSTEM_DIR").map_or_else(|| PathBuf::from("/etc"), PathBuf::from)
}

/// csync2's config file: `DIR/csync2.cfg`, or `DIR/csync2_NAME.cfg` with
/// `-C NAME`.
fn config_file(name: Option<&str>) -> PathBuf {
    match name {
        None => system_dir().join("csync2.cfg"),
        Some(n) => system_dir().join(format!("csync2_{n}.cfg")),
    }
}

/// The snapsync command line a csync2 mode runs as: the parsed form, and
/// the words a running daemon is sent.
fn cli_for(a: &Args, command: Command, json: bool) -> Cli {
    let config = crate::engine::Engine::absolute_path(&config_file(a.config_name.as_deref()));
    let state_dir = a.state_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let mut words: Vec<String> = vec!["--config".into(), config.to_string_lossy().into_owned()];
    if let Some(h) = &a.host {
        words.extend(["-N".into(), h.clone()]);
    }
    words.extend(["-D".into(), state_dir.to_string_lossy().into_owned()]);
    words.extend((0..a.verbose).map(|_| "-v".to_owned()));
    if a.quiet {
        words.push("-q".into());
    }
    if json {
        words.push("--json".into());
    }
    words.extend(command_words(&command));
    Cli {
        config: Some(config),
        config_name: None,
        name: a.host.clone(),
        state_dir,
        verbose: a.verbose,
        quiet: a.quiet,
        json,
        command,
        forward_args: Some(words),
    }
}

/// The words of a snapsync command (the ones csync2's modes run).
fn command_words(command: &Command) -> Vec<String> {
    let paths = |p: &[PathBuf]| p.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>();
    let lists = |peer: &[String], group: &[String], dry_run: bool| {
        let mut w = Vec::new();
        if dry_run {
            w.push("--dry-run".to_owned());
        }
        if !peer.is_empty() {
            w.extend(["--peer".to_owned(), peer.join(",")]);
        }
        if !group.is_empty() {
            w.extend(["--group".to_owned(), group.join(",")]);
        }
        w
    };
    let mut w = vec![command.name().to_owned()];
    match command {
        Command::Sync(a) | Command::Update(a) => {
            w.extend(lists(&a.peer, &a.group, a.dry_run));
            w.push("--".into());
            w.extend(paths(&a.paths));
        }
        Command::Status { peer, group } => w.extend(lists(peer, group, false)),
        Command::Diff { path, peer } => {
            w.extend(lists(peer, &[], false));
            w.push("--".into());
            w.push(path.to_string_lossy().into_owned());
        }
        Command::Check { paths: p } | Command::Mark { paths: p } => {
            w.push("--".into());
            w.extend(paths(p));
        }
        Command::Force { paths: p, recursive, .. } => {
            if *recursive {
                w.push("-r".into());
            }
            w.push("--".into());
            w.extend(paths(p));
        }
        Command::Ls { path: Some(p) } => {
            w.push("--".into());
            w.push(p.to_string_lossy().into_owned());
        }
        Command::Keygen { file, .. } => w.push(file.to_string_lossy().into_owned()),
        _ => {}
    }
    w
}

/// Runs snapsync as csync2 with `args` (program name left out); returns
/// csync2's exit status and what to print on stdout.
pub(super) fn run(args: &[String]) -> (u8, String) {
    let mut out = String::new();
    let parsed = parse(args).and_then(|a| plan(&a).map(|p| (a, p)));
    let (a, plan) = match parsed {
        Ok(x) => x,
        Err(why) => {
            eprintln!("csync2: {why}");
            return (ERROR, out);
        }
    };
    // csync2's command line has no --log: stderr, as csync2 logs.
    let daemon = matches!(plan, Plan::Run(Command::Serve { .. }));
    let _ = super::logging::init(a.quiet, a.verbose, daemon, &super::LogSink::Stderr);
    let code = match plan {
        Plan::Run(command) => match run_into(&cli_for(&a, command, false), &mut out) {
            EXIT_OK => OK,
            _ => ERROR,
        },
        Plan::Test(command) => match run_into(&cli_for(&a, command, false), &mut out) {
            EXIT_OK => EMPTY,
            EXIT_DIFFERENCES => OK,
            _ => ERROR,
        },
        Plan::ListHints => EMPTY,
        Plan::ListEntries => {
            let path = a.files.first().cloned();
            let mut json = String::new();
            let code = run_into(&cli_for(&a, Command::Ls { path }, true), &mut json);
            if code != EXIT_OK {
                return (ERROR, out);
            }
            let v: Value = serde_json::from_str(&json).unwrap_or_default();
            let entries = v["entries"].as_array().cloned().unwrap_or_default();
            for e in &entries {
                if let Some(p) = e["path"].as_str() {
                    out.push_str(&format!("{}\n", super::output::escape(p)));
                }
            }
            if entries.is_empty() { EMPTY } else { OK }
        }
        Plan::ListDirty => {
            let mut json = String::new();
            let status = Command::Status { peer: a.peers.clone(), group: a.groups.clone() };
            let code = run_into(&cli_for(&a, status, true), &mut json);
            if code != EXIT_OK && code != EXIT_DIFFERENCES {
                return (ERROR, out);
            }
            let v: Value = serde_json::from_str(&json).unwrap_or_default();
            let lines = dirty_lines(&v);
            for line in &lines {
                out.push_str(line);
                out.push('\n');
            }
            if lines.is_empty() { EMPTY } else { OK }
        }
    };
    (code, out)
}

/// `-M`'s lines from a `status --json` document: each local change not
/// recorded yet (`local PATH`), and each path a sync would send to a peer
/// (`PEER PATH`).
fn dirty_lines(status: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    for g in list(&status["check"]["groups"]) {
        for p in list(&g["pending_paths"]) {
            lines.push(format!("local\t{}", super::output::escape(p.as_str().unwrap_or_default())));
        }
    }
    for peer in list(&status["peers"]) {
        let name = peer["peer"].as_str().unwrap_or_default();
        for c in list(&peer["pushed"]) {
            if c["action"] != "merge" {
                lines.push(format!("{name}\t{}", super::output::escape(c["path"].as_str().unwrap_or_default())));
            }
        }
    }
    lines
}

/// The words of the command line after the program name, as UTF-8.
pub(super) fn args() -> Result<Vec<String>, OsString> {
    std::env::args_os().skip(1).map(|a| a.into_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_combine_as_getopt_combines_them() {
        let a = parse(&words("-xrv -N n1 -C web -D/var/db /srv/www")).unwrap();
        assert_eq!(a.modes, ['x']);
        assert!(a.recursive);
        assert_eq!(a.verbose, 1);
        assert_eq!(a.host.as_deref(), Some("n1"));
        assert_eq!(a.config_name.as_deref(), Some("web"));
        assert_eq!(a.state_dir, Some(PathBuf::from("/var/db")));
        assert_eq!(a.files, [PathBuf::from("/srv/www")]);
        let a = parse(&words("-TT")).unwrap();
        assert_eq!(a.modes, ['T', 'T']);
        let a = parse(&words("-cr /etc -P a,b")).unwrap();
        assert!(matches!(plan(&a).unwrap(), Plan::Run(Command::Check { .. })));
        assert_eq!(a.peers, ["a", "b"]);
    }

    #[test]
    fn modes_map_to_commands() {
        let run = |s: &str| plan(&parse(&words(s)).unwrap()).unwrap();
        assert!(matches!(run("-x"), Plan::Run(Command::Sync(ReconcileArgs { dry_run: false, .. }))));
        assert!(matches!(run("-xd"), Plan::Run(Command::Sync(ReconcileArgs { dry_run: true, .. }))));
        assert!(matches!(run("-c -u"), Plan::Run(Command::Sync(_))));
        assert!(matches!(run("-u"), Plan::Run(Command::Update(_))));
        assert!(matches!(run("-m f"), Plan::Run(Command::Mark { .. })));
        assert!(matches!(run("-fr d"), Plan::Run(Command::Force { recursive: true, .. })));
        assert!(matches!(run("-T"), Plan::Test(Command::Status { .. })));
        assert!(matches!(run("-M"), Plan::ListDirty));
        assert!(matches!(run("-L"), Plan::ListEntries));
        assert!(matches!(run("-ii"), Plan::Run(Command::Serve { .. })));
        assert!(matches!(run("-k /etc/k"), Plan::Run(Command::Keygen { .. })));
        assert!(matches!(run("-TT"), Plan::Test(Command::Status { .. })));
        assert!(matches!(run("-T /srv/f"), Plan::Test(Command::Status { .. })));
    }

    #[test]
    fn tt_with_a_file_compares_that_file() {
        let run = |s: &str| match plan(&parse(&words(s)).unwrap()).unwrap() {
            Plan::Test(Command::Diff { path, peer }) => (path, peer),
            other => panic!("{s}: {other:?}"),
        };
        let f = PathBuf::from("/srv/www/site.conf");
        assert_eq!(run("-TT /srv/www/site.conf"), (f.clone(), vec![]));
        assert_eq!(run("-TT /srv/www/site.conf b"), (f.clone(), vec!["b".to_owned()]));
        assert_eq!(run("-TT b /srv/www/site.conf"), (f.clone(), vec!["b".to_owned()]));
        assert_eq!(run("-TT a b /srv/www/site.conf"), (f.clone(), vec!["b".to_owned()]));
        assert_eq!(run("-T -T -P c /srv/www/site.conf"), (f, vec!["c".to_owned()]));
        assert!(plan(&parse(&words("-TT a b c d")).unwrap()).is_err());
    }

    /// What a running daemon is sent parses back to the same command.
    #[test]
    fn forwarded_words_parse_back_to_the_command() {
        use clap::Parser;
        for line in
            ["-x -d -P b,c /srv/a", "-u -G web", "-m /srv/a /srv/b", "-fr /srv", "-cr /srv", "-T", "-L", "-TT /srv/f b"]
        {
            let a = parse(&words(&format!("-N n1 -D /var/db -v {line}"))).unwrap();
            let command = match plan(&a).unwrap() {
                Plan::Run(c) | Plan::Test(c) => c,
                Plan::ListEntries => Command::Ls { path: None },
                other => panic!("{other:?}"),
            };
            let cli = cli_for(&a, command, false);
            let words = cli.forward_args.clone().unwrap();
            let back = Cli::try_parse_from(std::iter::once("snapsync".to_owned()).chain(words)).unwrap();
            assert_eq!(format!("{:?}", back.command), format!("{:?}", cli.command), "{line}");
            assert_eq!(
                (back.config, back.name, back.state_dir, back.verbose),
                (cli.config, cli.name, cli.state_dir, cli.verbose)
            );
        }
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for s in ["", "-x -m f", "-m", "-f", "-q", "-Q", "-N", "-S a b", "-p 30865 -x"] {
            let r = parse(&words(s)).and_then(|a| plan(&a));
            assert!(r.is_err(), "{s:?} was taken: {r:?}");
        }
    }
}
