//! Generators of valid messages for the protocol's tests.

use proptest::prelude::*;

use super::message::{Change, ChangeAction, ErrorCode, FileChunks, Message, Refusal, WireEntry};
use crate::chunk::{self, ChunkRef};
use crate::hash::Hash;
use crate::tree::{Body, Kind, Meta, RootEntry, RootSet, Timestamp, validate_name};
use crate::tree::{Version, join_logical};

pub fn arb_hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

/// Host and group names.
pub fn arb_word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9.-]{0,15}"
}

/// Entry names: any bytes a filesystem allows.
pub fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 1..16).prop_filter("valid name", |n| validate_name(n).is_ok())
}

/// Logical paths of include roots, in all the shapes a config writes.
pub fn arb_root() -> impl Strategy<Value = String> {
    prop_oneof![Just("/".to_owned()), "(/[a-z0-9]{1,8}){1,4}", "%[a-z]{1,6}%(/[a-z0-9]{1,8}){0,2}",]
}

/// Logical paths of directories or files: a root and names below it.
pub fn arb_path() -> impl Strategy<Value = Vec<u8>> {
    (arb_root(), proptest::collection::vec(arb_name(), 0..4))
        .prop_map(|(root, names)| names.iter().fold(root.into_bytes(), |path, n| join_logical(&path, n)))
}

pub fn arb_version() -> impl Strategy<Value = Version> {
    proptest::collection::btree_map(arb_word(), 1u64..u64::MAX, 0..5).prop_map(|m| Version(m.into_iter().collect()))
}

fn arb_meta(kind: Kind) -> impl Strategy<Value = Meta> {
    (
        proptest::option::of(0u32..=0o7777),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of((any::<i64>(), 0u32..1_000_000_000)),
    )
        .prop_map(move |(mode, uid, gid, t)| Meta {
            mode: mode.filter(|_| kind != Kind::Symlink),
            uid,
            gid,
            mtime: t.filter(|_| kind == Kind::File).map(|(secs, nanos)| Timestamp { secs, nanos }),
        })
}

fn arb_chunks() -> impl Strategy<Value = Vec<ChunkRef>> {
    proptest::collection::vec((arb_hash(), 1u32..=chunk::MAX_SIZE), 0..6)
        .prop_map(|v| v.into_iter().map(|(hash, len)| ChunkRef { hash, len }).collect())
}

/// An entry named `name`: a file (with its chunk list inline or left
/// out), a directory or a symlink; live or a tombstone.
pub fn arb_entry_named(name: Vec<u8>) -> impl Strategy<Value = WireEntry> {
    let file = (arb_chunks(), any::<bool>()).prop_map(|(chunks, inline)| {
        let body = Body::File { size: chunk::total_len(&chunks), content: chunk::content_hash(&chunks) };
        (body, if inline { chunks } else { Vec::new() })
    });
    let dir = arb_hash().prop_map(|tree| (Body::Dir { tree }, Vec::new()));
    let link = proptest::collection::vec(1u8..=255, 1..64).prop_map(|target| (Body::Symlink { target }, Vec::new()));
    prop_oneof![file, dir, link]
        .prop_flat_map(|(body, chunks)| (arb_meta(body.kind()), Just(body), Just(chunks)))
        .prop_flat_map(move |(meta, body, chunks)| {
            (Just(name.clone()), Just(meta), Just(body), arb_version(), any::<bool>(), Just(chunks))
        })
        .prop_map(|(name, meta, body, version, deleted, chunks)| WireEntry {
            name,
            meta,
            body,
            version,
            deleted,
            chunks: if deleted { Vec::new() } else { chunks },
        })
}

pub fn arb_entry() -> impl Strategy<Value = WireEntry> {
    arb_name().prop_flat_map(arb_entry_named)
}

/// A directory path with children named to match it: include roots by
/// logical path under the empty path, names elsewhere.
fn arb_listing() -> impl Strategy<Value = (Vec<u8>, Vec<WireEntry>)> {
    let roots = proptest::collection::vec(arb_root().prop_flat_map(|r| arb_entry_named(r.into_bytes())), 0..4)
        .prop_map(|entries| (Vec::new(), entries));
    let children = (arb_path(), proptest::collection::vec(arb_entry(), 0..8));
    prop_oneof![1 => roots, 3 => children].prop_map(|(path, mut entries)| {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        (path, entries)
    })
}

fn arb_roots() -> impl Strategy<Value = Message> {
    let root = arb_root().prop_flat_map(|r| (Just(r.clone()), proptest::option::of(arb_entry_named(r.into_bytes()))));
    (arb_word(), proptest::collection::vec(root, 0..5)).prop_map(|(group, mut roots)| {
        roots.sort_by(|a, b| a.0.cmp(&b.0));
        roots.dedup_by(|a, b| a.0 == b.0);
        let set = RootSet {
            roots: roots
                .iter()
                .map(|(l, e)| {
                    let live = e.as_ref().filter(|e| !e.deleted);
                    (l.clone(), live.map(|e| RootEntry { meta: e.meta.clone(), body: e.body.clone() }))
                })
                .collect(),
        };
        Message::Roots { group, hash: set.hash(), versions: Hash::of(b"versions"), roots }
    })
}

fn arb_get_chunks() -> impl Strategy<Value = Message> {
    let hashes = proptest::collection::btree_set(arb_hash(), 1..20);
    let paths = proptest::collection::vec(arb_path(), 1..5);
    (arb_word(), hashes, paths, arb_hash()).prop_map(|(group, hashes, paths, content)| {
        let hashes: Vec<Hash> = hashes.into_iter().collect();
        let per = hashes.len().div_ceil(paths.len());
        let files =
            hashes.chunks(per).zip(paths).map(|(h, path)| FileChunks { path, content, hashes: h.to_vec() }).collect();
        Message::GetChunks { group, files }
    })
}

fn arb_chunk_list() -> impl Strategy<Value = Message> {
    (arb_word(), arb_path(), arb_hash(), 0u64..1000, arb_chunks(), 0u64..1000).prop_map(
        |(group, path, content, start, chunks, extra)| {
            let end = start + chunks.len() as u64;
            let total = if chunks.is_empty() { end } else { end + extra };
            Message::ChunkList { group, path, content, start, total, chunks }
        },
    )
}

fn arb_change() -> impl Strategy<Value = Change> {
    let action = prop_oneof![
        Just(ChangeAction::Create),
        Just(ChangeAction::Update),
        Just(ChangeAction::Delete),
        Just(ChangeAction::Conflict),
        Just(ChangeAction::Merge),
    ];
    (action, arb_path()).prop_map(|(action, path)| Change { action, path })
}

fn arb_text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

/// Every variant, valid.
pub fn arb_message() -> impl Strategy<Value = Message> {
    let groups = || proptest::collection::btree_set(arb_word(), 0..4).prop_map(|s| s.into_iter().collect::<Vec<_>>());
    let code = prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::NotAllowed),
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::Internal),
        Just(ErrorCode::Busy),
    ];
    let reason = prop_oneof![Just(Refusal::ReceiveOnly), Just(Refusal::NotShared), Just(Refusal::Busy)];
    let stored = (0u8..=1, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(tag, payload)| {
        let mut s = vec![tag];
        s.extend(payload);
        s
    });
    prop_oneof![
        (any::<u16>(), arb_word(), groups())
            .prop_map(|(protocol, host, groups)| Message::Hello { protocol, host, groups })
            .boxed(),
        (any::<u16>(), arb_word(), groups())
            .prop_map(|(protocol, host, groups)| Message::Welcome { protocol, host, groups })
            .boxed(),
        arb_word().prop_map(|group| Message::GetRoots { group }).boxed(),
        arb_roots().boxed(),
        (arb_word(), arb_listing(), any::<bool>())
            .prop_flat_map(|(group, (path, entries), first)| {
                let after = match entries.first() {
                    Some(e) if !first => e.name.clone(),
                    _ => Vec::new(),
                };
                Just(Message::GetDir { group, path, after })
            })
            .boxed(),
        (arb_word(), arb_listing(), any::<bool>())
            .prop_map(|(group, (path, entries), last_page)| Message::Dir { group, path, last_page, entries })
            .boxed(),
        (arb_word(), arb_path(), arb_hash(), 0..crate::proto::MAX_CHUNKS_PER_ENTRY)
            .prop_map(|(group, path, content, start)| Message::GetChunkList { group, path, content, start })
            .boxed(),
        arb_chunk_list().boxed(),
        arb_get_chunks().boxed(),
        (arb_hash(), stored).prop_map(|(hash, stored)| Message::Chunk { hash, stored }).boxed(),
        proptest::collection::btree_set(arb_hash(), 0..10)
            .prop_map(|m| Message::ChunksDone { missing: m.into_iter().collect() })
            .boxed(),
        (arb_word(), any::<bool>()).prop_map(|(group, dry_run)| Message::Pull { group, dry_run }).boxed(),
        (
            proptest::collection::vec(arb_change(), 0..8),
            any::<u64>(),
            proptest::collection::vec(arb_text(), 0..4),
            any::<u64>()
        )
            .prop_map(|(changes, more, problems, extra)| {
                let problems_total = (problems.len() as u64).saturating_add(extra % 1000);
                Message::Pulled { changes, more, problems, problems_total }
            })
            .boxed(),
        (reason, arb_text()).prop_map(|(reason, message)| Message::Refused { reason, message }).boxed(),
        (code, arb_text()).prop_map(|(code, message)| Message::Error { code, message }).boxed(),
        Just(Message::Bye).boxed(),
        Just(Message::Progress).boxed(),
        Just(Message::Done).boxed(),
    ]
}

pub fn sample_hello() -> Message {
    Message::Hello { protocol: 2, host: "app0.example.com".into(), groups: vec!["app".into(), "etc".into()] }
}

/// A `Chunk` of `len` raw bytes.
pub fn sample_chunk(len: usize) -> Message {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    Message::Chunk { hash: Hash::of(&data), stored: chunk::encode(&data) }
}

/// A valid file entry named `name` with `n` chunks of `len` bytes.
pub fn file_entry(name: &[u8], n: usize, len: u32) -> WireEntry {
    let chunks: Vec<ChunkRef> = (0..n).map(|i| ChunkRef { hash: Hash::of(&i.to_le_bytes()), len }).collect();
    WireEntry {
        name: name.to_vec(),
        meta: Meta { mode: Some(0o644), uid: Some(0), gid: Some(0), mtime: Some(Timestamp { secs: 1, nanos: 2 }) },
        body: Body::File { size: chunk::total_len(&chunks), content: chunk::content_hash(&chunks) },
        version: Version::default().bumped("app0", 3),
        deleted: false,
        chunks,
    }
}
