//! `serve`: the daemon, and how other commands reach it.
//!
//! The daemon owns the node's state for as long as it runs. It serves
//! peers on its QUIC endpoint and local commands on the Unix socket
//! [`SOCKET`] in the state directory: a command started while the daemon
//! runs sends its arguments there, the daemon runs it on its open state
//! and sends back the output and exit status. On SIGTERM or SIGINT it stops
//! accepting work, lets the change being applied finish, and exits.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::{Cli, Command, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, block_on, exit_code_of, run_command};
use crate::net::{self, NetError};
use crate::peer::{Node, SyncError};

/// The daemon's socket for local commands, in the state directory.
pub const SOCKET: &str = "daemon.sock";

/// How long shutdown waits for the change being applied.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);

#[derive(Serialize, Deserialize)]
struct Request {
    /// The command line, program name left out.
    args: Vec<String>,
    /// The command's working directory, for relative paths.
    cwd: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Response {
    /// What the command printed.
    out: String,
    /// Why it failed, if it did.
    error: Option<String>,
    /// Its exit status.
    code: u8,
}

/// Runs the command in the daemon holding `state`, if one runs; its exit
/// status, or `None` to run it here.
pub(super) fn forward(state: &Path) -> Option<u8> {
    let sock = state.join(SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock).ok()?;
    let args: Result<Vec<String>, _> = std::env::args_os().skip(1).map(|a| a.into_string()).collect();
    let Ok(args) = args else {
        tracing::error!("the daemon ({}) runs this command, but its arguments are not valid UTF-8", sock.display());
        return Some(EXIT_USAGE);
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mut line = serde_json::to_string(&Request { args, cwd }).expect("requests serialize");
    line.push('\n');
    if stream.write_all(line.as_bytes()).is_err() {
        return None;
    }
    tracing::debug!("running the command in the daemon ({})", sock.display());
    let mut reply = String::new();
    if let Err(e) = BufReader::new(stream).read_line(&mut reply) {
        tracing::error!("the daemon ({}) did not answer: {e}", sock.display());
        return Some(EXIT_FAILURE);
    }
    match serde_json::from_str::<Response>(&reply) {
        Ok(r) => {
            print!("{}", r.out);
            if let Some(e) = r.error {
                tracing::error!("{e}");
            }
            Some(r.code)
        }
        Err(e) => {
            tracing::error!("the daemon ({}) answered garbage: {e}", sock.display());
            Some(EXIT_FAILURE)
        }
    }
}

/// How long a command waits for a starting daemon's socket.
const STARTING_WAIT: Duration = Duration::from_secs(10);

/// Like [`forward`], waiting up to [`STARTING_WAIT`] for the socket of a
/// daemon that holds the state but is still starting.
pub(super) fn forward_when_ready(state: &Path) -> Option<u8> {
    let deadline = std::time::Instant::now() + STARTING_WAIT;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(code) = forward(state) {
            return Some(code);
        }
    }
    None
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(super) fn serve(node: Arc<Node>) -> u8 {
    block_on(async move {
        match serve_async(node).await {
            Ok(()) => EXIT_OK,
            Err(e) => {
                tracing::error!("{e}");
                match e {
                    SyncError::Refused(_) => EXIT_USAGE,
                    e => exit_code_of(&e),
                }
            }
        }
    })
}

async fn serve_async(node: Arc<Node>) -> Result<(), SyncError> {
    let engine = &node.engine;
    let gi = engine
        .groups
        .iter()
        .position(|g| g.key.is_some())
        .ok_or_else(|| SyncError::Refused(format!("no group of host {} has a key file to serve", engine.host)))?;
    let g = &engine.groups[gi];
    for other in engine.groups.iter().filter(|o| o.key != g.key) {
        tracing::warn!(
            "group {} uses another key file than group {}: this daemon serves only groups keyed like {}",
            other.name,
            g.name,
            g.name
        );
    }
    let identity = node.identity(gi)?;
    let addr = crate::peer::resolve(&g.local).await?;
    let mut server = net::Server::bind(addr, &identity)?;
    let sock = node.state_dir().join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener =
        tokio::net::UnixListener::bind(&sock).map_err(|e| SyncError::Refused(format!("{}: {e}", sock.display())))?;
    let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| SyncError::Refused(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| SyncError::Refused(format!("cannot handle SIGINT: {e}")))?;
    // The line tests and scripts wait for.
    println!("snapsync serve: {} listening on {} (commands on {})", engine.host, server.local_addr(), sock.display());
    let _ = std::io::stdout().flush();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            conn = server.accept() => match conn {
                Ok(conn) => {
                    tokio::spawn(crate::peer::accept_session(Arc::clone(&node), conn, gi));
                }
                Err(NetError::EndpointClosed { .. }) => break,
                Err(e) => tracing::warn!("{e}"),
            },
            local = listener.accept() => match local {
                Ok((stream, _)) => {
                    tokio::spawn(local_command(Arc::clone(&node), stream));
                }
                Err(e) => tracing::warn!("{}: {e}", sock.display()),
            },
        }
    }
    tracing::info!("shutting down: waiting for changes being applied");
    if !node.quiesce(SHUTDOWN_WAIT).await {
        tracing::warn!("a change was still being applied after {SHUTDOWN_WAIT:?}; exiting anyway");
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// Runs one command a local client sent.
async fn local_command(node: Arc<Node>, stream: tokio::net::UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if tokio::io::BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response { out: String::new(), error: Some(format!("bad request: {e}")), code: EXIT_USAGE },
        Ok(req) => {
            let args = std::iter::once("snapsync".to_owned()).chain(req.args);
            match Cli::try_parse_from(args) {
                Err(e) => Response { out: String::new(), error: Some(e.to_string()), code: EXIT_USAGE },
                Ok(mut cli) => {
                    absolutize(&mut cli.command, &req.cwd);
                    tokio::task::spawn_blocking(move || {
                        let mut out = String::new();
                        match run_command(&cli, &node, &mut out) {
                            Ok(code) => Response { out, error: None, code },
                            Err(e) => Response { out, error: Some(e.to_string()), code: exit_code_of(&e) },
                        }
                    })
                    .await
                    .unwrap_or_else(|e| Response {
                        out: String::new(),
                        error: Some(format!("the command failed: {e}")),
                        code: EXIT_FAILURE,
                    })
                }
            }
        }
    };
    let mut reply = serde_json::to_string(&response).expect("responses serialize");
    reply.push('\n');
    let _ = write.write_all(reply.as_bytes()).await;
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
        | Command::Update { paths }
        | Command::Force { paths }
        | Command::Sync { paths, .. } => paths.iter_mut().for_each(fix),
        Command::Restore { paths, to, .. } => {
            paths.iter_mut().for_each(fix);
            to.iter_mut().for_each(fix);
        }
        Command::Ls { path } => path.iter_mut().for_each(fix),
        _ => {}
    }
}
