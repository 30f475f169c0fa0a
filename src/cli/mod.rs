//! The command line: argument parsing, output and exit codes.
//!
//! Terms:
//! - The *system directory* is `/etc`, or `$SNAPSYNC_SYSTEM_DIR`: where
//!   `snapsync.cfg` and `snapsync_NAME.cfg` (`-C NAME`) are looked up.
//! - The *config name* names the configuration in the state directory
//!   layout `STATE_DIR/CONFIG_NAME/HOST/`: `default`, the `-C` name, or for
//!   `--config FILE` the file's stem and a hash of its absolute path, so
//!   several configs and several `-N` names on one machine never share
//!   state.
//!
//! Exit status (SPEC §3): 0 success, 1 runtime failure, 2 usage or
//! configuration error, 3 finished with conflicts or differences left.

mod csync2;
mod daemon;
mod demo;
mod logging;
mod output;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::sync::Arc;

use crate::config::{self, Config};
use crate::engine::{Engine, EngineError};
use crate::interrupt::Interrupt;
use crate::peer::{Node, SyncError, SyncOptions};
use crate::progress::Reporter;

pub use logging::LogSink;

pub use crate::exit::{EXIT_DIFFERENCES, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/snapsync";

/// snapsync keeps directory trees identical on any number of hosts.
#[derive(Debug, Parser)]
#[command(
    name = "snapsync",
    version,
    about,
    max_term_width = 100,
    after_help = "Examples:\n  \
        snapsync sync                  check, then reconcile with every peer\n  \
        snapsync status --json         what differs, for monitoring (exit 3: differences)\n  \
        snapsync diff /etc/hosts       compare one file with every peer: a unified diff\n  \
        snapsync force -r /srv/www     the local version of /srv/www wins its conflicts\n  \
        snapsync history /etc/hosts    every kept version of one file\n  \
        snapsync restore --generation 12 /srv/www/index.html\n\n\
        Exit status: 0 success, 1 runtime failure, 2 usage or configuration error,\n\
        3 finished with conflicts or differences left."
)]
pub struct Cli {
    /// Read this configuration file (csync2 syntax).
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "config_name")]
    pub config: Option<PathBuf>,
    /// Read $SNAPSYNC_SYSTEM_DIR/snapsync_NAME.cfg (default /etc/snapsync_NAME.cfg).
    #[arg(short = 'C', global = true, value_name = "NAME")]
    pub config_name: Option<String>,
    /// The local host's name in the configuration (default: the system hostname).
    #[arg(short = 'N', long = "name", global = true, value_name = "NAME")]
    pub name: Option<String>,
    /// Where node state is kept.
    #[arg(short = 'D', long = "state-dir", global = true, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr, no progress.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print one machine-readable JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The command line to send a running daemon instead of this
    /// process's own (set when the command line was another's: csync2's).
    #[arg(skip)]
    pub forward_args: Option<Vec<String>>,
}

/// The global options that choose a node (`--config`, `-C`, `-N`, `-D`),
/// declared again, hidden, on the commands that open no node (`keygen`,
/// `demo`): their help then does not list options that do nothing there,
/// and a command line that gives them anyway (a wrapper that always does)
/// still parses. The ids and value types are the global ones', so clap
/// does not propagate those to these commands.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NoNode {
    #[arg(long, hide = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(short = 'C', hide = true, value_name = "NAME")]
    config_name: Option<String>,
    #[arg(short = 'N', long = "name", hide = true, value_name = "NAME")]
    name: Option<String>,
    #[arg(short = 'D', long = "state-dir", hide = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// `--json`, hidden, on `demo`, which prints no document (as [`NoNode`]).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NoJson {
    #[arg(long, hide = true)]
    json: bool,
}

/// What `sync` and `update` reconcile, and how.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ReconcileArgs {
    /// Check only these paths first (everything when none).
    pub paths: Vec<PathBuf>,
    /// Print what would change, change nothing on any host.
    #[arg(long)]
    pub dry_run: bool,
    /// Only these peers.
    #[arg(long, value_delimiter = ',', value_name = "P")]
    pub peer: Vec<String>,
    /// Only these groups.
    #[arg(long, value_delimiter = ',', value_name = "G")]
    pub group: Vec<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scan the included trees (or PATHs) and record local changes.
    Check {
        /// Only these paths (and everything below them).
        paths: Vec<PathBuf>,
    },
    /// List tracked entries with their hashes and metadata.
    Ls {
        /// Only entries at or below this path.
        path: Option<PathBuf>,
    },
    /// Write a new group key (csync2 -k format).
    Keygen {
        /// The key file to create (mode 0600; never overwritten).
        file: PathBuf,
        #[command(flatten)]
        no_node: NoNode,
    },
    /// List backup generations and why each is kept.
    Generations {
        /// Only these groups.
        #[arg(long, value_delimiter = ',')]
        group: Vec<String>,
        /// List the paths that differ between generations N and M (or N
        /// and the current tree) instead.
        #[arg(long, num_args = 1..=2, value_names = ["N", "M"])]
        diff: Vec<u64>,
    },
    /// List every kept version of PATH.
    History {
        /// The path.
        path: PathBuf,
    },
    /// Bring back the tree (or PATHs) as a generation had it.
    Restore {
        /// The generation's id (see `generations`).
        #[arg(long)]
        generation: u64,
        /// Only these paths.
        paths: Vec<PathBuf>,
        /// Write the restored tree below DIR instead, touching nothing else.
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// List what would be written and removed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check, then reconcile with every reachable peer.
    Sync(#[command(flatten)] ReconcileArgs),
    /// Record PATHs as changed (a check of just those paths).
    Mark {
        /// The changed paths.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Reconcile what changed under PATHs (all groups when none).
    Update(#[command(flatten)] ReconcileArgs),
    /// Make the local version of PATHs, as it is now, win their conflicts.
    Force {
        /// The paths.
        #[arg(required_unless_present = "list")]
        paths: Vec<PathBuf>,
        /// Also every entry tracked below each PATH.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// List the forces pending.
        #[arg(long, conflicts_with_all = ["paths", "recursive", "cancel"])]
        list: bool,
        /// Drop the forces on PATHs.
        #[arg(long)]
        cancel: bool,
    },
    /// Compare with peers: in sync, differing paths, conflicts.
    Status {
        /// Only these peers.
        #[arg(long, value_delimiter = ',', value_name = "P")]
        peer: Vec<String>,
        /// Only these groups.
        #[arg(long, value_delimiter = ',', value_name = "G")]
        group: Vec<String>,
    },
    /// Compare one path with peers: a unified diff for a text file of at
    /// most 1 MiB, both sides' kind, size, hash, time and version otherwise.
    Diff {
        /// The path (below an include root).
        path: PathBuf,
        /// Only these peers (default: every peer of its group).
        #[arg(long, value_delimiter = ',', value_name = "P")]
        peer: Vec<String>,
    },
    /// List unresolved conflicts with both sides' versions.
    Conflicts,
    /// Run the daemon: serve peers, and local commands on a socket.
    #[command(after_long_help = "Logging:\n  \
        The daemon logs its start and stop, every sync run and pull, every change it applies\n  \
        (audit lines: host, peer, action, path) and every warning and error, with UTC timestamps.\n  \
        -v logs more, -q only errors. RUST_LOG overrides both with tracing's filter syntax,\n  \
        for example RUST_LOG=info or RUST_LOG=warn,audit=info,snapsync::net=debug.")]
    Serve {
        /// Also sync changes as they happen: watch the included trees (inotify)
        /// and send what changed to every reachable peer within a second or two.
        #[arg(long)]
        watch: bool,
        /// With --watch: seconds between two full reconciles, the safety net
        /// for changes the watcher cannot see (0: only at start).
        #[arg(long, value_name = "SECS", default_value_t = 600, requires = "watch")]
        full_every: u64,
        /// Where log lines go: stderr; journal (the system journal, or stderr
        /// with a warning when it is not reachable); or a FILE path, appended
        /// to (created mode 0640; a symbolic link there is refused).
        #[arg(long, value_name = "journal|stderr|FILE", default_value = "stderr", value_parser = LogSink::parse)]
        log: LogSink,
    },
    /// Accept a peer's new node key (after a reinstall): forget its pin.
    Trust {
        /// The peer host.
        #[arg(long, value_name = "HOST")]
        peer: String,
    },
    /// Drop generations no retention rule keeps and free unused space.
    Gc,
    /// Re-read tracked files and stored chunks and check their hashes.
    Verify {
        /// Rebuild damaged or missing chunk stores from the live files and
        /// list what the generations lost.
        #[arg(long)]
        repair: bool,
    },
    /// Show snapsync at work on an embedded sample configuration and tree.
    Demo {
        /// Where to lay out the demo (default: a new directory under the temp directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[command(flatten)]
        no_node: NoNode,
        #[command(flatten)]
        no_json: NoJson,
    },
}

impl Command {
    /// The command's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Check { .. } => "check",
            Command::Ls { .. } => "ls",
            Command::Keygen { .. } => "keygen",
            Command::Generations { .. } => "generations",
            Command::History { .. } => "history",
            Command::Restore { .. } => "restore",
            Command::Sync(_) => "sync",
            Command::Mark { .. } => "mark",
            Command::Update(_) => "update",
            Command::Force { .. } => "force",
            Command::Status { .. } => "status",
            Command::Diff { .. } => "diff",
            Command::Conflicts => "conflicts",
            Command::Serve { .. } => "serve",
            Command::Trust { .. } => "trust",
            Command::Gc => "gc",
            Command::Verify { .. } => "verify",
            Command::Demo { .. } => "demo",
        }
    }
}

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    if csync2::invoked_as_csync2() {
        let Ok(args) = csync2::args() else {
            eprintln!("csync2: the command line is not valid UTF-8");
            return ExitCode::from(1);
        };
        let (code, out) = csync2::run(&args);
        print!("{out}");
        return ExitCode::from(code);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let (daemon, sink) = match &cli.command {
        Command::Serve { log, .. } => (true, log.clone()),
        _ => (false, LogSink::Stderr),
    };
    if let Err(e) = logging::init(cli.quiet, cli.verbose, daemon, &sink) {
        eprintln!("snapsync: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    ExitCode::from(run(&cli))
}

/// The config file to read and the config name its state is kept under.
pub fn config_location(cli: &Cli) -> Result<(PathBuf, String), config::ConfigError> {
    if let Some(file) = &cli.config {
        let abs = Engine::absolute_path(file);
        let name = config_name_of_file(&abs);
        return Ok((abs, name));
    }
    let path = config::config_path(&config::system_dir(), cli.config_name.as_deref())?;
    Ok((path, cli.config_name.clone().unwrap_or_else(|| "default".to_owned())))
}

/// The config name of `--config FILE` (an absolute path): the file stem
/// and a hash of the path, so two files with the same name never share
/// state.
pub fn config_name_of_file(abs: &Path) -> String {
    let stem = abs.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "config".into());
    let stem: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let tag = crate::hash::Hash::of(abs.as_os_str().as_encoded_bytes()).short();
    format!("{stem}-{tag}")
}

/// A node's state directory: `STATE_DIR/CONFIG_NAME/HOST`, HOST in
/// canonical form. One made before host names were canonical, spelled in
/// another case, is kept while the canonical one does not exist.
pub fn node_state_dir(state_root: &Path, config_name: &str, host: &str) -> PathBuf {
    let host: String =
        config::canonical_host(host).chars().map(|c| if c == '/' || c == '\0' { '_' } else { c }).collect();
    let dir = state_root.join(config_name);
    let canonical = dir.join(&host);
    if !canonical.exists()
        && let Ok(entries) = std::fs::read_dir(&dir)
        && let Some(old) =
            entries.flatten().find(|e| e.file_name().to_str().is_some_and(|n| n.eq_ignore_ascii_case(&host)))
    {
        return old.path();
    }
    canonical
}

/// The local host name, in canonical form: `-N`, else the system hostname.
pub fn host_name(cli: &Cli) -> String {
    config::canonical_host(
        &cli.name.clone().unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()),
    )
}

fn run(cli: &Cli) -> u8 {
    let mut out = String::new();
    let code = run_into(cli, &mut out);
    print!("{out}");
    code
}

/// Runs the command; what it prints on stdout goes to `out`.
fn run_into(cli: &Cli, out: &mut String) -> u8 {
    if let Command::Demo { dir, .. } = &cli.command {
        return match demo::run(dir.as_deref()) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                tracing::error!("{e:#}");
                EXIT_FAILURE
            }
        };
    }
    if let Command::Keygen { file, .. } = &cli.command {
        return match crate::key::write_new(file) {
            Ok(()) => {
                output::keygen(out, cli, file);
                EXIT_OK
            }
            Err(e @ crate::key::KeyError::Exists(_)) => fail(cli, out, e, EXIT_USAGE),
            Err(e) => fail(cli, out, e, EXIT_FAILURE),
        };
    }
    let (config_path, config_name) = match config_location(cli) {
        Ok(l) => l,
        Err(e) => return fail(cli, out, e, EXIT_USAGE),
    };
    let config = match load_config(cli, out, &config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let host = host_name(cli);
    let state = node_state_dir(&cli.state_dir, &config_name, &host);
    // A daemon holding this node's state runs the command for us.
    if !matches!(cli.command, Command::Serve { .. })
        && let Some(code) = daemon::forward(&state, cli, out)
    {
        return code;
    }
    let engine = match Engine::open(&config, &host, &state) {
        Ok(e) => e,
        // Another process holds the state: a daemon that is starting (its
        // socket comes up in a moment), or another command (two syncs from
        // cron at once). Wait for either, with a bound.
        Err(EngineError::Store(crate::store::StoreError::Locked { pid, .. }))
            if !matches!(cli.command, Command::Serve { .. }) =>
        {
            match wait_for_state(&config, &host, &state, &pid, cli, out) {
                Ok(Ok(engine)) => engine,
                Ok(Err(e)) => return report_error(cli, out, &e.into()),
                Err(code) => return code,
            }
        }
        Err(e) => return report_error(cli, out, &e.into()),
    };
    let node = Arc::new(Node::new(engine, &state));
    if let Command::Serve { watch, full_every, .. } = &cli.command {
        let watch = watch.then(|| crate::daemon::watch::Options {
            // 0: never again (a century is as good as never).
            full_every: std::time::Duration::from_secs(if *full_every == 0 { 100 * 365 * 86400 } else { *full_every }),
        });
        return daemon::serve(node, &config_path, &config.files, watch);
    }
    let caller = Caller { progress: progress_here(cli).unwrap_or_default(), ..Caller::default() };
    match run_command(cli, &node, &caller, out) {
        Ok(code) => code,
        Err(e) if out.is_empty() => report_error(cli, out, &e),
        Err(e) => {
            tracing::error!("{e}");
            exit_code_of(&e)
        }
    }
}

fn load_config(cli: &Cli, out: &mut String, path: &Path) -> Result<Config, u8> {
    match config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                tracing::warn!("{w}");
            }
            Ok(c)
        }
        Err(e) => Err(fail(cli, out, e, EXIT_USAGE)),
    }
}

/// Reports why the command failed: on stderr, and with `--json` also as
/// the one JSON document on stdout (`{"error": ..., "exit_code": ...}`),
/// so a script reading stdout is never left with nothing. Returns `code`.
fn fail(cli: &Cli, out: &mut String, why: impl std::fmt::Display, code: u8) -> u8 {
    tracing::error!("{why}");
    if cli.json {
        out.push_str(&output::error_json(&why.to_string(), code));
    }
    code
}

fn report_error(cli: &Cli, out: &mut String, e: &SyncError) -> u8 {
    fail(cli, out, e, exit_code_of(e))
}

fn exit_code_of(e: &SyncError) -> u8 {
    match e {
        SyncError::Engine(
            EngineError::Config(_) | EngineError::Key { .. } | EngineError::Usage(_) | EngineError::NotFound(_),
        )
        | SyncError::Net(crate::net::NetError::UnsafeFile(_)) => EXIT_USAGE,
        e if e.is_interrupted() => EXIT_INTERRUPTED,
        _ => EXIT_FAILURE,
    }
}

/// Runs `f` to completion on the current Tokio runtime, or on a new one.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.block_on(f),
        Err(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime starts")
            .block_on(f),
    }
}

/// How long a command waits for another process that holds the node's
/// state before it gives up; `SNAPSYNC_LOCK_WAIT` (seconds) changes it.
/// Two commands started at once (cron starts every node's `sync` in the
/// same second, and an operator may run one by hand) then run one after
/// the other instead of one failing (SPEC §4.15).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits until the state held by process `pid` can be opened here, or a
/// daemon's socket comes up (then the command runs there: `Err` with its
/// exit status). Gives up after [`LOCK_WAIT`] with the lock error.
fn wait_for_state(
    config: &Config,
    host: &str,
    state: &Path,
    pid: &str,
    cli: &Cli,
    out: &mut String,
) -> Result<Result<Engine, EngineError>, u8> {
    let wait = std::env::var("SNAPSYNC_LOCK_WAIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(LOCK_WAIT, std::time::Duration::from_secs);
    let deadline = std::time::Instant::now() + wait.max(daemon::STARTING_WAIT);
    tracing::info!("waiting for the snapsync process (pid {pid}) that holds {}", output::escape_path(state));
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Some(code) = daemon::forward(state, cli, out) {
            return Err(code);
        }
        match Engine::open(config, host, state) {
            Err(EngineError::Store(crate::store::StoreError::Locked { .. }))
                if std::time::Instant::now() < deadline => {}
            other => return Ok(other),
        }
    }
}

/// The bars a command draws of its long work: on a terminal, without
/// `--quiet` or `--json` (SPEC §3: never on a pipe).
fn progress_here(cli: &Cli) -> Option<Reporter> {
    let shown = !cli.quiet && !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    shown.then(|| Reporter::new(Arc::new(progress::Bars::new())))
}

/// What a command gets from whoever runs it besides its command line:
/// where its long work reports, and the request to stop (raised by the
/// daemon when the command that sent it is interrupted).
#[derive(Default)]
pub(crate) struct Caller {
    /// Where long work reports.
    pub progress: Reporter,
    /// Raised to stop the run.
    pub interrupt: Interrupt,
}

/// Runs one command on an opened node, its output appended to `out`.
/// Every command that writes the state holds the node's writer lock while
/// it does (a daemon runs peers' pulls at the same time).
fn run_command(cli: &Cli, node: &Arc<Node>, caller: &Caller, out: &mut String) -> Result<u8, SyncError> {
    let engine = &node.engine;
    let progress = &*caller.progress;
    Ok(match &cli.command {
        Command::Check { paths } | Command::Mark { paths } => {
            engine.named_paths_exist(paths)?;
            let report = node.write_blocking(|n, w| n.engine.check(w, paths, progress, Some(&caller.interrupt)))?;
            // `do-local` actions run for what the check found, as in csync2.
            let actions = crate::engine::ActionQueue::default();
            actions.add_check(&engine.groups, &report);
            actions.run(&engine.groups);
            output::check(out, cli, &report);
            if report.has_errors() { EXIT_FAILURE } else { EXIT_OK }
        }
        Command::Sync(a) | Command::Update(a) => {
            let opts = SyncOptions {
                dry_run: a.dry_run,
                peers: a.peer.clone(),
                groups: a.group.clone(),
                paths: a.paths.clone(),
                no_check: false,
                progress: caller.progress.clone(),
                interrupt: caller.interrupt.clone(),
            };
            sync_command(cli, node, opts, out)?
        }
        Command::Status { peer, group } => {
            let opts = SyncOptions {
                dry_run: true,
                peers: peer.clone(),
                groups: group.clone(),
                progress: caller.progress.clone(),
                interrupt: caller.interrupt.clone(),
                ..SyncOptions::default()
            };
            let report = block_on(crate::peer::sync(Arc::clone(node), opts))?;
            let conflicts = engine.store.conflicts()?;
            let forces = engine.pending_forces()?;
            output::status(out, cli, &engine.groups, &report, &conflicts, &forces, &node.stats);
            if report.failed() {
                EXIT_FAILURE
            } else if report.differences() || !conflicts.is_empty() {
                EXIT_DIFFERENCES
            } else {
                EXIT_OK
            }
        }
        Command::Diff { path, peer } => {
            let report = block_on(crate::peer::diff(Arc::clone(node), path, peer, crate::peer::MAX_PEEK_BYTES))?;
            output::diff(out, cli, &engine.host, &report);
            if report.failed() {
                EXIT_FAILURE
            } else if report.differences() {
                EXIT_DIFFERENCES
            } else {
                EXIT_OK
            }
        }
        Command::Conflicts => {
            let conflicts = engine.store.conflicts()?;
            output::conflicts(out, cli, &engine.groups, &conflicts);
            if conflicts.is_empty() { EXIT_OK } else { EXIT_DIFFERENCES }
        }
        Command::Force { paths, recursive, list, cancel } => {
            if *list {
                output::forces(out, cli, &engine.groups, &engine.pending_forces()?);
            } else if *cancel {
                let dropped = node.write_blocking(|n, w| n.engine.cancel_forces(w, paths, *recursive))?;
                output::forced(out, cli, &engine.groups, &dropped, true);
            } else {
                let made = node.write_blocking(|n, w| n.engine.force(w, paths, *recursive))?;
                output::forced(out, cli, &engine.groups, &made, false);
            }
            EXIT_OK
        }
        Command::Trust { peer } => {
            if !engine.groups.iter().any(|g| g.host(peer).is_some()) {
                return Err(EngineError::Usage(format!(
                    "no group of host {} lists a host {peer:?}; `trust --peer` takes a peer's name as the \
                     configuration spells it",
                    engine.host
                ))
                .into());
            }
            let old = node.pins()?.forget(peer)?;
            output::trusted(out, cli, peer, old.is_some());
            EXIT_OK
        }
        Command::Ls { path } => {
            output::ls(out, cli, &engine.ls(path.as_deref())?);
            EXIT_OK
        }
        Command::Generations { group, diff } => {
            match diff[..] {
                [from, ..] => {
                    let d = engine.generation_diff(from, diff.get(1).copied())?;
                    output::generation_diff(out, cli, &d);
                }
                [] => output::generations(
                    out,
                    cli,
                    &engine.groups,
                    &engine.generations(group)?,
                    &engine.retention(group)?,
                ),
            }
            EXIT_OK
        }
        Command::History { path } => {
            output::history(out, cli, &engine.history(path)?);
            EXIT_OK
        }
        Command::Restore { generation, paths, to, dry_run: true } => {
            output::restore_plan(out, cli, &engine.restore_plan(*generation, paths, to.as_deref())?);
            EXIT_OK
        }
        Command::Restore { generation, paths, to, dry_run: false } => {
            let report =
                node.write_blocking(|n, w| n.engine.restore(w, *generation, paths, to.as_deref(), progress))?;
            output::restore(out, cli, &report, to.as_deref());
            if report.has_errors() { EXIT_FAILURE } else { EXIT_OK }
        }
        Command::Gc => {
            output::gc(out, cli, &node.write_blocking(|n, w| n.engine.gc(w))?);
            EXIT_OK
        }
        Command::Verify { repair } => {
            let report = if *repair {
                node.write_blocking(|n, w| n.engine.repair(w, progress))?
            } else {
                engine.verify(progress)?
            };
            output::verify(out, cli, &report);
            if report.mismatches.is_empty() { EXIT_OK } else { EXIT_FAILURE }
        }
        Command::Keygen { .. } | Command::Demo { .. } | Command::Serve { .. } => {
            return Err(EngineError::Usage(format!(
                "`snapsync {}` does not run on an opened node; run it on its own",
                cli.command.name()
            ))
            .into());
        }
    })
}

fn sync_command(cli: &Cli, node: &Arc<Node>, opts: SyncOptions, out: &mut String) -> Result<u8, SyncError> {
    let dry_run = opts.dry_run;
    let started = std::time::Instant::now();
    let report = block_on(crate::peer::sync(Arc::clone(node), opts))?;
    let elapsed = started.elapsed();
    output::sync(out, cli, &node.engine.groups, &report, dry_run, Some(elapsed));
    if !dry_run {
        // One line per run in the log (the daemon's, when it runs it).
        let failed = report.peers.iter().filter(|p| p.error.is_some()).count();
        tracing::info!(
            target: "snapsync::daemon",
            "sync run: exchanges {}, failed {}, conflicts {}, {:.2} s",
            report.peers.len(),
            failed,
            report.conflicts(),
            elapsed.as_secs_f64()
        );
    }
    Ok(if report.failed() {
        EXIT_FAILURE
    } else if report.conflicts() > 0 || (dry_run && report.differences()) {
        EXIT_DIFFERENCES
    } else {
        EXIT_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).expect_err("help is printed");
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        e.to_string()
    }

    #[test]
    fn keygen_and_demo_help_leave_out_node_options() {
        for cmd in ["keygen", "demo"] {
            let text = help(&["snapsync", cmd, "--help"]);
            for option in ["--config", "-C <NAME>", "--name", "--state-dir"] {
                assert!(!text.contains(option), "{cmd} --help lists {option}:\n{text}");
            }
            assert!(text.contains("--verbose"), "{text}");
        }
        assert!(help(&["snapsync", "keygen", "--help"]).contains("--json"));
        assert!(!help(&["snapsync", "demo", "--help"]).contains("--json"));
        let text = help(&["snapsync", "sync", "--help"]);
        for option in ["--config", "-C <NAME>", "--name", "--state-dir", "--json"] {
            assert!(text.contains(option), "sync --help lacks {option}:\n{text}");
        }
    }

    #[test]
    fn node_options_go_before_or_after_the_command() {
        for args in [&["snapsync", "-D", "/s", "-N", "a", "sync"][..], &["snapsync", "sync", "-D", "/s", "-N", "a"]] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.state_dir, Path::new("/s"), "{args:?}");
            assert_eq!(cli.name.as_deref(), Some("a"), "{args:?}");
        }
        // Given to keygen anyway (as a wrapper might), they still parse.
        for args in
            [&["snapsync", "--config", "/c", "-D", "/s", "keygen", "/k"][..], &["snapsync", "keygen", "-D", "/s", "/k"]]
        {
            let cli = Cli::try_parse_from(args).unwrap();
            assert!(matches!(cli.command, Command::Keygen { .. }), "{args:?}");
        }
        let cli = Cli::try_parse_from(["snapsync", "--json", "demo", "--dir", "/d"]).unwrap();
        assert!(matches!(cli.command, Command::Demo { .. }));
    }
}
