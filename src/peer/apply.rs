//! Applying what a reconcile decided to take: directories and links first
//! (parents before children), then files, then deletions (children before
//! parents); then one scan of the touched paths records it all under the
//! peer's versions, as one commit with a generation (cause `from PEER`).
//!
//! A file is assembled in `.snapsync-NAME-CONTENT.part` in its target
//! directory from chunks found locally (the part file of an interrupted
//! earlier attempt, the chunk store, the file's old version, any other
//! tracked file holding the chunk), each checked against its hash, and
//! from chunks fetched from the peer; then synced, given its metadata and
//! renamed into place. A part file left by a crash is picked up by the
//! next attempt, so chunks received once are not asked for again.
//!
//! Nothing is replaced or deleted unless the path still is what the local
//! record says: a local change not recorded yet is never overwritten; the
//! path is reported and left for the next run, whose check records the
//! local change (and then sees the conflict, if there is one).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::reconcile::{GroupReport, Plan};
use super::server::{Peer, offset_of};
use super::session::request;
use super::{Node, Stats, SyncError};
use crate::chunk::ChunkRef;
use crate::config::ResolvedGroup;
use crate::hash::Hash;
use crate::proto::{self, ChangeAction, FileChunks, Message, PendingChunks};
use crate::restore::write::{apply_meta, current_umask, place_symlink, sync_dir};
use crate::scan::Adopted;
use crate::store::{EntryRecord, join_logical};
use crate::tree::{Body, Kind, Meta, Timestamp};

/// Taking the peer's state of one path.
pub(super) struct Take {
    /// The logical path.
    pub logical: Vec<u8>,
    /// The local path.
    pub local: PathBuf,
    /// The local record the decision was made on.
    pub old: Option<EntryRecord>,
    /// The state to take, with the version to record it under.
    pub new: EntryRecord,
    /// What it does, for the audit trail.
    pub action: ChangeAction,
}

/// How many `GetChunks` requests run at once.
const PARALLEL_REQUESTS: usize = 4;

/// Opens a file for reading without following a symlink in its place.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

/// One file being assembled.
struct FileJob {
    take: Take,
    part: PathBuf,
    chunks: Vec<ChunkRef>,
    /// Chunks not found locally.
    missing: usize,
}

pub(super) struct Apply<'a> {
    node: &'a Arc<Node>,
    peer: &'a Arc<Peer>,
    gi: usize,
    g: &'a ResolvedGroup,
    adopt: Adopted,
    scope: Vec<PathBuf>,
    /// Local paths changed, for the group's actions.
    changed: Vec<PathBuf>,
    problems: Vec<String>,
    /// Logical paths that could not be applied.
    failed: std::collections::HashSet<Vec<u8>>,
}

impl<'a> Apply<'a> {
    pub(super) fn new(node: &'a Arc<Node>, peer: &'a Arc<Peer>, gi: usize) -> Self {
        Apply {
            node,
            peer,
            gi,
            g: &node.engine.groups[gi],
            adopt: Adopted::new(),
            scope: Vec::new(),
            changed: Vec::new(),
            problems: Vec::new(),
            failed: Default::default(),
        }
    }

    fn problem(&mut self, path: &Path, why: impl std::fmt::Display) {
        if let Some(logical) = self.g.to_logical(path) {
            self.failed.insert(logical.into_os_string().into_vec());
        }
        let p = format!("{}: {why}", path.display());
        tracing::warn!("from {}: {p}", self.peer.host);
        self.problems.push(p);
    }

    fn audit(&mut self, action: ChangeAction, path: &Path) {
        crate::audit::applied(&self.node.engine.host, &self.peer.host, action.as_str(), path);
        self.changed.push(path.to_path_buf());
    }

    fn adopt(&mut self, logical: Vec<u8>, local: PathBuf, record: EntryRecord) {
        self.adopt.insert(logical, record);
        self.scope.push(local);
    }

    /// Applies `plans`; returns the generation recorded, if any.
    pub(super) async fn run(mut self, plans: Vec<Plan>, report: &mut GroupReport) -> Result<Option<u64>, SyncError> {
        let mut files = Vec::new();
        let mut deletions = Vec::new();
        let mut patches = Vec::new();
        for plan in plans {
            match plan {
                Plan::Patch { dir, name, record } => patches.push((dir, name, record)),
                Plan::Reversion { logical, local, record } => self.adopt(logical, local, record),
                Plan::Take(t) if t.new.deleted => deletions.push(t),
                Plan::Take(t) => match t.new.body.kind() {
                    Kind::File => files.push(t),
                    Kind::Dir | Kind::Symlink => tokio::task::block_in_place(|| self.apply_other(t)),
                },
            }
        }
        if !files.is_empty() {
            self.files(files, report).await?;
        }
        tokio::task::block_in_place(|| {
            for t in deletions.into_iter().rev() {
                self.delete(t);
            }
        });
        report.problems.append(&mut self.problems);
        report.forget_changes(&self.failed);
        let mut generation = None;
        if !self.scope.is_empty() {
            let scope = minimal(std::mem::take(&mut self.scope));
            let cause = format!("from {}", self.peer.host);
            let checked = tokio::task::block_in_place(|| {
                self.node.engine.check_with_cause(&scope, &cause, Some(self.gi), true, Some(&self.adopt))
            })?;
            report.problems.extend(checked.problems.iter().map(|p| p.to_string()));
            crate::engine::run_actions(self.g, &self.changed, false);
            generation = checked.groups.first().and_then(|g| g.generation);
        }
        if !patches.is_empty() {
            tokio::task::block_in_place(|| self.node.engine.patch_tombstones(self.gi, patches))?;
        }
        Ok(generation)
    }

    /// Checks that `t.local` is still what its record says, and that no
    /// symlink leads to it.
    fn unchanged(&self, t: &Take) -> Result<(), String> {
        let root = self.g.root_of_local(&t.local).ok_or("outside the include roots")?;
        crate::restore::no_links_between(&root.local, &t.local).map_err(|e| e.to_string())?;
        let md = match fs::symlink_metadata(&t.local) {
            Ok(md) => Some(md),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.to_string()),
        };
        let old = t.old.as_ref().filter(|o| !o.deleted);
        match (old, md) {
            (None, None) => Ok(()),
            (None, Some(md)) if md.is_dir() && t.new.body.kind() == Kind::Dir => Ok(()),
            (None, Some(_)) => Err("exists here but is not recorded yet: left for the next run".into()),
            (Some(_), None) if t.new.deleted => Ok(()),
            (Some(_), None) => Err("deleted here since the last check: left for the next run".into()),
            (Some(o), Some(md)) => {
                let same = match o.body.kind() {
                    Kind::Dir => md.is_dir(),
                    _ => {
                        md.len() == o.stat.size
                            && md.ino() == o.stat.ino
                            && md.mtime() == o.stat.mtime.secs
                            && md.mtime_nsec() as u32 == o.stat.mtime.nanos
                            && md.mode() & libc::S_IFMT == o.stat.mode & libc::S_IFMT
                    }
                };
                if same { Ok(()) } else { Err("changed here since the last check: left for the next run".into()) }
            }
        }
    }

    /// Creates or updates a directory or symlink.
    fn apply_other(&mut self, t: Take) {
        if let Err(why) = self.unchanged(&t) {
            return self.problem(&t.local, why);
        }
        let result = match &t.new.body {
            Body::Dir { .. } => make_dir(&t.local, &t.new.meta),
            Body::Symlink { target } => make_symlink(&t.local, &t.new.meta, target),
            Body::File { .. } => unreachable!("files are assembled"),
        };
        match result {
            Ok(()) => {
                self.audit(t.action, &t.local);
                self.adopt(t.logical, t.local, t.new);
            }
            Err(e) => self.problem(&t.local, e),
        }
    }

    fn delete(&mut self, t: Take) {
        if let Err(why) = self.unchanged(&t) {
            return self.problem(&t.local, why);
        }
        let result = match fs::symlink_metadata(&t.local) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
            Ok(md) if md.is_dir() => fs::remove_dir(&t.local).map(|()| true),
            Ok(_) => fs::remove_file(&t.local).map(|()| true),
        };
        match result {
            Ok(removed) => {
                if removed {
                    self.audit(ChangeAction::Delete, &t.local);
                }
                self.adopt(t.logical, t.local, t.new);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                // Entries this group never touches keep the directory. It
                // stays, recorded under a version that dominates the
                // deletion, so every host ends up with it (empty
                // elsewhere) instead of asking for the deletion forever.
                self.problem(&t.local, "not removed: it holds entries this group does not track (excluded or new)");
                if let Some(old) = t.old.filter(|o| !o.deleted)
                    && let Ok(seq) = self.node.engine.store.allocate_seq()
                {
                    let version =
                        crate::sync::settled_version(&old.version, &t.new.version, &self.node.engine.host, seq);
                    self.adopt(t.logical, t.local, EntryRecord { version, ..old });
                }
            }
            Err(e) => self.problem(&t.local, e),
        }
    }

    /// Assembles and places files.
    async fn files(&mut self, takes: Vec<Take>, report: &mut GroupReport) -> Result<(), SyncError> {
        let mut jobs = Vec::with_capacity(takes.len());
        for t in takes {
            if let Err(why) = self.unchanged(&t) {
                self.problem(&t.local, why);
                continue;
            }
            let chunks = match self.chunk_list(&t).await {
                Ok(c) => c,
                Err(e) => {
                    self.problem(&t.local, e);
                    continue;
                }
            };
            let name = t.local.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
            let content = match &t.new.body {
                Body::File { content, .. } => *content,
                _ => unreachable!("only files here"),
            };
            let part =
                t.local.with_file_name(format!(".snapsync-{}-{}.part", Hash::of(&name).short(), content.short()));
            jobs.push(FileJob { take: t, part, chunks, missing: 0 });
        }
        // Local sources first.
        let cs = self.node.engine.chunk_store(self.gi);
        let mut wanted: HashMap<Hash, Vec<(usize, u64)>> = HashMap::new();
        let mut index: Option<HashMap<Hash, (PathBuf, u64, u32)>> = None;
        tokio::task::block_in_place(|| {
            for (ji, job) in jobs.iter_mut().enumerate() {
                match fill_locally(job, cs, &mut index, self.node, self.g) {
                    Ok(Filled { found, missing }) => {
                        report.chunks_local += found;
                        job.missing = missing.len();
                        for (h, off) in missing {
                            wanted.entry(h).or_default().push((ji, off));
                        }
                    }
                    Err(e) => {
                        let p = format!("{}: {e}", job.take.local.display());
                        tracing::warn!("{p}");
                        job.missing = usize::MAX;
                        self.problems.push(p);
                    }
                }
            }
        });
        // Then the peer, for what is left.
        let unavailable = self.fetch(&jobs, wanted, report).await?;
        tokio::task::block_in_place(|| {
            // Complete part files get their metadata; one filesystem sync
            // then makes all their data durable before any is renamed into
            // place, and another makes the renames durable before the
            // state records them (rather than two fsyncs per file).
            let mut ready = Vec::new();
            for job in jobs {
                if job.missing == usize::MAX {
                    continue;
                }
                if job.chunks.iter().any(|c| unavailable.contains_key(&c.hash)) {
                    let why = format!(
                        "not every chunk arrived from {} (its file changed meanwhile) or could be written \
                         here: left for the next run",
                        self.peer.host
                    );
                    self.problem(&job.take.local, why);
                    continue;
                }
                match prepare(&job) {
                    Ok(()) => ready.push(job),
                    Err(e) => self.problem(&job.take.local, e),
                }
            }
            if ready.is_empty() {
                return;
            }
            let root = &self.g.roots[0].local;
            if let Err(e) = sync_filesystem(&ready[0].part) {
                self.problem(root, format!("syncing received files: {e}"));
                return;
            }
            let mut placed = Vec::new();
            for job in ready {
                // Checked again right before the rename: the old version
                // may have been changed while the new one was fetched.
                if let Err(why) = self.unchanged(&job.take) {
                    self.problem(&job.take.local, why);
                    continue;
                }
                match place(&job, cs.is_some()) {
                    Ok(record) => placed.push((job, record)),
                    Err(e) => self.problem(&job.take.local, e),
                }
            }
            if let Some((job, _)) = placed.first()
                && let Err(e) = sync_filesystem(&job.take.local)
            {
                self.problem(root, format!("syncing received files: {e}"));
                return;
            }
            for (job, record) in placed {
                self.audit(job.take.action, &job.take.local);
                self.adopt(job.take.logical, job.take.local, record);
            }
        });
        Ok(())
    }

    /// The peer's chunk list of a file, inline or fetched page by page.
    async fn chunk_list(&self, t: &Take) -> Result<Vec<ChunkRef>, String> {
        let (size, content) = match &t.new.body {
            Body::File { size, content } => (*size, *content),
            _ => unreachable!("only files here"),
        };
        if size == 0 || !t.new.chunks.is_empty() {
            return Ok(t.new.chunks.clone());
        }
        let mut opener = self.peer.opener.clone();
        let mut list: Vec<ChunkRef> = Vec::new();
        loop {
            let msg = Message::GetChunkList {
                group: self.g.name.clone(),
                path: t.logical.clone(),
                content,
                start: list.len() as u64,
            };
            let (_, reply) = request(&self.peer.host, &mut opener, &msg).await.map_err(|e| e.to_string())?;
            let Message::ChunkList { total, chunks, .. } = reply else {
                unreachable!("check_reply allows only ChunkList")
            };
            if chunks.is_empty() || list.len() as u64 + chunks.len() as u64 > total {
                return Err(format!("{} sent a chunk list that does not add up", self.peer.host));
            }
            list.extend(chunks);
            if list.len() as u64 == total {
                break;
            }
        }
        proto::check_chunk_list(&t.logical, size, &content, &list).map_err(|e| e.to_string())?;
        Ok(list)
    }

    /// Fetches the chunks in `wanted` from the peer and writes them into
    /// their part files; returns those the peer could not send.
    async fn fetch(
        &self,
        jobs: &[FileJob],
        wanted: HashMap<Hash, Vec<(usize, u64)>>,
        report: &mut GroupReport,
    ) -> Result<HashMap<Hash, ()>, SyncError> {
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        // Requests of at most MAX_CHUNKS_PER_REQUEST chunks, each named
        // with a file that holds it.
        let mut requests: Vec<Vec<FileChunks>> = Vec::new();
        let mut current: Vec<FileChunks> = Vec::new();
        let mut count = 0;
        let mut assigned: HashMap<Hash, ()> = HashMap::new();
        for (ji, job) in jobs.iter().enumerate() {
            let Body::File { content, .. } = &job.take.new.body else { continue };
            let mut hashes = Vec::new();
            for c in &job.chunks {
                if wanted.get(&c.hash).is_some_and(|w| w[0].0 == ji) && assigned.insert(c.hash, ()).is_none() {
                    hashes.push(c.hash);
                }
            }
            for part in hashes.chunks(proto::limits::MAX_CHUNKS_PER_REQUEST) {
                if count + part.len() > proto::limits::MAX_CHUNKS_PER_REQUEST {
                    requests.push(std::mem::take(&mut current));
                    count = 0;
                }
                count += part.len();
                current.push(FileChunks { path: job.take.logical.clone(), content: *content, hashes: part.to_vec() });
            }
        }
        if !current.is_empty() {
            requests.push(current);
        }
        let targets: Arc<HashMap<Hash, Vec<(PathBuf, u64)>>> = Arc::new(
            wanted
                .into_iter()
                .map(|(h, v)| (h, v.into_iter().map(|(ji, off)| (jobs[ji].part.clone(), off)).collect()))
                .collect(),
        );
        let mut lanes: Vec<Vec<Vec<FileChunks>>> = (0..PARALLEL_REQUESTS).map(|_| Vec::new()).collect();
        for (i, r) in requests.into_iter().enumerate() {
            lanes[i % PARALLEL_REQUESTS].push(r);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for lane in lanes.into_iter().filter(|l| !l.is_empty()) {
            let (node, peer, targets, gi) =
                (Arc::clone(self.node), Arc::clone(self.peer), Arc::clone(&targets), self.gi);
            let group = self.g.name.clone();
            tasks.spawn(async move {
                let mut out = LaneResult::default();
                for files in lane {
                    fetch_one(&node, &peer, gi, &group, files, &targets, &mut out).await?;
                }
                Ok::<LaneResult, SyncError>(out)
            });
        }
        let mut unavailable = HashMap::new();
        while let Some(r) = tasks.join_next().await {
            let r = r.expect("fetch task panicked")?;
            report.chunks_fetched += r.chunks;
            report.bytes_fetched += r.bytes;
            for h in r.missing {
                unavailable.insert(h, ());
            }
        }
        Ok(unavailable)
    }
}

#[derive(Default)]
struct LaneResult {
    chunks: u64,
    bytes: u64,
    missing: Vec<Hash>,
}

/// One `GetChunks` exchange: every chunk received is verified and written
/// to each part file (and offset) that needs it.
async fn fetch_one(
    node: &Arc<Node>,
    peer: &Arc<Peer>,
    gi: usize,
    group: &str,
    files: Vec<FileChunks>,
    targets: &HashMap<Hash, Vec<(PathBuf, u64)>>,
    out: &mut LaneResult,
) -> Result<(), SyncError> {
    let msg = Message::GetChunks { group: group.to_owned(), files };
    let Message::GetChunks { files, .. } = &msg else { unreachable!() };
    let mut pending = PendingChunks::new(files);
    let mut opener = peer.opener.clone();
    let proto_err = |source| SyncError::Proto { peer: peer.host.clone(), source };
    let (mut stream, mut reply) = request(&peer.host, &mut opener, &msg).await?;
    // The part files this exchange writes to, each opened once.
    let mut open: HashMap<PathBuf, File> = HashMap::new();
    loop {
        if pending.accept(&reply).map_err(proto_err)? {
            if let Message::ChunksDone { missing } = reply {
                out.missing.extend(missing);
            }
            return Ok(());
        }
        if let Message::Chunk { hash, stored } = &reply {
            let data = crate::chunk::decode(hash, stored).map_err(|e| SyncError::Proto {
                peer: peer.host.clone(),
                source: proto::ProtoError::Mismatch { why: format!("chunk {}: {e}", hash.short()) },
            })?;
            out.chunks += 1;
            out.bytes += stored.len() as u64;
            Stats::add(&node.stats.chunks_received, 1);
            Stats::add(&node.stats.bytes_received, stored.len() as u64);
            tokio::task::block_in_place(|| -> Result<(), SyncError> {
                if let Some(cs) = node.engine.chunk_store(gi) {
                    cs.put(hash, &data)?;
                }
                for (part, off) in targets.get(hash).map(Vec::as_slice).unwrap_or_default() {
                    let f = match open.entry(part.clone()) {
                        std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                        std::collections::hash_map::Entry::Vacant(e) => OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(part)
                            .map(|f| e.insert(f)),
                    };
                    if let Err(e) = f.and_then(|f| f.write_all_at(&data, *off)) {
                        // Disk full, say: the file is not complete, so it
                        // is left for the next run like a chunk never sent.
                        tracing::warn!("{}: {e}", part.display());
                        out.missing.push(*hash);
                    }
                }
                Ok(())
            })?;
        }
        reply = proto::read_frame(&mut stream).await.map_err(proto_err)?;
        reply.validate().map_err(proto_err)?;
    }
}

struct Filled {
    found: u64,
    missing: Vec<(Hash, u64)>,
}

/// Fills a part file with every chunk found locally; returns the rest.
fn fill_locally(
    job: &FileJob,
    cs: Option<&crate::store::ChunkStore>,
    index: &mut Option<HashMap<Hash, (PathBuf, u64, u32)>>,
    node: &Node,
    g: &ResolvedGroup,
) -> io::Result<Filled> {
    let size: u64 = job.chunks.iter().map(|c| u64::from(c.len)).sum();
    let part = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&job.part)?;
    // A part file of the full size is an earlier attempt's; a new one is
    // empty.
    let existed = part.metadata()?.len() == size;
    if !existed {
        part.set_len(size)?;
    }
    let old = job.take.old.as_ref().filter(|o| !o.deleted && o.body.kind() == Kind::File);
    let mut old_file: Option<File> = None;
    let mut filled = Filled { found: 0, missing: Vec::new() };
    let mut buf = Vec::new();
    let mut offset = 0u64;
    for c in &job.chunks {
        let at = offset;
        offset += u64::from(c.len);
        buf.resize(c.len as usize, 0);
        // An earlier attempt's bytes.
        if existed && part.read_exact_at(&mut buf, at).is_ok() && Hash::of(&buf) == c.hash {
            if let Some(cs) = cs {
                cs.put(&c.hash, &buf).map_err(io::Error::other)?;
            }
            filled.found += 1;
            continue;
        }
        let mut data = None;
        if let Some(cs) = cs
            && cs.has(&c.hash).unwrap_or(false)
        {
            data = cs.get(&c.hash).ok();
        }
        if data.is_none()
            && let Some(o) = old
            && let Some((off, _)) = offset_of(&o.chunks, &c.hash)
        {
            if old_file.is_none() {
                old_file = open_nofollow(&job.take.local).ok();
            }
            data = old_file.as_ref().and_then(|f| read_checked(f, off, c));
        }
        if data.is_none() {
            let idx = index.get_or_insert_with(|| chunk_index(node, g));
            if let Some((path, off, _)) = idx.get(&c.hash) {
                data = open_nofollow(path).ok().and_then(|f| read_checked(&f, *off, c));
            }
        }
        match data {
            Some(d) => {
                part.write_all_at(&d, at)?;
                if let Some(cs) = cs {
                    cs.put(&c.hash, &d).map_err(io::Error::other)?;
                }
                filled.found += 1;
            }
            None => filled.missing.push((c.hash, at)),
        }
    }
    Ok(filled)
}

/// Bytes of chunk `c` at `off` in `f`, if they hash right.
pub(super) fn read_checked(f: &File, off: u64, c: &ChunkRef) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; c.len as usize];
    f.read_exact_at(&mut buf, off).ok()?;
    (Hash::of(&buf) == c.hash).then_some(buf)
}

/// Where each chunk of the group's tracked files is: a file and offset.
fn chunk_index(node: &Node, g: &ResolvedGroup) -> HashMap<Hash, (PathBuf, u64, u32)> {
    let mut index = HashMap::new();
    for item in node.engine.store.all_dir_records(&g.name) {
        let Ok((dir, rec)) = item else { continue };
        for (name, r) in rec.children.iter().filter(|(_, r)| !r.deleted && r.body.kind() == Kind::File) {
            let logical = join_logical(&dir, name);
            let Some(local) = g.to_local(Path::new(std::ffi::OsStr::from_bytes(&logical))) else { continue };
            let mut off = 0u64;
            for c in &r.chunks {
                index.entry(c.hash).or_insert_with(|| (local.clone(), off, c.len));
                off += u64::from(c.len);
            }
        }
    }
    index
}

/// Gives a complete part file its metadata.
fn prepare(job: &FileJob) -> io::Result<()> {
    let t = &job.take;
    let f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(&job.part)?;
    if t.new.meta.mode.is_none() {
        // `ignore mod`: keep the replaced file's mode, or the mode a new
        // file would get.
        let mode =
            fs::symlink_metadata(&t.local).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o666 & !current_umask());
        f.set_permissions(Permissions::from_mode(mode))?;
    }
    apply_meta(&f, &t.new.meta)
}

/// Renames a prepared part file into place; returns the record to adopt,
/// with the placed file's stat.
fn place(job: &FileJob, stored: bool) -> io::Result<EntryRecord> {
    let t = &job.take;
    fs::rename(&job.part, &t.local)?;
    let md = fs::symlink_metadata(&t.local)?;
    let stat = crate::scan::stat_of(&md);
    let racy = t.new.meta.mtime.is_some_and(|m| (Timestamp::now().secs - m.secs).abs() <= 2);
    Ok(EntryRecord { stat, racy, stored, chunks: job.chunks.clone(), ..t.new.clone() })
}

/// Flushes the filesystem holding `path` to disk (`syncfs`).
fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(path);
    let f = File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `path` a directory with `meta` (mode and owner; directories keep
/// no mtime in the tree).
fn make_dir(path: &Path, meta: &Meta) -> io::Result<()> {
    let created = match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => false,
        Ok(_) => {
            fs::remove_file(path)?;
            fs::create_dir(path)?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(path)?;
            true
        }
        Err(e) => return Err(e),
    };
    let f = File::open(path)?;
    // A new directory without a synced mode (`ignore mod`) gets the mode the
    // started-with umask gives, not the private umask the process runs under.
    let mode = meta.mode.or_else(|| created.then(|| 0o777 & !current_umask()));
    apply_meta(&f, &Meta { mtime: None, mode, ..meta.clone() })
}

/// Makes `path` a symlink to `target`, atomically replacing what is there
/// (an empty directory included).
fn make_symlink(path: &Path, meta: &Meta, target: &[u8]) -> io::Result<()> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir(path)?;
    }
    place_symlink(path, meta, target)?;
    sync_dir(path.parent().ok_or_else(|| io::Error::other("no parent directory"))?)
}

/// The paths of `paths` not below another one of them.
pub(super) fn minimal(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !out.last().is_some_and(|last| p.starts_with(last)) {
            out.push(p);
        }
    }
    out
}
