//! The daemon (`snapsync serve`), and how other commands reach it.
//!
//! The daemon owns the node's state for as long as it runs: the opened
//! [`Node`], whose store hands out the one writer token. It serves peers on
//! its QUIC endpoint and local commands on the Unix socket [`SOCKET`] in
//! the state directory: a command started while the daemon runs sends its
//! arguments there ([`forward`]), the daemon runs it on its open state
//! ([`LocalCommands`], which the command line provides) and sends back the
//! output and exit status. On SIGTERM or SIGINT it stops accepting work,
//! lets the change being applied finish (it waits for the writer token),
//! and exits.
//!
//! The socket runs commands with the daemon's privileges, so it is guarded
//! (SPEC §3: only root or the state directory's owner may use it):
//! - It is *private before it is reachable*: bound inside a fresh 0700
//!   directory, made 0600, then renamed to its place, which also replaces a
//!   stale socket (or anything planted there) without following it.
//! - Every connection's peer credentials (`SO_PEERCRED`) are checked before
//!   a byte is read; anyone but root and the state directory's owner gets
//!   a refusal line.
//! - A *request* is one JSON line of at most [`MAX_REQUEST`] bytes, sent
//!   within [`REQUEST_TIMEOUT`]; what it asks for is the command line's to
//!   judge (which refuses `serve`, `keygen` and `demo`, which do not run on
//!   an opened node).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::exit::{EXIT_FAILURE, EXIT_USAGE};
use crate::net::{self, NetError};
use crate::peer::{Node, SyncError};

mod reload;

pub use reload::{Current, Refresh};

/// The daemon's socket for local commands, in the state directory.
pub const SOCKET: &str = "daemon.sock";

/// The longest request line the daemon reads (the newline not counted).
/// A command line is a few hundred bytes; a megabyte leaves room for
/// thousands of paths.
pub const MAX_REQUEST: usize = 1 << 20;

/// How long a client has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the change being applied.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);

/// A local command sent to the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The command line, program name left out.
    pub args: Vec<String>,
    /// The command's working directory, for relative paths.
    pub cwd: PathBuf,
}

/// The daemon's answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    /// What the command printed.
    pub out: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Its exit status.
    pub code: u8,
    /// What the command should warn about besides (the daemon could not
    /// take an edited configuration, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Response {
    /// A request refused before anything ran: `why`, usage exit status.
    pub fn refused(why: impl Into<String>) -> Self {
        Response { out: String::new(), error: Some(why.into()), code: EXIT_USAGE, warnings: Vec::new() }
    }
}

/// What runs a local command the daemon received: parses its command line
/// and runs it on the daemon's node. Called on a blocking thread.
pub trait LocalCommands: Send + Sync + 'static {
    /// Runs `request` on `node`.
    fn run(&self, node: &Arc<Node>, request: Request) -> Response;
}

/// Why the daemon could not set up its socket.
#[derive(Debug, thiserror::Error)]
#[error("daemon socket {}: cannot {what}: {source}", path.display())]
pub struct SocketError {
    /// The path concerned.
    path: PathBuf,
    /// What was being done.
    what: &'static str,
    /// The underlying error.
    source: std::io::Error,
}

impl SocketError {
    fn new(path: &Path, what: &'static str, source: std::io::Error) -> Self {
        SocketError { path: path.to_path_buf(), what, source }
    }
}

/// Why a local request was refused; sent back as the response's error.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// The client is neither root nor the state directory's owner.
    #[error(
        "refused a local command from uid {uid}: only root or the owner of {} (uid {owner}) may use the daemon's socket; run the command as one of them",
        state.display()
    )]
    NotAllowed { uid: u32, owner: u32, state: PathBuf },
    /// The kernel did not say who connected.
    #[error("refused a local command: cannot tell who sent it: {0}")]
    NoCredentials(std::io::Error),
    /// The request line is too long.
    #[error("refused a local command: the request is longer than {MAX_REQUEST} bytes")]
    TooLong,
    /// The client did not send its request in time.
    #[error("refused a local command: no complete request within {0:?}")]
    TooSlow(Duration),
    /// Reading the request failed.
    #[error("reading a local command: {0}")]
    Read(std::io::Error),
    /// The request is not the JSON a client sends.
    #[error("bad request: {0}")]
    BadJson(serde_json::Error),
    /// The working directory is not absolute.
    #[error("bad request: the working directory {} is not absolute", .0.display())]
    RelativeCwd(PathBuf),
}

impl RequestError {
    fn response(&self) -> Response {
        Response::refused(self.to_string())
    }
}

/// What became of a command sent to the daemon ([`forward`]).
#[derive(Debug)]
pub enum Forwarded {
    /// No daemon listens: run the command here.
    NoDaemon,
    /// The daemon ran it (or refused it) and answered.
    Answered(Response),
    /// It could not be sent, or the answer could not be read: why, and
    /// the exit status that goes with it.
    Failed(String, u8),
}

/// Sends the command line `args` (program name left out), run in `cwd`,
/// to the daemon holding `state`, if one runs, and waits for its answer.
pub fn forward(state: &Path, args: Vec<String>, cwd: PathBuf) -> Forwarded {
    let sock = state.join(SOCKET);
    let mut stream = match std::os::unix::net::UnixStream::connect(&sock) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // The socket (or a directory above it) is another user's: a
            // daemon of root or of the state's owner holds this node, and
            // opening the state here would fail or race it.
            return Forwarded::Failed(
                format!(
                    "cannot use the daemon's socket {}: {e}; only root or the owner of {} may run commands on this \
                     node",
                    sock.display(),
                    state.display()
                ),
                EXIT_USAGE,
            );
        }
        Err(_) => return Forwarded::NoDaemon,
    };
    let mut line = serde_json::to_string(&Request { args, cwd }).expect("requests serialize");
    line.push('\n');
    if line.len() > MAX_REQUEST + 1 {
        return Forwarded::Failed(
            format!("the command line is longer than the daemon takes ({MAX_REQUEST} bytes); pass fewer paths"),
            EXIT_USAGE,
        );
    }
    // A refusal arrives before the request is read: a failed write still
    // leaves the daemon's answer to read.
    let _ = stream.write_all(line.as_bytes());
    tracing::debug!("running the command in the daemon ({})", sock.display());
    let mut reply = String::new();
    if let Err(e) = BufReader::new(stream).read_line(&mut reply) {
        return Forwarded::Failed(format!("the daemon ({}) did not answer: {e}", sock.display()), EXIT_FAILURE);
    }
    match serde_json::from_str::<Response>(&reply) {
        Ok(r) => Forwarded::Answered(r),
        Err(e) => Forwarded::Failed(format!("the daemon ({}) answered garbage: {e}", sock.display()), EXIT_FAILURE),
    }
}

/// How long a command waits at least for a starting daemon's socket
/// (the daemon holds the state's lock before its socket is up).
pub const STARTING_WAIT: Duration = Duration::from_secs(10);

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Serving peers could not start or failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The local socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
}

/// Who may use the socket: root, and the state directory's owner.
struct Access {
    state: PathBuf,
    owner: u32,
}

impl Access {
    fn allows(&self, uid: u32) -> bool {
        uid == 0 || uid == self.owner
    }

    /// Whether the client with these credentials may send a command.
    fn check(&self, cred: std::io::Result<tokio::net::unix::UCred>) -> Result<(), RequestError> {
        let uid = cred.map_err(RequestError::NoCredentials)?.uid();
        if self.allows(uid) {
            Ok(())
        } else {
            Err(RequestError::NotAllowed { uid, owner: self.owner, state: self.state.clone() })
        }
    }
}

/// Binds the local socket at `state/SOCKET` so that it is never reachable
/// with a wrong mode: bound inside a fresh private directory, made 0600,
/// then renamed into place. The rename replaces whatever was there (a
/// stale socket of a dead daemon, or a planted symlink) without following
/// it. The daemon holds the state's lock, so nothing else binds here.
/// A root daemon gives the socket to the state directory's `owner`, who may
/// use it too. Returns the listener and the socket's inode (to remove only
/// our own socket at exit).
fn bind_socket(state: &Path, owner: u32) -> Result<(tokio::net::UnixListener, u64), SocketError> {
    let sock = state.join(SOCKET);
    // Leftovers of a daemon that died between bind and rename.
    if let Ok(entries) = std::fs::read_dir(state) {
        for e in entries.flatten() {
            if e.file_name().as_encoded_bytes().starts_with(b".sock.") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    // Short names: a socket path must fit in 108 bytes.
    let private = state.join(format!(".sock.{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| SocketError::new(&private, "create a private directory", e))?;
    let md = std::fs::symlink_metadata(&private).map_err(|e| SocketError::new(&private, "look at", e))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !md.is_dir() || md.uid() != euid || md.mode() & 0o077 != 0 {
        return Err(SocketError::new(
            &private,
            "use a private directory",
            std::io::Error::other("it is not a directory of this user with mode 0700"),
        ));
    }
    let result = (|| {
        let tmp = private.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| SocketError::new(&tmp, "bind", e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| SocketError::new(&tmp, "set mode 0600", e))?;
        if euid == 0 && owner != 0 {
            std::os::unix::fs::lchown(&tmp, Some(owner), None)
                .map_err(|e| SocketError::new(&tmp, "give the socket to the state directory's owner", e))?;
        }
        let ino = std::fs::symlink_metadata(&tmp).map_err(|e| SocketError::new(&tmp, "look at", e))?.ino();
        std::fs::rename(&tmp, &sock).map_err(|e| SocketError::new(&sock, "move the new socket into place", e))?;
        listener.set_nonblocking(true).map_err(|e| SocketError::new(&sock, "set non-blocking", e))?;
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(|e| SocketError::new(&sock, "listen", e))?;
        Ok((listener, ino))
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Where a started daemon listens, for the line that says it is ready.
#[derive(Debug)]
pub struct Listening {
    /// The node's host name.
    pub host: String,
    /// The QUIC endpoint's address.
    pub addr: std::net::SocketAddr,
    /// The local commands' socket.
    pub socket: PathBuf,
}

/// Runs the daemon on `current`'s node until SIGTERM or SIGINT: serves
/// peers, and local commands with `commands`; SIGHUP re-reads the
/// configuration. `ready` is called once both listen.
pub async fn run(
    current: Arc<Current>,
    commands: Arc<dyn LocalCommands>,
    ready: impl FnOnce(&Listening),
) -> Result<(), ServeError> {
    let node = current.node();
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
    let mut server = net::Server::bind(addr, &identity).map_err(SyncError::from)?;
    let state = node.state_dir().to_path_buf();
    let sock = state.join(SOCKET);
    let owner =
        std::fs::metadata(&state).map_err(|e| SocketError::new(&state, "look at the state directory", e))?.uid();
    let access = Arc::new(Access { state: state.clone(), owner });
    let (listener, sock_ino) = bind_socket(&state, owner)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| SyncError::Refused(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| SyncError::Refused(format!("cannot handle SIGINT: {e}")))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| SyncError::Refused(format!("cannot handle SIGHUP: {e}")))?;
    // Peers are served with the key the endpoint was bound with.
    let served_key = g.key.clone();
    tracing::info!(
        "started: {} serving {} on {}, commands on {}",
        engine.host,
        engine.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", "),
        server.local_addr(),
        sock.display()
    );
    ready(&Listening { host: engine.host.clone(), addr: server.local_addr(), socket: sock.clone() });
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping");
                break;
            }
            _ = hup.recv() => {
                let current = Arc::clone(&current);
                tokio::spawn(async move {
                    let refresh = tokio::task::spawn_blocking(move || current.refresh()).await;
                    if let Ok(Refresh::Unchanged) = refresh {
                        tracing::info!("SIGHUP: the configuration is unchanged");
                    }
                });
            }
            conn = server.accept() => match conn {
                Ok(conn) => {
                    let current = Arc::clone(&current);
                    let served_key = served_key.clone();
                    tokio::spawn(async move {
                        let node = refreshed(current).await;
                        match node.engine.groups.iter().position(|g| g.key == served_key) {
                            Some(gi) => crate::peer::accept_session(node, conn, gi).await,
                            None => {
                                tracing::warn!(
                                    "refused peer {}: no group of the configuration uses the key this daemon \
                                     serves with any more; restart the daemon",
                                    conn.peer_host()
                                );
                                conn.close(net::CLOSE_REFUSED);
                            }
                        }
                    });
                }
                Err(NetError::EndpointClosed { .. }) => break,
                Err(e) => tracing::warn!("{e}"),
            },
            local = listener.accept() => match local {
                Ok((stream, _)) => {
                    let commands = Arc::clone(&commands);
                    tokio::spawn(local_command(Arc::clone(&current), stream, Arc::clone(&access), commands));
                }
                Err(e) => tracing::warn!("{}: {e}", sock.display()),
            },
        }
    }
    tracing::info!("shutting down: waiting for changes being applied");
    if !current.node().quiesce(SHUTDOWN_WAIT).await {
        tracing::warn!("a change was still being applied after {SHUTDOWN_WAIT:?}; exiting anyway");
    }
    if std::fs::symlink_metadata(&sock).is_ok_and(|m| m.ino() == sock_ino) {
        let _ = std::fs::remove_file(&sock);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reads one request line: at most `limit` bytes before the newline, all
/// within `wait`. `None` when the client closed without sending anything.
async fn read_request<R: AsyncRead + Unpin>(
    read: R,
    limit: usize,
    wait: Duration,
) -> Result<Option<Vec<u8>>, RequestError> {
    // One byte over the limit tells a line that is too long from one that
    // just fits.
    let mut reader = tokio::io::BufReader::new(read.take(limit as u64 + 1));
    let mut line = Vec::new();
    match tokio::time::timeout(wait, reader.read_until(b'\n', &mut line)).await {
        Err(_) => Err(RequestError::TooSlow(wait)),
        Ok(Err(e)) => Err(RequestError::Read(e)),
        Ok(Ok(_)) => {
            if line.last() == Some(&b'\n') {
                line.pop();
            } else if line.len() > limit {
                return Err(RequestError::TooLong);
            }
            Ok(if line.is_empty() { None } else { Some(line) })
        }
    }
}

/// Parses and validates a request line.
fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let req: Request = serde_json::from_slice(line).map_err(RequestError::BadJson)?;
    if !req.cwd.is_absolute() {
        return Err(RequestError::RelativeCwd(req.cwd));
    }
    Ok(req)
}

/// The node as configured now, once the configuration on disk was looked
/// at ([`Current::refresh`]).
async fn refreshed(current: Arc<Current>) -> Arc<Node> {
    let at = Arc::clone(&current);
    let _ = tokio::task::spawn_blocking(move || at.refresh()).await;
    current.node()
}

/// Serves one local client: checks who it is, reads its request, runs it
/// on the node as configured now, and sends back the response.
async fn local_command(
    current: Arc<Current>,
    stream: tokio::net::UnixStream,
    access: Arc<Access>,
    commands: Arc<dyn LocalCommands>,
) {
    let allowed = access.check(stream.peer_cred());
    let (read, mut write) = stream.into_split();
    let request = match allowed {
        Ok(()) => read_request(read, MAX_REQUEST, REQUEST_TIMEOUT).await,
        Err(e) => Err(e),
    };
    let response = match request.and_then(|line| line.map(|l| parse_request(&l)).transpose()) {
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("{e}");
            e.response()
        }
        Ok(Some(request)) => tokio::task::spawn_blocking(move || {
            let kept = match current.refresh() {
                Refresh::Kept(why) => Some(why),
                Refresh::Unchanged | Refresh::Reloaded => None,
            };
            let mut response = commands.run(&current.node(), request);
            response.warnings.extend(kept);
            response
        })
        .await
        .unwrap_or_else(|e| Response {
            out: String::new(),
            error: Some(format!("the command failed: {e}")),
            code: EXIT_FAILURE,
            warnings: Vec::new(),
        }),
    };
    let mut reply = serde_json::to_string(&response).expect("responses serialize");
    reply.push('\n');
    let _ = write.write_all(reply.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str], cwd: &str) -> Vec<u8> {
        serde_json::to_vec(&Request { args: args.iter().map(|a| (*a).to_owned()).collect(), cwd: cwd.into() }).unwrap()
    }

    #[tokio::test]
    async fn read_request_takes_a_line_up_to_the_limit() {
        let line = read_request(&b"0123456789\nrest"[..], 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(line.as_deref(), Some(&b"0123456789"[..]));
        // The last line may end without a newline when the client closes.
        let line = read_request(&b"abc"[..], 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(line.as_deref(), Some(&b"abc"[..]));
        assert!(read_request(&b""[..], 10, Duration::from_secs(5)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn read_request_refuses_a_line_over_the_limit() {
        let long = [b'x'; 11];
        let e = read_request(&long[..], 10, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, RequestError::TooLong), "{e}");
        // An endless line is cut off after the limit, not read to its end.
        let endless = tokio::io::repeat(b'x');
        let e = read_request(endless, 1 << 16, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, RequestError::TooLong), "{e}");
    }

    #[tokio::test]
    async fn read_request_gives_up_on_a_silent_client() {
        // The client end stays open and sends only part of a line.
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"{\"args\":").await.unwrap();
        let e = read_request(server, 100, Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(e, RequestError::TooSlow(_)), "{e}");
        drop(client);
    }

    #[test]
    fn access_admits_root_and_the_owner_only() {
        let access = Access { state: "/var/lib/snapsync/default/h".into(), owner: 1000 };
        let no_cred = Err(std::io::Error::other("no credentials"));
        assert!(matches!(access.check(no_cred), Err(RequestError::NoCredentials(_))));
        assert!(access.allows(0) && access.allows(1000));
        assert!(!access.allows(1001) && !access.allows(65534));
    }

    #[test]
    fn parse_request_refuses_malformed_requests() {
        assert!(matches!(parse_request(b"{not json"), Err(RequestError::BadJson(_))));
        assert!(matches!(parse_request(b"\xff\xfe"), Err(RequestError::BadJson(_))));
        assert!(matches!(parse_request(br#"{"args":"ls","cwd":"/"}"#), Err(RequestError::BadJson(_))));
        assert!(matches!(parse_request(&request(&["ls"], "rel/dir")), Err(RequestError::RelativeCwd(_))));
    }
}
