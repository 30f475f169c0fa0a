//! Sessions: connecting to peers, accepting them, and `sync`.
//!
//! Every wait on the peer is bounded: streams are opened within
//! [`proto::REPLY_TIMEOUT`] and used through [`Deadlines`] (a [`PeerStream`]);
//! a `Pull` is awaited frame by frame, its receiver's `Progress` frames
//! restarting the bound. An initiator busy with the session sends
//! `Progress` notices so the peer does not close it as idle; the side that
//! accepted a session closes it after [`proto::SESSION_IDLE_TIMEOUT`]
//! without a request. When a session ends, the requests still being
//! served for it are cancelled. A daemon keeps the sessions it opened
//! between its runs (`kept.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::server::serve_stream;
use super::{Node, SyncError};
use crate::config::HostEntry;
use crate::engine::{ActionQueue, CheckReport};
use crate::interrupt::Interrupt;
use crate::net::{self, Connection, NetError, Stream, StreamAcceptor, StreamOpener};
use crate::progress::{Reporter, Unit};
use crate::proto::{self, ChangeAction, Deadlines, ErrorCode, Message, ProtoError};
use crate::sync::{ChangeReport, GroupReport, Peer, clear_conflicts, reconcile, request, roots_summary, send_only};

/// Most requests of one peer served at once; further streams wait to be
/// accepted. A session needs a handful (a pull fetches chunks over four
/// streams at once); the bound keeps a peer that opens many streams from
/// holding a frame buffer and a task for each.
const MAX_SERVED_AT_ONCE: usize = 16;

/// What `sync` is asked to do.
#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// Decide and report, change nothing on any host.
    pub dry_run: bool,
    /// Only these peers (all when empty).
    pub peers: Vec<String>,
    /// Only these groups (all when empty).
    pub groups: Vec<String>,
    /// Check only these paths first (all when empty).
    pub paths: Vec<PathBuf>,
    /// Skip the local check (`status`: compare what is recorded).
    pub no_check: bool,
    /// Where the run reports its scan and its transfers.
    pub progress: Reporter,
    /// Raised when the run's caller asks it to stop ([`SyncError::Interrupted`]).
    pub interrupt: Interrupt,
}

/// The outcome of syncing one group with one peer.
#[derive(Debug, Serialize)]
pub struct PeerReport {
    /// The group.
    pub group: String,
    /// The peer.
    pub peer: String,
    /// Why the exchange failed, if it did.
    pub error: Option<String>,
    /// Whether the trees were equal when compared (nothing to do).
    pub in_sync: bool,
    /// What this node took from the peer (or would take, dry run).
    pub pulled: Option<GroupReport>,
    /// What the peer took from this node (or would take).
    pub pushed: Vec<ChangeReport>,
    /// Changes the peer made but left out of its report.
    pub pushed_more: u64,
    /// What the peer could not apply of what it took from this node (the
    /// first ones, as the peer reported them: its path and why).
    pub pushed_problems: Vec<String>,
    /// How many problems the peer had in all, listed or not.
    pub pushed_problems_total: u64,
    /// The exchange was stopped by the run's interrupt.
    #[serde(skip)]
    pub interrupted: bool,
}

/// The outcome of a `sync` run.
#[derive(Debug, Serialize)]
pub struct SyncReport {
    /// The check that ran first.
    pub check: Option<CheckReport>,
    /// One report per group and peer.
    pub peers: Vec<PeerReport>,
}

impl SyncReport {
    /// Conflicts found (on this node's side) in this run.
    pub fn conflicts(&self) -> usize {
        self.peers
            .iter()
            .map(|p| {
                let here = p.pulled.as_ref().map_or(0, |r| r.conflicts.len());
                let there = p.pushed.iter().filter(|c| c.action == ChangeAction::Conflict).count();
                here.max(there)
            })
            .sum()
    }

    /// Whether an exchange or the check failed, or something sent or
    /// received was not applied, here or on a peer (SPEC §3).
    pub fn failed(&self) -> bool {
        self.check.as_ref().is_some_and(|c| c.has_errors())
            || self.peers.iter().any(|p| {
                p.error.is_some()
                    || p.pushed_problems_total > 0
                    || p.pulled.as_ref().is_some_and(|r| !r.problems.is_empty())
            })
    }

    /// Whether differences remain that a dry run found, or `status` sees:
    /// with a peer, or local changes the check found but (read-only) did
    /// not record.
    pub fn differences(&self) -> bool {
        self.peers.iter().any(|p| !p.in_sync && p.error.is_none())
            || self.check.as_ref().is_some_and(|c| c.groups.iter().any(|g| g.pending))
    }
}

/// Checks, then reconciles every chosen group with every chosen peer, the
/// peers of a group in parallel.
pub async fn sync(node: Arc<Node>, opts: SyncOptions) -> Result<SyncReport, SyncError> {
    for name in &opts.groups {
        if node.engine.group_index(name).is_none() {
            return Err(SyncError::Engine(crate::engine::EngineError::NotFound(format!(
                "no group {name:?} lists host {}",
                node.engine.host
            ))));
        }
    }
    for name in &opts.peers {
        if !node.engine.groups.iter().any(|g| g.peers().any(|p| p.is_host(name))) {
            return Err(SyncError::Engine(crate::engine::EngineError::NotFound(format!(
                "{name} is not a peer of {} in any group",
                node.engine.host
            ))));
        }
    }
    // What this run changes, here and from every peer, for the actions
    // (SPEC §4.12: once per run).
    let actions = Arc::new(ActionQueue::default());
    let check = if opts.no_check {
        None
    } else if opts.dry_run {
        // Read-only (SPEC §3): scans and reports, records nothing, so it
        // needs no writer lock.
        let (paths, n, progress, interrupt) =
            (opts.paths.clone(), Arc::clone(&node), opts.progress.clone(), opts.interrupt.clone());
        let checked =
            tokio::task::spawn_blocking(move || n.engine.check_read_only(&paths, &*progress, Some(&interrupt)));
        Some(checked.await.expect("check panicked")?)
    } else if let Some(report) = unwalked(&node, &opts)? {
        Some(report)
    } else {
        let (paths, progress, interrupt) = (opts.paths.clone(), opts.progress.clone(), opts.interrupt.clone());
        let full = paths.is_empty();
        let mark = node.watched.mark();
        let report = node.write_locked(move |n, w| n.engine.check(w, &paths, &*progress, Some(&interrupt))).await?;
        // A whole tree checked while the watcher watched it: a later `sync`
        // needs no walk until the watcher sees a change.
        if full && report.problems.is_empty() {
            for g in &node.engine.groups {
                node.watched.checked(&g.name, mark, true);
            }
        }
        Some(report)
    };
    // Stopped while scanning: what the check found is recorded, and no
    // peer is asked for anything.
    if opts.interrupt.raised() {
        return Err(SyncError::Interrupted);
    }
    if let Some(c) = &check
        && !opts.dry_run
    {
        actions.add_check(&node.engine.groups, c);
    }
    let mut peers = round(&node, &opts, None, &actions).await;
    let interrupted = peers.iter().any(|p| p.interrupted);
    // What this run took from one peer reaches the others in the same run:
    // a second round, one root comparison per peer where nothing is left.
    let took: Vec<String> = peers
        .iter()
        .filter(|p| p.pulled.as_ref().is_some_and(GroupReport::took_any))
        .map(|p| p.group.clone())
        .collect();
    if !opts.dry_run && !took.is_empty() && !interrupted {
        let again = round(&node, &opts, Some(&took), &actions).await;
        for second in again {
            if let Some(first) = peers.iter_mut().find(|p| p.group == second.group && p.peer == second.peer) {
                first.absorb(second);
            }
        }
    }
    if !opts.dry_run {
        let n = Arc::clone(&node);
        tokio::task::spawn_blocking(move || actions.run(&n.engine.groups)).await.expect("actions panicked");
    }
    if interrupted {
        // What was applied before the stop is recorded, and its actions ran.
        return Err(SyncError::Interrupted);
    }
    Ok(SyncReport { check, peers })
}

/// The check of a whole-tree `sync` on a watching daemon whose trees are
/// all clean ([`crate::node::Watched`]): what is recorded is what is on
/// disk, so nothing is walked and the report lists nothing scanned.
fn unwalked(node: &Node, opts: &SyncOptions) -> Result<Option<CheckReport>, SyncError> {
    if !opts.paths.is_empty() || node.engine.groups.iter().any(|g| !node.watched.clean(&g.name)) {
        return Ok(None);
    }
    let mut groups = Vec::new();
    for g in &node.engine.groups {
        let Some(roots) = node.engine.store.root_set(&g.name).map_err(crate::engine::EngineError::from)? else {
            return Ok(None);
        };
        groups.push(crate::engine::GroupCheck {
            group: g.name.clone(),
            changed: false,
            pending: false,
            pending_paths: Vec::new(),
            generation: None,
            root: roots.hash().to_hex(),
            stats: Default::default(),
            local_changes: Vec::new(),
        });
    }
    tracing::debug!("every tree is as last checked (watched): no walk");
    Ok(Some(CheckReport { groups, problems: Vec::new() }))
}

/// One exchange with every chosen peer of every chosen group (of `only`
/// groups, when given), the peers in parallel.
async fn round(
    node: &Arc<Node>,
    opts: &SyncOptions,
    only: Option<&[String]>,
    actions: &Arc<ActionQueue>,
) -> Vec<PeerReport> {
    let mut tasks = tokio::task::JoinSet::new();
    for (gi, g) in node.engine.groups.iter().enumerate() {
        if !opts.groups.is_empty() && !opts.groups.contains(&g.name) {
            continue;
        }
        if only.is_some_and(|o| !o.contains(&g.name)) {
            continue;
        }
        for peer in g.peers() {
            if !opts.peers.is_empty() && !opts.peers.iter().any(|p| peer.is_host(p)) {
                continue;
            }
            let (node, peer, actions) = (Arc::clone(node), peer.clone(), Arc::clone(actions));
            let run = Run { dry_run: opts.dry_run, progress: opts.progress.clone(), interrupt: opts.interrupt.clone() };
            tasks.spawn(async move { sync_peer(node, gi, peer, run, actions).await });
        }
    }
    let mut peers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        peers.push(r.expect("peer task panicked"));
    }
    peers.sort_by(|a, b| (&a.group, &a.peer).cmp(&(&b.group, &b.peer)));
    peers
}

impl PeerReport {
    /// Adds what a second exchange with the same peer did.
    fn absorb(&mut self, later: PeerReport) {
        if later.error.is_some() {
            self.error = self.error.take().or(later.error);
        }
        for c in later.pushed {
            self.pushed.retain(|p| p.path != c.path);
            self.pushed.push(c);
        }
        self.pushed_more += later.pushed_more;
        // What the peer could not apply in either exchange stays reported.
        for p in later.pushed_problems {
            if !self.pushed_problems.contains(&p) {
                self.pushed_problems.push(p);
            }
        }
        self.pushed_problems_total += later.pushed_problems_total;
        match (&mut self.pulled, later.pulled) {
            (Some(first), Some(second)) => first.absorb(second),
            (first @ None, second) => *first = second,
            (_, None) => {}
        }
        self.in_sync = later.in_sync;
        if self.in_sync {
            // Whatever conflict the first exchange saw is settled.
            self.pushed.retain(|c| c.action != ChangeAction::Conflict);
            if let Some(p) = &mut self.pulled {
                p.conflicts.clear();
                p.changes.retain(|c| c.action != ChangeAction::Conflict);
            }
        }
    }
}

/// What each exchange of a run shares.
struct Run {
    dry_run: bool,
    progress: Reporter,
    interrupt: Interrupt,
}

async fn sync_peer(node: Arc<Node>, gi: usize, entry: HostEntry, run: Run, actions: Arc<ActionQueue>) -> PeerReport {
    let group = node.engine.groups[gi].name.clone();
    let mut report = PeerReport {
        group,
        peer: entry.name.clone(),
        error: None,
        in_sync: false,
        pulled: None,
        pushed: Vec::new(),
        pushed_more: 0,
        pushed_problems: Vec::new(),
        pushed_problems_total: 0,
        interrupted: false,
    };
    match exchange(&node, gi, &entry, &run, actions, &mut report).await {
        Ok(()) => {}
        Err(SyncError::Interrupted) => {
            tracing::info!("group {}, peer {}: interrupted", report.group, report.peer);
            report.interrupted = true;
            report.error = Some(SyncError::Interrupted.to_string());
        }
        Err(e) => {
            tracing::error!("group {}, peer {}: {e}", report.group, report.peer);
            report.error = Some(e.to_string());
        }
    }
    report
}

/// A session this node opened with a peer, welcomed for the group.
pub(super) struct Opened {
    /// The peer's host name, from its verified certificate.
    pub host: String,
    /// The peer's key, as its certificate showed it.
    pub fingerprint: net::Fingerprint,
    /// The protocol version the peer chose.
    pub protocol: u16,
    /// The groups the peer welcomed.
    pub groups: Vec<String>,
    /// Opens request streams to the peer.
    pub opener: StreamOpener,
    /// The streams the peer opens.
    pub acceptor: StreamAcceptor,
}

impl Opened {
    /// Closes the session in order.
    pub fn close(&self) {
        self.opener.close(0);
    }
}

/// Connects to the peer `entry` of group `gi`, checks its key against its
/// pin, and has `Hello` for the group answered by `Welcome`.
pub(super) async fn open_session(node: &Arc<Node>, gi: usize, entry: &HostEntry) -> Result<Opened, SyncError> {
    let conn = connect(node, gi, entry).await?;
    welcomed(node, gi, conn).await
}

/// One exchange with one peer. Raising the run's interrupt stops it: before
/// the session is up, at once (nothing was asked of the peer); after, by
/// closing the session, so that the exchange fails at its next wait on the
/// network, once the change being applied here is finished (a pull the peer
/// runs stops the same way at its end).
async fn exchange(
    node: &Arc<Node>,
    gi: usize,
    entry: &HostEntry,
    run: &Run,
    actions: Arc<ActionQueue>,
    report: &mut PeerReport,
) -> Result<(), SyncError> {
    let group = &node.engine.groups[gi].name;
    if let Some(kept) = node.kept.take(group, &entry.name) {
        // The pins may have changed since the session was opened.
        if let Err(e) = node.pins().and_then(|p| Ok(p.check(&kept.host, kept.fingerprint)?)) {
            kept.close();
            return Err(e);
        }
        let closer = kept.opener.clone();
        let kept = session(node, gi, entry, kept, true, run, Arc::clone(&actions), report);
        match interruptible(entry, closer, run, kept).await? {
            Ended::Done => return Ok(()),
            Ended::KeptGone => {}
        }
    }
    let connecting = run.progress.start(&format!("connecting to {}", entry.name), None, Unit::Items);
    let opened = tokio::select! {
        opened = async { welcomed(node, gi, connect(node, gi, entry).await?).await } => opened?,
        () = run.interrupt.wait() => return Err(SyncError::Interrupted),
    };
    drop(connecting);
    let closer = opened.opener.clone();
    interruptible(entry, closer, run, session(node, gi, entry, opened, false, run, actions, report)).await.map(|_| ())
}

/// How a session's part in a run ended.
enum Ended {
    /// The run's exchange is over (failures are errors).
    Done,
    /// A kept session did not answer the run's first request: it is
    /// closed, nothing was asked of the peer, and a new session is needed.
    KeptGone,
}

/// Runs `session` (on the session `closer` closes) until the run is
/// interrupted; then closes the session and lets it end.
async fn interruptible(
    entry: &HostEntry,
    closer: StreamOpener,
    run: &Run,
    session: impl std::future::Future<Output = Result<Ended, SyncError>>,
) -> Result<Ended, SyncError> {
    tokio::pin!(session);
    tokio::select! {
        result = &mut session => result,
        () = run.interrupt.wait() => {
            tracing::debug!("peer {}: the run was interrupted: closing the session", entry.name);
            closer.close(net::CLOSE_INTERRUPTED);
            let _ = session.await;
            Err(SyncError::Interrupted)
        }
    }
}

/// Connects to the peer `entry` of group `gi`, its key pinned.
async fn connect(node: &Arc<Node>, gi: usize, entry: &HostEntry) -> Result<Connection, SyncError> {
    let identity = node.identity(gi)?;
    let addr = resolve(entry).await?;
    // No QUIC keep-alive: a connection whose peer has gone quiet closes
    // after the idle timeout, and the session's own `Progress` frames keep
    // a busy one open.
    let conn = net::connect(addr, &entry.name, &identity).await.map_err(|e| match e {
        // The peer never answered: say what usually causes that.
        e @ NetError::Timeout { what: "handshake", .. } => SyncError::Refused(format!(
            "{e}: no answer from {}; is `snapsync serve` running there, and is that UDP port open?",
            entry.name
        )),
        e => e.into(),
    })?;
    node.pins()?.check(conn.peer_host(), conn.peer_fingerprint())?;
    Ok(conn)
}

/// Has `Hello` for group `gi` answered by `Welcome` on `conn`.
async fn welcomed(node: &Arc<Node>, gi: usize, conn: Connection) -> Result<Opened, SyncError> {
    let g = &node.engine.groups[gi];
    let host = conn.peer_host().to_owned();
    let fingerprint = conn.peer_fingerprint();
    let (mut opener, acceptor) = conn.split();
    let hello = Message::Hello {
        protocol: proto::PROTOCOL_VERSION,
        host: node.engine.host.clone(),
        groups: vec![g.name.clone()],
    };
    let (_, welcome) = request(&host, &mut opener, &hello).await?;
    let Message::Welcome { groups, protocol, .. } = welcome else { unreachable!("check_reply allows only Welcome") };
    if !groups.contains(&g.name) {
        return Err(SyncError::Refused(format!(
            "peer {host} does not share group {} with {}",
            g.name, node.engine.host
        )));
    }
    Ok(Opened { host, fingerprint, protocol, groups, opener, acceptor })
}

/// The exchange of one run with the peer, on a session opened for it or
/// `kept` from an earlier run. A daemon keeps the session for the next
/// run when the exchange succeeds and the peer speaks protocol 3.
#[allow(clippy::too_many_arguments)]
async fn session(
    node: &Arc<Node>,
    gi: usize,
    entry: &HostEntry,
    opened: Opened,
    kept: bool,
    run: &Run,
    actions: Arc<ActionQueue>,
    report: &mut PeerReport,
) -> Result<Ended, SyncError> {
    let (dry_run, progress) = (run.dry_run, &run.progress);
    let g = &node.engine.groups[gi];
    let Opened { host, fingerprint, protocol, groups, mut opener, mut acceptor } = opened;
    let peer = Arc::new(Peer::new(host.clone(), groups.clone(), opener.clone(), actions, progress.clone()));
    // Both end with the session, also when it is dropped unfinished; the
    // server gives the acceptor back when stopped, for a session kept.
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = AbortOnDrop(Some(tokio::spawn({
        let (node, peer) = (Arc::clone(node), Arc::clone(&peer));
        async move {
            serve_streams(node, peer, &mut acceptor, false, Some(stopped), None).await;
            acceptor
        }
    })));
    let heartbeat = AbortOnDrop(Some(tokio::spawn(heartbeat(host.clone(), opener.clone()))));

    // One round trip when nothing differs. On a kept session, a peer that
    // does not answer at once (it restarted, or closed the session for a
    // new configuration) gets a new session instead.
    let compared = if kept {
        match tokio::time::timeout(super::kept::KEPT_PROBE, roots_compared(node, &peer, gi)).await {
            Ok(Ok(compared)) => compared,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", super::kept::KEPT_PROBE),
                };
                tracing::debug!("peer {host}: the kept session failed ({why}): opening a new one");
                opener.close(0);
                return Ok(Ended::KeptGone);
            }
        }
    } else {
        roots_compared(node, &peer, gi).await?
    };
    let result = async {
        let (trees_equal, digests_equal) = compared;
        if trees_equal && digests_equal {
            report.in_sync = true;
            // Whatever conflict was recorded with the peer is settled (a
            // dry run leaves the record as it is).
            if !dry_run {
                clear_conflicts(node, gi, &host).await?;
            }
            return Ok(());
        }
        // First the peer takes what this node has newer: it checks its own
        // tree before, so what it changed since its last run takes part,
        // and the conflicts it finds are there for this node to find too.
        // A receive-only host never pushes.
        if !g.local.receive_only {
            crate::killpoint::hit("push.before");
            push(&peer, &mut opener, &g.name, dry_run, report).await?;
        }
        // A receive-only peer is never pulled from: with equal trees and
        // nothing it took (or would take), only versions differ, and its
        // next pull merges them.
        if entry.receive_only {
            report.in_sync = trees_equal && report.pushed.is_empty() && report.pushed_problems_total == 0;
        }
        // Then this node takes what the peer has newer; never anything
        // from a receive-only peer.
        if !entry.receive_only {
            let pulled = reconcile(node, &peer, gi, dry_run, true).await?;
            report.in_sync = pulled.in_sync && report.pushed.is_empty();
            // The peer answers again when this node just won conflicts
            // (by force or policy), or when the peer found conflicts this
            // node no longer sees: it was shown this node's state before
            // a settlement made in this run.
            let stale =
                report.pushed.iter().any(|c| c.action == ChangeAction::Conflict && !pulled.conflicts.contains(&c.path));
            let again = (pulled.settled > 0 || stale) && !dry_run && !g.local.receive_only;
            report.pulled = Some(pulled);
            if again {
                push(&peer, &mut opener, &g.name, dry_run, report).await?;
            }
        }
        Ok::<(), SyncError>(())
    }
    .await;
    drop(heartbeat);
    if let Err(e) = result {
        opener.close(0);
        return Err(e);
    }
    if protocol >= 3 && node.kept.enabled() && request(&host, &mut opener, &Message::Done).await.is_ok() {
        let _ = stop.send(());
        if let Some(acceptor) = server.finish().await {
            let opened = Opened { host, fingerprint, protocol, groups, opener, acceptor };
            node.kept.put(&g.name, &entry.name, opened);
            return Ok(Ended::Done);
        }
    } else {
        let _ = send_only(&host, &mut opener, &Message::Bye).await;
    }
    opener.close(0);
    Ok(Ended::Done)
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    /// Waits for the task to end; `None` if it panicked.
    async fn finish(mut self) -> Option<T> {
        self.0.take()?.await.ok()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Sends `Progress` alone on a new stream every
/// [`proto::PROGRESS_INTERVAL`], for as long as the initiator's side of the
/// session runs (it is aborted then): the peer, which closes a session idle
/// for [`proto::SESSION_IDLE_TIMEOUT`], keeps it open while this node
/// applies what it took. Stops when the peer does not take one.
async fn heartbeat(host: String, mut opener: StreamOpener) {
    loop {
        tokio::time::sleep(proto::PROGRESS_INTERVAL).await;
        if send_only(&host, &mut opener, &Message::Progress).await.is_err() {
            return;
        }
    }
}

/// Asks the peer to pull `group` from this node; adds what it changed to
/// `report`.
///
/// The pull lasts as long as its transfer: the peer sends `Progress` at
/// least every [`proto::PROGRESS_INTERVAL`] until it answers, and each
/// frame restarts the [`proto::REPLY_TIMEOUT`] of the wait. A peer that
/// stops working for the pull (killed, wedged, cut off) is given up on
/// within that bound.
async fn push(
    peer: &Peer,
    opener: &mut StreamOpener,
    group: &str,
    dry_run: bool,
    report: &mut PeerReport,
) -> Result<(), SyncError> {
    let host = peer.host.as_str();
    let _sending = peer.sending(peer.progress.start(&format!("sending to {host} ({group})"), None, Unit::Bytes));
    let msg = Message::Pull { group: group.to_owned(), dry_run };
    let proto_err = |source: ProtoError| SyncError::Proto { peer: host.to_owned(), source };
    let (mut stream, mut reply) = request(host, opener, &msg).await?;
    while reply == Message::Progress {
        reply = proto::read_frame(&mut stream).await.map_err(proto_err)?;
        reply.validate().map_err(proto_err)?;
        proto::check_reply(&msg, &reply).map_err(proto_err)?;
    }
    match reply {
        Message::Pulled { changes, more, problems, problems_total } => {
            // A later answer about a path replaces an earlier one, and
            // a change of a directory (its deletion, say, reported alone)
            // replaces earlier answers about the entries below it.
            let fresh: Vec<ChangeReport> = changes.iter().map(ChangeReport::from_wire).collect();
            let below = |c: &ChangeReport, f: &ChangeReport| {
                f.action != ChangeAction::Conflict
                    && c.path.strip_prefix(f.path.as_str()).is_some_and(|rest| rest.starts_with('/'))
            };
            report.pushed.retain(|c| !fresh.iter().any(|f| f.path == c.path || below(c, f)));
            report.pushed.extend(fresh);
            report.pushed_more = more;
            // The last answer tells what is still not applied there.
            for p in &problems {
                tracing::error!("not applied on {host}: {p}");
            }
            report.pushed_problems = problems;
            report.pushed_problems_total = problems_total;
            Ok(())
        }
        Message::Refused { reason, message } => {
            Err(SyncError::Refused(format!("peer {host} refused ({}): {message}", reason.as_str())))
        }
        _ => unreachable!("check_reply allows only Pulled or Refused"),
    }
}

/// Whether the peer's tree equals this node's, and whether its version
/// digest does.
async fn roots_compared(node: &Arc<Node>, peer: &Peer, gi: usize) -> Result<(bool, bool), SyncError> {
    let g = &node.engine.groups[gi];
    let mut opener = peer.opener.clone();
    let (_, reply) = request(&peer.host, &mut opener, &Message::GetRoots { group: g.name.clone() }).await?;
    let Message::Roots { hash, versions, .. } = reply else { unreachable!("check_reply allows only Roots") };
    let (tree, digest) = roots_summary(&node.engine, g)?;
    Ok((hash == tree, versions == digest))
}

/// The socket address of a host entry.
pub async fn resolve(entry: &HostEntry) -> Result<SocketAddr, SyncError> {
    let port = entry.port_or(net::DEFAULT_PORT);
    let host = entry.connect_host();
    let lookup = tokio::time::timeout(proto::REPLY_TIMEOUT, tokio::net::lookup_host((host, port)));
    let mut addrs = match lookup.await {
        Ok(found) => {
            found.map_err(|e| SyncError::Refused(format!("cannot resolve {host} (peer {}): {e}", entry.name)))?
        }
        Err(_) => {
            return Err(SyncError::Refused(format!(
                "cannot resolve {host} (peer {}): no answer within {}s",
                entry.name,
                proto::REPLY_TIMEOUT.as_secs()
            )));
        }
    };
    addrs.next().ok_or_else(|| SyncError::Refused(format!("{host} (peer {}) has no address", entry.name)))
}

/// Serves every stream the peer opens until the connection ends, at most
/// [`MAX_SERVED_AT_ONCE`] at a time. With `idle_close` (the side that
/// accepted the session), closes the session once the peer has opened no
/// stream for [`proto::SESSION_IDLE_TIMEOUT`] and nothing is being served.
///
/// Also returns when `stop` fires (the initiator's side of a session kept
/// for the next run). With `fresh` (a daemon's side that accepted the
/// session), the first request after a `Done` finds the configuration
/// reloaded if it changed: the session then closes in order, so that the
/// initiator's next run opens one served by the node as configured now.
///
/// When it returns, the requests still being served are cancelled: a
/// session that ended holds nothing of the node's. (A pull being served
/// runs in its own task and stops at its next wait on the network, which
/// fails at once on a closed connection; it is never cut off in the middle
/// of applying.)
async fn serve_streams(
    node: Arc<Node>,
    peer: Arc<Peer>,
    acceptor: &mut StreamAcceptor,
    idle_close: bool,
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
    fresh: Option<&Fresh>,
) {
    let cache = node.encoded.hold();
    let mut tasks = tokio::task::JoinSet::new();
    let stop = async {
        match stop {
            Some(stop) => {
                let _ = stop.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut stopped = false;
    loop {
        let idle = tokio::time::sleep(proto::SESSION_IDLE_TIMEOUT);
        tokio::select! {
            () = &mut stop => {
                stopped = true;
                break;
            }
            accepted = acceptor.accept_stream(), if tasks.len() < MAX_SERVED_AT_ONCE => match accepted {
                Ok(Some(stream)) => {
                    if let Some(fresh) = fresh
                        && peer.starts_run()
                        && outdated(&node, fresh).await
                    {
                        tracing::debug!("peer {}: the configuration changed: session closed", peer.host);
                        peer.opener.close(0);
                        break;
                    }
                    tasks.spawn(serve_stream(Arc::clone(&node), Arc::clone(&peer), stream));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("peer {}: connection ended: {e}", peer.host);
                    break;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = idle, if idle_close && tasks.is_empty() => {
                tracing::debug!(
                    "peer {}: no request for {}s: session closed",
                    peer.host,
                    proto::SESSION_IDLE_TIMEOUT.as_secs()
                );
                peer.opener.close(0);
                break;
            }
        }
    }
    if !tasks.is_empty() {
        tracing::debug!("peer {}: session ended: {} requests cancelled", peer.host, tasks.len());
    }
    tasks.shutdown().await;
    // A session stopped for the next run returns at once: the command it
    // ran for gives the memory back after it answered.
    if cache.release() && !stopped {
        let _ = tokio::task::spawn_blocking(move || node.settle_memory()).await;
    }
}

/// The node as configured now, once the configuration on disk was looked
/// at (a daemon's [`crate::daemon::Current`]). Blocking.
pub type Fresh = Arc<dyn Fn() -> Arc<Node> + Send + Sync>;

/// Whether `node` is no longer the node as configured now.
async fn outdated(node: &Arc<Node>, fresh: &Fresh) -> bool {
    let fresh = Arc::clone(fresh);
    tokio::task::spawn_blocking(move || fresh()).await.is_ok_and(|now| !Arc::ptr_eq(&now, node))
}

/// Serves a connection a peer opened to this node's endpoint, which
/// authenticated with the identity of group `via`: the peer's `Hello`
/// first, then its requests, run after run for as long as the peer keeps
/// the session. With `fresh` (a daemon), the first request after a `Done`
/// finds the configuration reloaded if it changed, and the session then
/// closes instead of serving a run with the old one.
pub async fn accept_session(node: Arc<Node>, conn: Connection, via: usize, fresh: Option<Fresh>) {
    let host = conn.peer_host().to_owned();
    let fingerprint = conn.peer_fingerprint();
    let (opener, mut acceptor) = conn.split();
    let first = match tokio::time::timeout(proto::SESSION_IDLE_TIMEOUT, acceptor.accept_stream()).await {
        Ok(Ok(Some(s))) => s,
        _ => {
            opener.close(0);
            return;
        }
    };
    let Some(groups) = welcome(&node, &host, fingerprint, via, first).await else {
        opener.close(net::CLOSE_REFUSED);
        return;
    };
    tracing::debug!("peer {host}: session opened");
    // Everything the peer's pulls of one run change runs the group's
    // actions once: at the run's `Done`, or when the session ends.
    let peer = Arc::new(Peer::accepted(host, groups, opener));
    serve_streams(Arc::clone(&node), Arc::clone(&peer), &mut acceptor, true, None, fresh.as_ref()).await;
    let actions = Arc::clone(&peer.actions);
    tokio::task::spawn_blocking(move || actions.run(&node.engine.groups)).await.expect("actions panicked");
}

/// Answers the peer's `Hello` on its first stream; the groups it may sync.
/// A host listed in none of them is refused before its key is pinned.
async fn welcome(
    node: &Node,
    host: &str,
    fingerprint: net::Fingerprint,
    via: usize,
    stream: Stream,
) -> Option<Vec<String>> {
    let mut stream = Deadlines::new(stream, "Hello request", "answer to Hello");
    // Not welcomed yet. A host listed in a group of this key reads its
    // `Hello` within its own budget, the one its requests will use; any
    // other name within the one budget all such names share, so that
    // certificates minted with the group key for made-up names cannot
    // multiply it, nor take a listed host's.
    let key = &node.engine.groups[via].key;
    let listed = node.engine.groups.iter().any(|g| g.key == *key && g.host(host).is_some());
    let budget = node.request_budget(if listed { host } else { "" });
    let hello = proto::read_frame_within(&mut stream, &budget).await.and_then(|m| m.validate().map(|()| m));
    let reply = match hello {
        Ok(Message::Hello { protocol, host: claimed, groups }) => match proto::negotiate(protocol) {
            Err(e) => Err(Message::error(&e)),
            Ok(_) if !claimed.eq_ignore_ascii_case(host) => Err(Message::Error {
                code: ErrorCode::NotAllowed,
                message: format!("Hello names host {claimed:?}, the certificate {host:?}"),
            }),
            Ok(chosen) => {
                let shared = node.shared_groups(host, via, &groups);
                let pinned = || node.pins().and_then(|p| Ok(p.check(host, fingerprint)?));
                if shared.is_empty() {
                    Err(Message::Error {
                        code: ErrorCode::NotAllowed,
                        message: format!(
                            "{host} is not listed in any group it asked for ({}) on {}",
                            groups.join(", "),
                            node.engine.host
                        ),
                    })
                } else if let Err(e) = pinned() {
                    // This host's log gets the instruction for this host;
                    // the peer is told where that instruction is run.
                    tracing::warn!("refused peer {host}: {e}");
                    let told = match &e {
                        SyncError::Net(n) => n.told_to_peer(&node.engine.host),
                        other => other.to_string(),
                    };
                    return refuse(
                        stream,
                        Message::Error { code: ErrorCode::NotAllowed, message: super::server::truncated(told) },
                    )
                    .await;
                } else {
                    Ok((
                        Message::Welcome { protocol: chosen, host: node.engine.host.clone(), groups: shared.clone() },
                        shared,
                    ))
                }
            }
        },
        Ok(other) => Err(Message::Error {
            code: ErrorCode::BadRequest,
            message: format!("expected Hello, got {}", other.kind()),
        }),
        Err(e) => Err(Message::error(&e)),
    };
    match reply {
        Ok((msg, groups)) => {
            proto::write_frame(&mut stream, &msg).await.ok()?;
            let _ = stream.shutdown().await;
            Some(groups)
        }
        Err(msg) => {
            if let Message::Error { message, .. } = &msg {
                tracing::warn!("refused peer {host}: {message}");
            }
            refuse(stream, msg).await
        }
    }
}

/// Sends the refusal of a peer's `Hello`; the session ends.
async fn refuse(mut stream: Deadlines<Stream>, msg: Message) -> Option<Vec<String>> {
    let _ = proto::write_frame(&mut stream, &msg).await;
    let _ = stream.shutdown().await;
    None
}
