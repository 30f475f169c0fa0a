//! The daemon (`snapsync serve`), and how other commands reach it.
//!
//! The daemon owns the node's state for as long as it runs: the opened
//! [`Node`], whose store hands out the one writer token. It serves peers on
//! its QUIC endpoint and local commands on the Unix socket [`SOCKET`] in
//! the state directory: a command started while the daemon runs sends its
//! arguments there ([`forward`]), the daemon runs it on its open state
//! ([`LocalCommands`], which the command line provides) and sends back the
//! output and exit status. While it runs, the daemon sends the command's
//! progress ([`Event`] lines) when the client asked for it, and watches the
//! connection: a client that closes its side (Ctrl-C on the command, or
//! the command killed) *interrupts* the run ([`Interrupt`]), which stops
//! at its next safe point. On SIGTERM or SIGINT it stops accepting work,
//! lets the change being applied finish (it waits for the writer token),
//! and exits. It stops the same way, with an error, when a read found its
//! state database or a chunk store damaged ([`ServeError::Damaged`]); the
//! command line then starts the daemon again in place, and that open
//! moves the damaged one aside and rebuilds it.
//!
//! With `serve --watch` the daemon also runs a *watcher* ([`watch`]): it
//! follows the included trees through inotify and syncs what changed as
//! it changes, with a periodic full reconcile as a safety net.
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
//!
//! The answer is zero or more progress lines (`{"progress": EVENT}`, see
//! [`Event`]; only when the request says `"progress": true`, at most one
//! batch every [`PROGRESS_INTERVAL`]), then one [`Response`] line. After
//! its request the client sends nothing until it asks the daemon to stop
//! the command: then it sends the line `{"interrupt": true}` (any byte
//! asks to stop), and the response still follows once it stopped. A
//! client gone (the connection closed both ways) stops the command too;
//! a mere shutdown for writing does not.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::exit::{EXIT_FAILURE, EXIT_USAGE};
use crate::interrupt::Interrupt;
use crate::net::{self, NetError};
use crate::peer::{Node, SyncError};
use crate::progress::{ProgressSink, ProgressTask, Reporter, Unit};

mod reload;
pub mod watch;

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

/// How often the daemon looks whether a read found its state or a chunk
/// store damaged ([`ServeError::Damaged`]).
const DAMAGE_POLL: Duration = Duration::from_secs(1);

/// How often the daemon sends a running command's progress: often enough
/// for a bar to move smoothly, seldom enough that a fast scan does not
/// flood the socket (increments in between are added up).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How long a command interrupted by Ctrl-C waits for the daemon to say
/// that it stopped the run (a second Ctrl-C does not wait).
pub const INTERRUPT_WAIT: Duration = Duration::from_secs(5);

/// A local command sent to the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The command line, program name left out.
    pub args: Vec<String>,
    /// The command's working directory, for relative paths.
    pub cwd: PathBuf,
    /// Whether to send the command's progress (the client draws it on a
    /// terminal). Absent: no.
    #[serde(default)]
    pub progress: bool,
}

/// One event of a running command's progress, as a progress line carries
/// it: `{"progress": {"start": {...}}}`. Tasks are numbered from 0 in the
/// order they start; several may run at once (one per peer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A piece of work starts: `what` it is, its length in `unit`s when
    /// known.
    Start {
        /// The task's number.
        task: u64,
        /// What it does (`scanning web`, `receiving from b (web)`).
        what: String,
        /// How many units it will count, when known.
        len: Option<u64>,
        /// What it counts.
        unit: Unit,
    },
    /// `n` more units of the task are done.
    Inc {
        /// The task's number.
        task: u64,
        /// Units done since the last `inc`.
        #[serde(default, skip_serializing_if = "is_zero")]
        n: u64,
        /// Bytes read since the last `inc`, by a task counted in items
        /// (a scan).
        #[serde(default, skip_serializing_if = "is_zero")]
        read: u64,
    },
    /// The task ended.
    End {
        /// The task's number.
        task: u64,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A progress line of the daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
struct ProgressLine {
    progress: Event,
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
    /// Runs `request` on `node`, reporting its long work to `progress`
    /// and stopping early once `interrupt` is raised.
    fn run(&self, node: &Arc<Node>, request: Request, progress: Reporter, interrupt: Interrupt) -> Response;
}

/// The progress sink of one local command: what its tasks report is
/// turned into [`Event`]s for its client. Starts and ends are queued as
/// they happen; increments are added up per task until
/// [`Relay::take_events`] collects them, so a task that ticks a million
/// times sends a few lines a second.
#[derive(Clone, Default)]
struct Relay(Arc<RelayState>);

#[derive(Default)]
struct RelayState {
    next: std::sync::atomic::AtomicU64,
    /// Starts and ends (with a task's last increment before its end), in
    /// order.
    queued: std::sync::Mutex<Vec<Event>>,
    /// Increments not sent yet, of the tasks running.
    pending: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<Counts>>>,
}

/// What a task of a [`Relay`] did since its last [`Event::Inc`].
#[derive(Default)]
struct Counts {
    n: std::sync::atomic::AtomicU64,
    read: std::sync::atomic::AtomicU64,
}

impl Counts {
    /// The increment to send, if any; counting starts again.
    fn take(&self, task: u64) -> Option<Event> {
        use std::sync::atomic::Ordering;
        let (n, read) = (self.n.swap(0, Ordering::Relaxed), self.read.swap(0, Ordering::Relaxed));
        (n > 0 || read > 0).then_some(Event::Inc { task, n, read })
    }
}

impl Relay {
    /// What happened since the last call, in order.
    fn take_events(&self) -> Vec<Event> {
        // Queued first: a task's start is queued before its increments
        // are counted, and its end after its last increment is taken out.
        // The queue's lock is held throughout: no task starts or ends
        // meanwhile.
        let mut queued = self.0.queued.lock().expect("poisoned");
        let mut events = std::mem::take(&mut *queued);
        events.extend(self.0.pending.lock().expect("poisoned").iter().filter_map(|(&task, c)| c.take(task)));
        drop(queued);
        events
    }
}

impl ProgressSink for Relay {
    fn start(&self, what: &str, len: Option<u64>, unit: Unit) -> Box<dyn ProgressTask> {
        let task = self.0.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let count = Arc::new(Counts::default());
        // Queued and counted under the queue's lock, so that no increment
        // is taken before the start is.
        let mut queued = self.0.queued.lock().expect("poisoned");
        queued.push(Event::Start { task, what: what.to_owned(), len, unit });
        self.0.pending.lock().expect("poisoned").insert(task, Arc::clone(&count));
        Box::new(RelayTask { task, count, relay: self.clone() })
    }
}

/// One task of a [`Relay`]; its end is queued when dropped.
struct RelayTask {
    task: u64,
    count: Arc<Counts>,
    relay: Relay,
}

impl ProgressTask for RelayTask {
    fn inc(&self, n: u64) {
        self.count.n.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn read(&self, n: u64) {
        self.count.read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for RelayTask {
    fn drop(&mut self) {
        let mut queued = self.relay.0.queued.lock().expect("poisoned");
        self.relay.0.pending.lock().expect("poisoned").remove(&self.task);
        queued.extend(self.count.take(self.task));
        queued.push(Event::End { task: self.task });
    }
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
    /// Ctrl-C: the daemon was asked to stop the command; its answer, if
    /// it came within [`INTERRUPT_WAIT`].
    Interrupted(Option<Response>),
}

/// Sends the command line `args` (program name left out), run in `cwd`,
/// to the daemon holding `state`, if one runs, and waits for its answer.
/// With `progress`, asks for the command's progress and reports it there.
/// Ctrl-C (SIGINT) while it waits asks the daemon to stop the command.
pub fn forward(state: &Path, args: Vec<String>, cwd: PathBuf, progress: Option<&dyn ProgressSink>) -> Forwarded {
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
    let request = Request { args, cwd, progress: progress.is_some() };
    let mut line = serde_json::to_string(&request).expect("requests serialize");
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
    let failed = |why: String| Forwarded::Failed(format!("the daemon ({}) {why}", sock.display()), EXIT_FAILURE);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return failed(format!("cannot be waited for: {e}")),
    };
    let answer = runtime.block_on(async {
        // Registered before the first wait: from here on Ctrl-C is ours.
        let sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        stream.set_nonblocking(true)?;
        wait_for_answer(tokio::net::UnixStream::from_std(stream)?, progress, sigint).await
    });
    match answer {
        Ok(Answer::Done(line)) => match serde_json::from_str::<Response>(&line) {
            Ok(r) => Forwarded::Answered(r),
            Err(e) => failed(format!("answered garbage: {e}")),
        },
        Ok(Answer::Interrupted(line)) => {
            Forwarded::Interrupted(line.and_then(|l| serde_json::from_str::<Response>(&l).ok()))
        }
        Err(e) => failed(format!("did not answer: {e}")),
    }
}

/// How the wait for the daemon's answer ended.
enum Answer {
    /// The response line.
    Done(String),
    /// Ctrl-C; the response line if it came in time.
    Interrupted(Option<String>),
}

/// Reads the daemon's answer: progress lines go to `progress`, the first
/// other line is the response. On Ctrl-C, closes this side (the daemon
/// stops the command) and waits at most [`INTERRUPT_WAIT`] for the
/// response, or until a second Ctrl-C.
async fn wait_for_answer(
    stream: tokio::net::UnixStream,
    progress: Option<&dyn ProgressSink>,
    mut sigint: tokio::signal::unix::Signal,
) -> std::io::Result<Answer> {
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let mut tasks: std::collections::HashMap<u64, Box<dyn ProgressTask>> = Default::default();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let give_up = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection closed before the answer",
                    ));
                };
                match serde_json::from_str::<ProgressLine>(&line) {
                    Ok(ProgressLine { progress: event }) => {
                        // Once interrupted, only the response matters.
                        if let Some(sink) = progress
                            && deadline.is_none()
                        {
                            show(sink, &mut tasks, event);
                        }
                    }
                    Err(_) if deadline.is_some() => return Ok(Answer::Interrupted(Some(line))),
                    Err(_) => return Ok(Answer::Done(line)),
                }
            }
            _ = sigint.recv() => {
                if deadline.is_some() {
                    return Ok(Answer::Interrupted(None));
                }
                // The bars go first: what follows is the interruption.
                tasks.clear();
                write.write_all(b"{\"interrupt\":true}\n").await?;
                deadline = Some(tokio::time::Instant::now() + INTERRUPT_WAIT);
            }
            () = give_up => return Ok(Answer::Interrupted(None)),
        }
    }
}

/// Reports one progress event of the daemon to `sink`.
fn show(sink: &dyn ProgressSink, tasks: &mut std::collections::HashMap<u64, Box<dyn ProgressTask>>, event: Event) {
    match event {
        Event::Start { task, what, len, unit } => {
            tasks.insert(task, sink.start(&what, len, unit));
        }
        Event::Inc { task, n, read } => {
            if let Some(t) = tasks.get(&task) {
                t.inc(n);
                t.read(read);
            }
        }
        Event::End { task } => {
            tasks.remove(&task);
        }
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
    /// A read found the state database or a chunk store damaged.
    #[error(
        "{} was found damaged while reading; the daemon stopped so that the next open moves it aside and \
         rebuilds it from the live trees; run `{}`",
        .0.display(),
        crate::store::REPAIR_COMMAND
    )]
    Damaged(PathBuf),
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
    watch: Option<watch::Options>,
    ready: impl FnOnce(&Listening),
) -> Result<(), ServeError> {
    let node = current.node();
    // Sessions with peers stay open between this daemon's runs.
    node.kept.enable();
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
    // Watches are in place before the daemon says it listens: a change
    // made after that line is seen.
    let watcher = match watch {
        Some(opts) => Some(watch::start(Arc::clone(&current), opts).await),
        None => None,
    };
    ready(&Listening { host: engine.host.clone(), addr: server.local_addr(), socket: sock.clone() });
    // A database found damaged while open cannot be moved aside under
    // the daemon, which holds it for every command and session: each would
    // fail on the same damaged block until a restart. The daemon looks for
    // the damage flag a read leaves (two `stat` calls) and stops, so that
    // the next open rebuilds it: the daemon's own, started again in place
    // by the command line (`cli::daemon`).
    let mut damage_tick = tokio::time::interval(DAMAGE_POLL);
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            _ = damage_tick.tick() => {
                if let Some(path) = current.node().engine.found_damaged() {
                    outcome = Err(ServeError::Damaged(path));
                    break;
                }
            }
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
                        let node = refreshed(Arc::clone(&current)).await;
                        let fresh: crate::peer::Fresh = Arc::new(move || {
                            current.refresh();
                            current.node()
                        });
                        match node.engine.groups.iter().position(|g| g.key == served_key) {
                            Some(gi) => crate::peer::accept_session(node, conn, gi, Some(fresh)).await,
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
    // The watcher's run stops at its next safe point; what it applied
    // is recorded.
    if let Some(w) = watcher
        && !w.stop(SHUTDOWN_WAIT).await
    {
        tracing::warn!("the watcher's run was still going after {SHUTDOWN_WAIT:?}; exiting anyway");
    }
    current.node().kept.close_all();
    tracing::info!("shutting down: waiting for changes being applied");
    if !current.node().quiesce(SHUTDOWN_WAIT).await {
        tracing::warn!("a change was still being applied after {SHUTDOWN_WAIT:?}; exiting anyway");
    }
    if std::fs::symlink_metadata(&sock).is_ok_and(|m| m.ino() == sock_ino) {
        let _ = std::fs::remove_file(&sock);
    }
    tracing::info!("stopped");
    outcome
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
    let (mut read, mut write) = stream.into_split();
    let request = match allowed {
        Ok(()) => read_request(&mut read, MAX_REQUEST, REQUEST_TIMEOUT).await,
        Err(e) => Err(e),
    };
    let response = match request.and_then(|line| line.map(|l| parse_request(&l)).transpose()) {
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("{e}");
            e.response()
        }
        Ok(Some(request)) => run_watched(Arc::clone(&current), request, commands, read, &mut write).await,
    };
    let mut reply = serde_json::to_string(&response).expect("responses serialize");
    reply.push('\n');
    let _ = write.write_all(reply.as_bytes()).await;
    // What the command left in memory (a sync's plans, a check's batches,
    // the records it wrote) goes back to the system rather than staying
    // with an idle daemon.
    let node = current.node();
    let _ = tokio::task::spawn_blocking(move || node.settle_memory()).await;
}

/// Runs a local command on a blocking thread; meanwhile sends its progress
/// (if asked) and interrupts it when the client asks to, by sending
/// anything after its request, or is gone. A client that only shuts down
/// its side for writing after the request (as `nc -N` does) still gets
/// its answer: only a connection closed both ways is a client gone.
async fn run_watched(
    current: Arc<Current>,
    request: Request,
    commands: Arc<dyn LocalCommands>,
    mut read: tokio::net::unix::OwnedReadHalf,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> Response {
    let relay = Relay::default();
    let progress = if request.progress { Reporter::new(Arc::new(relay.clone())) } else { Reporter::default() };
    let interrupt = Interrupt::new();
    let raised = interrupt.clone();
    let mut job = tokio::task::spawn_blocking(move || {
        // The configuration as it is on disk now; if it cannot be used,
        // the command runs with the one the daemon has and says so.
        let kept = match current.refresh() {
            Refresh::Kept(why) => Some(why),
            Refresh::Unchanged | Refresh::Reloaded => None,
        };
        let mut response = commands.run(&current.node(), request, progress, raised);
        response.warnings.extend(kept);
        response
    });
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut byte = [0u8; 1];
    let (mut sending, mut read_closed) = (true, false);
    let result = loop {
        tokio::select! {
            done = &mut job => break done,
            _ = tick.tick() => {
                if read_closed && !interrupt.raised() && hung_up(write.as_ref()) {
                    tracing::info!("the caller of a local command is gone: stopping the command");
                    interrupt.raise();
                }
                if sending && send_events(write, relay.take_events()).await.is_err() {
                    // Nobody reads the progress any more.
                    sending = false;
                }
            }
            got = read.read(&mut byte), if !read_closed && !interrupt.raised() => match got {
                Ok(0) => read_closed = true,
                Ok(_) => {
                    tracing::info!("the caller of a local command asks to stop it (Ctrl-C): stopping the command");
                    interrupt.raise();
                }
                Err(e) => {
                    tracing::info!("the caller of a local command is gone ({e}): stopping the command");
                    interrupt.raise();
                }
            },
        }
    };
    if sending {
        let _ = send_events(write, relay.take_events()).await;
    }
    result.unwrap_or_else(|e| Response {
        out: String::new(),
        error: Some(format!("the command failed: {e}")),
        code: EXIT_FAILURE,
        warnings: Vec::new(),
    })
}

/// Whether the other end of `stream` closed it both ways (its process
/// ended, say): `POLLHUP`, which a mere shutdown for writing does not set.
fn hung_up(stream: &tokio::net::UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd { fd: stream.as_raw_fd(), events: 0, revents: 0 };
    // SAFETY: one valid pollfd, and a zero timeout: poll only reports.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n == 1 && fd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Writes `events` as progress lines.
async fn send_events(write: &mut (impl tokio::io::AsyncWrite + Unpin), events: Vec<Event>) -> std::io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut lines = String::new();
    for progress in events {
        lines.push_str(&serde_json::to_string(&ProgressLine { progress }).expect("events serialize"));
        lines.push('\n');
    }
    write.write_all(lines.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str], cwd: &str) -> Vec<u8> {
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        serde_json::to_vec(&Request { args, cwd: cwd.into(), progress: false }).unwrap()
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
    fn a_request_without_the_progress_field_asks_for_none() {
        let req = parse_request(br#"{"args":["sync"],"cwd":"/"}"#).unwrap();
        assert!(!req.progress);
    }

    #[test]
    fn relay_sends_starts_added_up_increments_and_ends_in_order() {
        let relay = Relay::default();
        let scan = relay.start("scanning g", None, Unit::Items);
        for _ in 0..1000 {
            scan.inc(1);
        }
        scan.read(4096);
        let receive = relay.start("receiving from b (g)", Some(10), Unit::Bytes);
        let start = |task, what: &str, len, unit| Event::Start { task, what: what.to_owned(), len, unit };
        assert_eq!(
            relay.take_events(),
            [
                start(0, "scanning g", None, Unit::Items),
                start(1, "receiving from b (g)", Some(10), Unit::Bytes),
                Event::Inc { task: 0, n: 1000, read: 4096 },
            ]
        );
        // Nothing new: nothing sent.
        assert!(relay.take_events().is_empty());
        receive.inc(4);
        receive.inc(6);
        drop(receive);
        scan.inc(1);
        assert_eq!(
            relay.take_events(),
            [Event::Inc { task: 1, n: 10, read: 0 }, Event::End { task: 1 }, Event::Inc { task: 0, n: 1, read: 0 }]
        );
        drop(scan);
        assert_eq!(relay.take_events(), [Event::End { task: 0 }]);
    }

    #[test]
    fn progress_lines_are_the_documented_json() {
        let line = |progress| serde_json::to_string(&ProgressLine { progress }).unwrap();
        assert_eq!(
            line(Event::Start { task: 0, what: "scanning g".into(), len: None, unit: Unit::Items }),
            r#"{"progress":{"start":{"task":0,"what":"scanning g","len":null,"unit":"items"}}}"#
        );
        assert_eq!(line(Event::Inc { task: 2, n: 5, read: 0 }), r#"{"progress":{"inc":{"task":2,"n":5}}}"#);
        assert_eq!(line(Event::End { task: 2 }), r#"{"progress":{"end":{"task":2}}}"#);
        // A response line is no progress line.
        assert!(serde_json::from_str::<ProgressLine>(r#"{"out":"","error":null,"code":0}"#).is_err());
    }

    #[test]
    fn a_client_that_only_stops_writing_has_not_hung_up() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let ours = tokio::net::UnixStream::from_std(ours).unwrap();
        assert!(!hung_up(&ours));
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!hung_up(&ours), "a shutdown for writing still waits for the answer");
        drop(theirs);
        assert!(hung_up(&ours), "a closed client is gone");
    }

    #[test]
    fn parse_request_refuses_malformed_requests() {
        assert!(matches!(parse_request(b"{not json"), Err(RequestError::BadJson(_))));
        assert!(matches!(parse_request(b"\xff\xfe"), Err(RequestError::BadJson(_))));
        assert!(matches!(parse_request(br#"{"args":"ls","cwd":"/"}"#), Err(RequestError::BadJson(_))));
        assert!(matches!(parse_request(&request(&["ls"], "rel/dir")), Err(RequestError::RelativeCwd(_))));
    }
}
