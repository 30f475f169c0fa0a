//! `serve` and the forwarding of commands to a running daemon: the
//! command line's side of [`crate::daemon`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;

use super::output::escape_path;
use super::{
    Caller, Cli, Command, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ReconcileArgs, block_on, exit_code_of,
    progress_here, run_command,
};
use crate::daemon::{self, Forwarded, LocalCommands, Request, Response, ServeError};
use crate::interrupt::Interrupt;
use crate::peer::{Node, SyncError};
use crate::progress::Reporter;

pub(super) use crate::daemon::STARTING_WAIT;

/// Runs this process's command in the daemon holding `state`, if one
/// runs: prints its output and returns its exit status; `None` to run it
/// here. Its output is appended to `out`; its progress is drawn here as
/// it would be if it ran here. Ctrl-C stops it in the daemon.
pub(super) fn forward(state: &Path, cli: &Cli, out: &mut String) -> Option<u8> {
    let json = cli.json;
    let args: Result<Vec<String>, _> = match cli.forward_args.as_deref() {
        Some(args) => Ok(args.to_vec()),
        None => std::env::args_os().skip(1).map(|a| a.into_string()).collect(),
    };
    let Ok(args) = args else {
        if std::os::unix::net::UnixStream::connect(state.join(daemon::SOCKET)).is_err() {
            return None;
        }
        tracing::error!("the daemon runs this command, but its arguments are not valid UTF-8");
        return Some(EXIT_USAGE);
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let bars = progress_here(cli);
    match daemon::forward(state, args, cwd, bars.as_deref()) {
        Forwarded::NoDaemon => None,
        Forwarded::Answered(r) => {
            for w in &r.warnings {
                tracing::warn!("{w}");
            }
            out.push_str(&r.out);
            if let Some(e) = r.error {
                tracing::error!("{e}");
            }
            Some(r.code)
        }
        Forwarded::Interrupted(answer) => {
            let name = cli.command.name();
            match answer {
                Some(r) if r.code == EXIT_INTERRUPTED => {
                    tracing::error!("interrupted; the daemon stopped `{name}`");
                }
                // It finished before it could stop, or does not stop
                // early (a check): what it did stands.
                Some(r) => {
                    out.push_str(&r.out);
                    tracing::error!("interrupted; the daemon had finished `{name}` (exit status {})", r.code);
                }
                None => tracing::error!(
                    "interrupted; the daemon is stopping `{name}` (no answer within {}s)",
                    daemon::INTERRUPT_WAIT.as_secs()
                ),
            }
            if json {
                out.push_str(&super::output::error_json("interrupted", EXIT_FAILURE));
            }
            Some(EXIT_FAILURE)
        }
        Forwarded::Failed(why, code) => {
            tracing::error!("{why}");
            if json {
                out.push_str(&super::output::error_json(&why, code));
            }
            Some(code)
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; its exit status.
/// `config` is the configuration file the node was made from and `files`
/// every file it read ([`crate::config::Config::files`]): the daemon
/// re-reads them when they change.
pub(super) fn serve(
    node: Arc<Node>,
    config: &Path,
    files: &[PathBuf],
    watch: Option<crate::daemon::watch::Options>,
) -> u8 {
    let current = Arc::new(daemon::Current::new(node, config, files));
    let ready = |l: &daemon::Listening| {
        // The line tests and scripts wait for.
        println!("snapsync serve: {} listening on {} (commands on {})", l.host, l.addr, escape_path(&l.socket));
        let _ = std::io::stdout().flush();
    };
    block_on(async move {
        // SIGHUP also makes the daemon re-read its configuration.
        if super::logging::logs_to_file() {
            reopen_log_on_sighup();
        }
        match daemon::run(current, Arc::new(CommandLine), watch, ready).await {
            Ok(()) => EXIT_OK,
            Err(e) => {
                tracing::error!("{e}");
                match e {
                    ServeError::Sync(SyncError::Refused(_)) => EXIT_USAGE,
                    ServeError::Sync(e) => exit_code_of(&e),
                    ServeError::Socket(_) => EXIT_FAILURE,
                    ServeError::Damaged(_) => restart_after_damage(),
                }
            }
        }
    })
}

/// Set by a daemon that started itself again after damage
/// ([`restart_after_damage`]): the time of that restart, in seconds since
/// the epoch.
const RESTARTED_ENV: &str = "SNAPSYNC_DAEMON_RESTARTED";

/// How soon after such a restart damage found again stops the daemon
/// for good instead: damage that comes back at once needs an operator.
const RESTART_AGAIN_AFTER_SECS: u64 = 60;

/// Starts this daemon again in place, after a read found its state or a
/// chunk store damaged: the same process (pid, arguments, environment,
/// standard streams) runs the binary afresh, its state lock released with
/// the old image's descriptors (all close on exec), and its open moves
/// the damaged database aside and rebuilds it from the live trees, so the
/// node goes on serving its peers with or without a supervisor (SPEC §5:
/// damage never stops a node from syncing its live files). The binary is
/// the one running (`/proc/self/exe`), even if an upgrade replaced the
/// file meanwhile. Returns the exit status only when it does not restart.
fn restart_after_damage() -> u8 {
    use std::os::unix::process::CommandExt;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = std::env::var(RESTARTED_ENV).ok().and_then(|v| v.parse::<u64>().ok());
    if last.is_some_and(|t| now.saturating_sub(t) < RESTART_AGAIN_AFTER_SECS) {
        tracing::error!(
            "damage found again within {RESTART_AGAIN_AFTER_SECS}s of a restart for damage: the daemon stays stopped"
        );
        return EXIT_FAILURE;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "snapsync".into());
    tracing::warn!("starting the daemon again: the damaged state is moved aside and rebuilt as it opens");
    let err =
        std::process::Command::new("/proc/self/exe").arg0(arg0).args(args).env(RESTARTED_ENV, now.to_string()).exec();
    tracing::error!("starting the daemon again: {err}");
    EXIT_FAILURE
}

/// Reopens the log file (`serve --log FILE`) on every SIGHUP, as
/// logrotate's `postrotate` asks for. Only with a log file: otherwise
/// SIGHUP keeps its default action.
fn reopen_log_on_sighup() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot handle SIGHUP ({e}): the log file is not reopened on it");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match super::logging::reopen() {
                Ok(()) => tracing::info!(target: "snapsync::daemon", "SIGHUP: log file reopened"),
                Err(e) => tracing::error!("SIGHUP: {e}; logging on to the file opened before"),
            }
        }
    });
}

/// Runs the daemon's local commands as the command line would.
struct CommandLine;

impl LocalCommands for CommandLine {
    fn run(&self, node: &Arc<Node>, request: Request, progress: Reporter, interrupt: Interrupt) -> Response {
        let cli = match command_of(request) {
            Ok(cli) => cli,
            Err(why) => {
                tracing::warn!("{why}");
                return Response::refused(why);
            }
        };
        let mut out = String::new();
        match run_command(&cli, node, &Caller { progress, interrupt }, &mut out) {
            Ok(code) => Response { out, error: None, code, warnings: Vec::new() },
            Err(e) => {
                if e.is_interrupted() {
                    tracing::info!(
                        target: "snapsync::daemon",
                        "`{}` interrupted by the command's caller: stopped",
                        cli.command.name()
                    );
                }
                let code = exit_code_of(&e);
                if cli.json && out.is_empty() {
                    out = super::output::error_json(&e.to_string(), code);
                }
                Response { out, error: Some(e.to_string()), code, warnings: Vec::new() }
            }
        }
    }
}

/// The command line a request carries, its paths made absolute against
/// its working directory; commands that do not run on an opened node are
/// refused.
fn command_of(req: Request) -> Result<Cli, String> {
    let args = std::iter::once("snapsync".to_owned()).chain(req.args);
    let mut cli = Cli::try_parse_from(args).map_err(|e| format!("bad request: {e}"))?;
    if let Command::Serve { .. } | Command::Keygen { .. } | Command::Demo { .. } = cli.command {
        return Err(format!("`snapsync {}` is not run by the daemon: run it on its own", cli.command.name()));
    }
    absolutize(&mut cli.command, &req.cwd);
    Ok(cli)
}

/// Makes the paths of a forwarded command absolute against its cwd.
fn absolutize(cmd: &mut Command, cwd: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = cwd.join(&*p);
        }
    };
    match cmd {
        Command::Check { paths }
        | Command::Mark { paths }
        | Command::Update(ReconcileArgs { paths, .. })
        | Command::Force { paths, .. }
        | Command::Sync(ReconcileArgs { paths, .. }) => paths.iter_mut().for_each(fix),
        Command::Restore { paths, to, .. } => {
            paths.iter_mut().for_each(fix);
            to.iter_mut().for_each(fix);
        }
        Command::Ls { path } => path.iter_mut().for_each(fix),
        Command::Diff { path, .. } | Command::History { path } => fix(path),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str], cwd: &str) -> Request {
        Request { args: args.iter().map(|a| (*a).to_owned()).collect(), cwd: cwd.into(), progress: false }
    }

    #[test]
    fn commands_the_daemon_does_not_run_are_refused() {
        for (args, name) in [
            (&["keygen", "/tmp/k"][..], "keygen"),
            (&["serve"][..], "serve"),
            (&["demo", "--dir", "/tmp/d"][..], "demo"),
            (&["--json", "serve", "--watch"][..], "serve"),
        ] {
            let e = command_of(request(args, "/")).unwrap_err();
            assert!(e.contains(&format!("`snapsync {name}` is not run by the daemon")), "{args:?}: {e}");
        }
        let e = command_of(request(&["no-such-command"], "/")).unwrap_err();
        assert!(e.starts_with("bad request:"), "{e}");
    }

    #[test]
    fn forwarded_paths_are_made_absolute() {
        let cli = command_of(request(&["check", "sub/file", "/abs"], "/work/dir")).unwrap();
        let Command::Check { paths } = cli.command else { panic!("not check") };
        assert_eq!(paths, [PathBuf::from("/work/dir/sub/file"), PathBuf::from("/abs")]);
    }
}
