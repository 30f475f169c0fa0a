//! Garbage collection: drop the generations a group's retention no longer
//! keeps ([`super::retention`]) and free every node and chunk that nothing
//! kept refers to.
//!
//! Mark and sweep rather than reference counts: the marks are recomputed
//! from the roots each time, so a crash half-way through a collection, or a
//! bug in a counter, can never free something still in use. The live set
//! is each group's current tree plus its kept generations. Walking shares
//! work between generations: a subtree seen once (same tree hash) is not
//! walked again, so the cost is one tree plus what changed between
//! generations. State records are removed (and synced) before the chunks
//! they referenced, so a crash leaves at worst unreferenced chunks for the
//! next collection.
//!
//! A check that changed the tree does not collect every time: marking
//! walks every node of the tree, so a one-file change would pay for the
//! whole tree. [`collect_if_due`] drops the generations no rule keeps at
//! once (a record each) and collects when what changed since the last
//! collection ([`GcDebt`]) reaches a quarter of what was live then, so the
//! cost per change is what changed, and garbage stays a fraction of the
//! store.

use std::collections::{HashMap, HashSet};

use super::retention::{Retention, plan};
use super::{ChunkStore, Store, StoreError, Writer, keyspace_keys};
use crate::chunk::ChunkRef;
use crate::hash::Hash;
use crate::tree::{Body, RootSet, Timestamp};

/// A root set to keep, with the chunk lists of its roots that are files.
type KeptTree = (RootSet, Vec<Vec<ChunkRef>>);

/// What one collection freed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Generation ids dropped because no retention rule keeps them.
    pub generations_dropped: Vec<u64>,
    /// Groups whose state was dropped because the configuration no longer
    /// lists them for this host.
    pub groups_forgotten: Vec<String>,
    /// Directory nodes (with their manifests) freed.
    pub nodes_freed: u64,
    /// Chunks freed from chunk stores.
    pub chunks_freed: u64,
    /// Stored bytes those chunks took.
    pub bytes_freed: u64,
}

/// What changed since the last collection, and what it left live: the
/// garbage a collection now would find is at most about `nodes` nodes and
/// `bytes` stored bytes. Kept in the state, so that short-lived commands
/// add up too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcDebt {
    /// Tree nodes written since (each may replace one).
    pub nodes: u64,
    /// Bytes the generations dropped since had added to the chunk store.
    pub bytes: u64,
    /// Tree nodes live after the last collection.
    pub live_nodes: u64,
    /// Stored bytes live after the last collection.
    pub live_bytes: u64,
}

impl GcDebt {
    /// Whether a collection is due: what may be garbage reached a quarter
    /// of what was live (a small tree is collected after most changes,
    /// which costs little).
    pub fn due(&self) -> bool {
        (self.nodes > 0 && self.nodes.saturating_mul(4) >= self.live_nodes)
            || (self.bytes > 0 && self.bytes.saturating_mul(4) >= self.live_bytes)
    }
}

/// A group as the collector sees it.
pub struct GcGroup<'a> {
    /// The group's name.
    pub name: &'a str,
    /// How it keeps generations.
    pub retention: Retention,
    /// Index of its chunk store in the slice passed to [`collect_garbage`].
    pub chunk_store: Option<usize>,
}

/// Drops the generations no retention rule keeps, then frees whatever
/// nothing kept refers to. Generations in `protected` stay (a restore is
/// using them).
///
/// `groups` must list every group whose data lives in `store`; generations
/// of a group not listed are dropped.
pub fn collect_garbage(
    store: &Store,
    w: &Writer,
    groups: &[GcGroup<'_>],
    chunk_stores: &[&ChunkStore],
    protected: &[u64],
) -> Result<GcReport, StoreError> {
    let mut report = GcReport::default();
    let mut batch = store.batch(w);

    // Which generations stay.
    let mut kept: HashMap<&str, Vec<KeptTree>> = HashMap::new();
    let all = store.generations()?;
    let keep_ids = kept_generations(store, &all, groups, protected)?;
    for g in &all {
        let group = groups.iter().find(|x| x.name == g.group);
        if let Some(group) = group.filter(|_| keep_ids.contains(&g.id)) {
            kept.entry(group.name).or_default().push((g.roots.clone(), g.root_chunks.clone()));
        } else {
            batch.remove_generation(g.id);
            report.generations_dropped.push(g.id);
        }
    }
    report.generations_dropped.sort_unstable();

    // A group no longer configured is forgotten whole. Keeping its
    // records while its nodes are swept would leave them pointing at
    // nothing should the group come back; forgotten, it is scanned afresh.
    for name in store.groups_with_state()? {
        if !groups.iter().any(|g| g.name == name) {
            batch.forget_group(&name)?;
            report.groups_forgotten.push(name);
        }
    }

    // Mark.
    let mut live_nodes = HashSet::new();
    let mut live_chunks: Vec<HashSet<Hash>> = vec![HashSet::new(); chunk_stores.len()];
    for g in groups {
        let mut sets = kept.remove(g.name).unwrap_or_default();
        if let Some(current) = store.root_set(g.name)? {
            let roots = store.dir_record(g.name, b"")?.unwrap_or_default();
            let chunks = current
                .roots
                .iter()
                .map(|(l, _)| roots.get(l.as_bytes()).map(|r| r.chunks.clone()).unwrap_or_default())
                .collect();
            sets.push((current, chunks));
        }
        // Walked per group: a subtree two groups share must have its chunks
        // marked for each group's chunk store.
        let mut visited = HashSet::new();
        let mut chunks = g.chunk_store.map(|i| &mut live_chunks[i]);
        for (set, root_chunks) in &sets {
            for ((_, root), rc) in set.roots.iter().zip(root_chunks) {
                if let Some(c) = chunks.as_deref_mut() {
                    c.extend(rc.iter().map(|c| c.hash));
                }
                if let Some(root) = root
                    && let Body::Dir { tree } = root.body
                {
                    mark_tree(store, tree, &mut visited, chunks.as_deref_mut())?;
                }
            }
        }
        live_nodes.extend(visited);
    }

    crate::killpoint::hit("gc.marked");
    // Sweep the state first, then the chunks it referenced.
    for key in keyspace_keys(&store.nodes_keyspace()) {
        let key = key.map_err(|e| store.err(e))?;
        if Hash::from_slice(&key).is_none_or(|h| !live_nodes.contains(&h)) {
            batch.remove_node(&key);
            report.nodes_freed += 1;
        }
    }
    let listed: Vec<Vec<(Hash, u64)>> = chunk_stores.iter().map(|cs| cs.list()).collect::<Result<_, _>>()?;
    let live_bytes = listed
        .iter()
        .zip(&live_chunks)
        .flat_map(|(list, live)| list.iter().filter(|(h, _)| live.contains(h)).map(|(_, size)| size))
        .sum();
    batch.put_gc_debt(GcDebt { nodes: 0, bytes: 0, live_nodes: live_nodes.len() as u64, live_bytes });
    batch.commit()?;
    crate::killpoint::hit("gc.state_swept");

    for ((cs, live), list) in chunk_stores.iter().zip(&live_chunks).zip(listed) {
        let dead: Vec<(Hash, u64)> = list.into_iter().filter(|(h, _)| !live.contains(h)).collect();
        report.chunks_freed += dead.len() as u64;
        report.bytes_freed += dead.iter().map(|(_, s)| s).sum::<u64>();
        cs.remove(&dead.iter().map(|(h, _)| *h).collect::<Vec<_>>())?;
    }
    Ok(report)
}

/// The ids of the generations some retention rule keeps (or `protected`),
/// among those of `groups`.
fn kept_generations(
    store: &Store,
    all: &[super::Generation],
    groups: &[GcGroup<'_>],
    protected: &[u64],
) -> Result<HashSet<u64>, StoreError> {
    let now = Timestamp::now();
    let mut keep_ids = HashSet::new();
    for g in groups {
        let mine: Vec<&super::Generation> = all.iter().filter(|x| x.group == g.name).collect();
        if mine.is_empty() {
            continue;
        }
        let current = store.root_set(g.name)?;
        let reasons = plan(store, &mine, current.as_ref(), &g.retention, protected, now)?;
        keep_ids.extend(reasons.into_iter().filter(|(_, r)| !r.is_empty()).map(|(id, _)| id));
    }
    Ok(keep_ids)
}

/// What a check that may have changed the tree collects: everything, as
/// [`collect_garbage`], when a group no longer configured has state or
/// the debt ([`GcDebt`]) is due; else only the generations no rule keeps
/// any more are dropped, their added bytes counted as debt. `changed`:
/// the check changed a tree (else only generations are looked at, which
/// costs little). Returns what was done, if anything.
pub fn collect_if_due(
    store: &Store,
    w: &Writer,
    groups: &[GcGroup<'_>],
    chunk_stores: &[&ChunkStore],
    changed: bool,
) -> Result<Option<GcReport>, StoreError> {
    if store.groups_with_state()?.iter().any(|name| !groups.iter().any(|g| g.name == name)) {
        return collect_garbage(store, w, groups, chunk_stores, &[]).map(Some);
    }
    let all = store.generations()?;
    let keep_ids = kept_generations(store, &all, groups, &[])?;
    // Only generations of listed groups are ever kept.
    let dropped: Vec<&super::Generation> = all.iter().filter(|g| !keep_ids.contains(&g.id)).collect();
    if !changed && dropped.is_empty() {
        return Ok(None);
    }
    let mut debt = store.gc_debt()?;
    debt.bytes = dropped.iter().fold(debt.bytes, |sum, g| sum.saturating_add(g.added_bytes));
    if debt.due() {
        return collect_garbage(store, w, groups, chunk_stores, &[]).map(Some);
    }
    if dropped.is_empty() {
        return Ok(None);
    }
    let mut batch = store.batch(w);
    let mut report = GcReport::default();
    for g in dropped {
        batch.remove_generation(g.id);
        report.generations_dropped.push(g.id);
    }
    batch.put_gc_debt(debt);
    batch.commit()?;
    Ok(Some(report))
}

/// Marks every node below `tree` and, with `chunks`, every chunk its files
/// use. Iterative: a deep tree must not overflow the stack. A node already
/// marked was walked with everything below it, so it is skipped.
fn mark_tree(
    store: &Store,
    tree: Hash,
    nodes: &mut HashSet<Hash>,
    mut chunks: Option<&mut HashSet<Hash>>,
) -> Result<(), StoreError> {
    let mut stack = vec![tree];
    while let Some(tree) = stack.pop() {
        if !nodes.insert(tree) {
            continue;
        }
        let Some(node) = store.node(&tree)? else {
            return Err(StoreError::Corrupt {
                path: store.dir().to_path_buf(),
                what: format!("tree node {tree}"),
                why: "referenced but missing".into(),
            });
        };
        if let Some(c) = chunks.as_deref_mut() {
            for list in store.manifest(&tree, &node)? {
                c.extend(list.iter().map(|x| x.hash));
            }
        }
        stack.extend(node.entries.iter().filter_map(|e| match e.body {
            Body::Dir { tree } => Some(tree),
            _ => None,
        }));
    }
    Ok(())
}
