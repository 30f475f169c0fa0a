//! Garbage collection: drop generations beyond a group's limit and free
//! every node, content and chunk that nothing kept refers to.
//!
//! Mark and sweep rather than reference counts: the marks are recomputed
//! from the roots each time, so a crash half-way through a collection, or a
//! bug in a counter, can never free something still in use. The live set
//! is each group's current tree plus its kept generations. State records
//! are removed (and synced) before the chunks they referenced, so a crash
//! leaves at worst unreferenced chunks for the next collection.

use std::collections::{HashMap, HashSet};

use super::{ChunkStore, Store, StoreError, keyspace_keys};
use crate::hash::Hash;
use crate::tree::{Body, RootSet};

/// What one collection freed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Generation ids dropped because their group keeps fewer.
    pub generations_dropped: Vec<u64>,
    /// Directory nodes freed.
    pub nodes_freed: u64,
    /// Chunk lists freed.
    pub contents_freed: u64,
    /// Chunks freed from chunk stores.
    pub chunks_freed: u64,
    /// Stored bytes those chunks took.
    pub bytes_freed: u64,
}

/// A group as the collector sees it: how many generations it keeps and
/// which chunk store (index into the `chunk_stores` slice) holds its
/// content, if any.
pub struct GcGroup<'a> {
    /// The group's name.
    pub name: &'a str,
    /// `backup-generations`: how many of its generations to keep.
    pub keep: u32,
    /// Index of its chunk store in the slice passed to [`collect_garbage`].
    pub chunk_store: Option<usize>,
}

/// Drops excess generations, then frees whatever nothing kept refers to.
///
/// `groups` must list every group whose data lives in `store`; data of a
/// group not listed counts as garbage.
pub fn collect_garbage(
    store: &Store,
    groups: &[GcGroup<'_>],
    chunk_stores: &[&ChunkStore],
) -> Result<GcReport, StoreError> {
    let mut report = GcReport::default();
    let mut batch = store.batch();

    // Which generations stay.
    let mut kept_by_group: HashMap<&str, Vec<RootSet>> = HashMap::new();
    let all = store.generations()?;
    for g in groups {
        let mut mine: Vec<_> = all.iter().filter(|x| x.group == g.name).collect();
        mine.sort_by_key(|x| std::cmp::Reverse(x.id));
        for (i, generation) in mine.iter().enumerate() {
            if i < g.keep as usize {
                kept_by_group.entry(g.name).or_default().push(generation.roots.clone());
            } else {
                batch.remove_generation(generation.id);
                report.generations_dropped.push(generation.id);
            }
        }
    }
    let known: HashSet<&str> = groups.iter().map(|g| g.name).collect();
    for generation in all.iter().filter(|x| !known.contains(x.group.as_str())) {
        batch.remove_generation(generation.id);
        report.generations_dropped.push(generation.id);
    }
    report.generations_dropped.sort_unstable();

    // Mark.
    let mut live_nodes = HashSet::new();
    let mut live_contents = HashSet::new();
    let mut live_chunks: Vec<HashSet<Hash>> = vec![HashSet::new(); chunk_stores.len()];
    for g in groups {
        let mut group_contents = HashSet::new();
        let mut sets = kept_by_group.remove(g.name).unwrap_or_default();
        if let Some(current) = store.root_set(g.name)? {
            sets.push(current);
        }
        for set in &sets {
            for (_, root) in &set.roots {
                if let Some(root) = root {
                    mark_body(store, &root.body, &mut live_nodes, &mut group_contents)?;
                }
            }
        }
        if let Some(i) = g.chunk_store {
            for content in &group_contents {
                if let Some(chunks) = store.content(content)? {
                    live_chunks[i].extend(chunks.iter().map(|c| c.hash));
                }
            }
        }
        live_contents.extend(group_contents);
    }

    // Sweep the state first, then the chunks it referenced.
    for key in keyspace_keys(store.nodes_keyspace()) {
        let key = key.map_err(|e| store.err(e))?;
        if Hash::from_slice(&key).is_none_or(|h| !live_nodes.contains(&h)) {
            batch.remove_node(&key);
            report.nodes_freed += 1;
        }
    }
    for key in keyspace_keys(store.contents_keyspace()) {
        let key = key.map_err(|e| store.err(e))?;
        if Hash::from_slice(&key).is_none_or(|h| !live_contents.contains(&h)) {
            batch.remove_content(&key);
            report.contents_freed += 1;
        }
    }
    batch.commit()?;

    for (cs, live) in chunk_stores.iter().zip(&live_chunks) {
        let dead: Vec<(Hash, u64)> = cs.list()?.into_iter().filter(|(h, _)| !live.contains(h)).collect();
        report.chunks_freed += dead.len() as u64;
        report.bytes_freed += dead.iter().map(|(_, s)| s).sum::<u64>();
        cs.remove(&dead.iter().map(|(h, _)| *h).collect::<Vec<_>>())?;
    }
    Ok(report)
}

/// Marks everything reachable from one entry body. Iterative: a deep tree
/// must not overflow the stack.
fn mark_body(
    store: &Store,
    body: &Body,
    nodes: &mut HashSet<Hash>,
    contents: &mut HashSet<Hash>,
) -> Result<(), StoreError> {
    let mut stack = Vec::new();
    match body {
        Body::File { content, .. } => {
            contents.insert(*content);
        }
        Body::Dir { tree } => stack.push(*tree),
        Body::Symlink { .. } => {}
    }
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
        for e in node.entries {
            match e.body {
                Body::File { content, .. } => {
                    contents.insert(content);
                }
                Body::Dir { tree } => stack.push(tree),
                Body::Symlink { .. } => {}
            }
        }
    }
    Ok(())
}
