//! The seed corpus: valid inputs for every target, made by snapsync's own
//! encoders, from which fuzzing starts (`tests/fuzz/run --seed` writes
//! them with [`write_seed_corpus`] and merges them into `fixtures/fuzz`).

use std::collections::BTreeSet;
use std::path::Path;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};

use super::{TARGETS, check_for};
use crate::chunk::{self, ChunkRef};
use crate::hash::Hash;
use crate::proto::testutil::{arb_entry, arb_message};
use crate::proto::{self, Message};
use crate::store::{DirRecord, EntryRecord, Stat};
use crate::tree::{Body, Meta, Node, NodeEntry, Timestamp, Version};

/// One seed: its target, a file name, the bytes.
type Seed = (&'static str, String, Vec<u8>);

/// A runner whose values are the same on every run.
fn runner() -> TestRunner {
    TestRunner::new_with_rng(Default::default(), TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

fn sample<S: Strategy>(runner: &mut TestRunner, s: &S) -> S::Value {
    s.new_tree(runner).expect("generator never rejects").current()
}

/// Two frames of every message kind.
fn frames(runner: &mut TestRunner) -> Vec<Seed> {
    let mut per_kind: std::collections::BTreeMap<&str, Vec<Message>> = Default::default();
    let arb = arb_message();
    for _ in 0..2000 {
        let msg = sample(runner, &arb);
        let same = per_kind.entry(msg.kind()).or_default();
        if same.len() < 2 && proto::encode_frame(&msg).len() < 2048 {
            same.push(msg);
        }
    }
    assert_eq!(per_kind.len(), 18, "every kind of message: {:?}", per_kind.keys());
    let mut out = Vec::new();
    for (kind, msgs) in per_kind {
        for (i, msg) in msgs.iter().enumerate() {
            out.push(("frame", format!("seed-{kind}-{i}"), proto::encode_frame(msg)));
        }
    }
    out
}

/// Tree nodes of 0 to 6 entries of every kind.
fn tree_nodes(runner: &mut TestRunner) -> Vec<Seed> {
    let arb = proptest::collection::vec(arb_entry(), 0..7);
    (0..6)
        .map(|i| {
            let entries = sample(runner, &arb)
                .into_iter()
                .map(|e| NodeEntry { name: e.name, meta: e.meta, body: e.body })
                .collect::<Vec<_>>();
            let mut names = BTreeSet::new();
            let entries = entries.into_iter().filter(|e| names.insert(e.name.clone())).collect();
            let node = Node::from_unsorted(entries).expect("generated entries are valid");
            ("tree_node", format!("seed-{i}"), node.encode())
        })
        .collect()
}

/// Directory records: live entries with their chunk lists, tombstones.
fn dir_records(runner: &mut TestRunner) -> Vec<Seed> {
    let arb = proptest::collection::vec(arb_entry(), 0..5);
    let stat = Stat {
        size: 4096,
        mtime: Timestamp { secs: 1_700_000_000, nanos: 5 },
        ctime: Timestamp { secs: 1_700_000_001, nanos: 0 },
        ino: 42,
        dev: 2049,
        mode: 0o100644,
        uid: 1000,
        gid: 1000,
    };
    (0..5)
        .map(|i| {
            let mut children: Vec<(Vec<u8>, EntryRecord)> = sample(runner, &arb)
                .into_iter()
                .map(|e| {
                    let record = EntryRecord {
                        meta: e.meta,
                        body: e.body,
                        chunks: e.chunks,
                        stat: stat.clone(),
                        racy: i % 2 == 0,
                        stored: true,
                        version: e.version,
                        deleted: e.deleted,
                        count: 1,
                        bytes: 4096,
                    };
                    (e.name, record)
                })
                .collect();
            if i == 0 {
                // One file whose chunk list is kept, whatever was drawn.
                let chunks = vec![ChunkRef { hash: Hash::of(b"seed chunk"), len: 65_536 }];
                let body = Body::File { size: 65_536, content: chunk::content_hash(&chunks) };
                let version = Version(vec![("app1".to_owned(), 7)]);
                let (count, bytes) = (1, 65_536);
                children.push((
                    b"~kept".to_vec(),
                    EntryRecord {
                        meta: Meta::default(),
                        body,
                        chunks,
                        stat: Stat { size: 65_536, ..stat.clone() },
                        racy: false,
                        stored: true,
                        version,
                        deleted: false,
                        count,
                        bytes,
                    },
                ));
            }
            children.sort_by(|a, b| a.0.cmp(&b.0));
            children.dedup_by(|a, b| a.0 == b.0);
            ("dir_record", format!("seed-{i}"), DirRecord { children }.encode())
        })
        .collect()
}

/// Stored chunks: empty, raw, compressed, and several zstd frames.
fn chunks() -> Vec<Seed> {
    let text: Vec<u8> = b"body { margin: 0; padding: 0; }\n".iter().copied().cycle().take(20_000).collect();
    let noise: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut out = vec![
        ("chunk", "seed-empty".to_string(), chunk::encode(b"")),
        ("chunk", "seed-raw".to_string(), chunk::encode(b"short")),
        ("chunk", "seed-noise".to_string(), chunk::encode(&noise)),
        ("chunk", "seed-text".to_string(), chunk::encode(&text)),
    ];
    // Two frames, one after the other: decode accepts them too.
    let mut two = chunk::encode(&text[..1000]);
    two.extend_from_slice(&chunk::encode(&text[..1000])[1..]);
    out.push(("chunk", "seed-two-frames".to_string(), two));
    // A frame that does not record its size.
    let mut no_size = vec![chunk::TAG_ZSTD];
    let mut encoder = zstd::stream::Encoder::new(&mut no_size, 1).expect("zstd encoder");
    std::io::Write::write_all(&mut encoder, &text[..3000]).expect("write to a Vec");
    encoder.finish().expect("finish to a Vec");
    out.push(("chunk", "seed-unsized-frame".to_string(), no_size));
    out
}

/// The config files of `fixtures/`.
fn configs() -> Vec<Seed> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let files = [
        "config/csync2-sample.cfg",
        "config/spec-example.cfg",
        "config/include/main.cfg",
        "config/include/parts/excludes.cfg",
        "config/include/parts/prefixes.cfg",
        "config/cycle/a.cfg",
        "demo/snapsync.cfg",
    ];
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(fixtures.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            ("config", format!("seed-{}", f.replace('/', "-")), bytes)
        })
        .collect()
}

/// Pattern lists and paths in the pattern target's format.
fn patterns() -> Vec<Seed> {
    let cases = [
        "+/a/b\n/a/b/c",
        "+/a/*\n-/a/x\n/a/x/y",
        "+/a/**c\n/a/x/yc/z",
        "+/a/**/b\n-*.tmp\n/a/q/b/c.tmp",
        "+/[]]\n/]",
        "+/[!]]\n/a",
        "+/[a-]\n/-",
        "+/[[:alpha:]]\n-[[:digit:]]*\n/q",
        "+/[[:alpha:]\n/[",
        "+/\\*\n/*",
        "+/{a}\n/{a}",
        "+/[Z-a]\n/^",
        "+/[!Z-a]\n/Y",
        "+/[\\]]\n/]",
        "+/srv/www\n-/srv/www/tmp\n+*.html\n/srv/www/tmp/x.html",
        "+%docroot%/x\n%docroot%/x/y",
        "=/etc/*.conf\n/etc/a.conf",
        "~/etc\n=/var/lib\n-/etc/shadow\n/var/lib/x",
        "+/a/*/c\n/a/b",
        "+/\n-.*\n/home/u/.cache",
    ];
    cases.iter().enumerate().map(|(i, c)| ("pattern", format!("seed-{i}"), c.as_bytes().to_vec())).collect()
}

/// Every seed of every target.
pub(crate) fn seeds() -> Vec<Seed> {
    let mut runner = runner();
    let mut out = frames(&mut runner);
    out.extend(tree_nodes(&mut runner));
    out.extend(dir_records(&mut runner));
    out.extend(chunks());
    out.extend(configs());
    out.extend(patterns());
    out
}

#[test]
fn every_target_has_seeds_that_its_decoder_accepts_and_its_check_passes() {
    let seeds = seeds();
    for (target, _) in TARGETS {
        assert!(seeds.iter().any(|s| s.0 == target), "no seed for {target}");
    }
    for (target, name, bytes) in &seeds {
        match *target {
            "frame" => assert!(proto::decode_frame(bytes).is_ok(), "{name}"),
            "tree_node" => assert!(Node::decode(bytes).is_ok(), "{name}"),
            "dir_record" => assert!(DirRecord::decode(bytes).is_ok(), "{name}"),
            "chunk" => {
                let data = match chunk::decode(&Hash([0; 32]), bytes) {
                    Err(chunk::ChunkError::HashMismatch { actual, .. }) => chunk::decode(&actual, bytes),
                    other => other,
                };
                assert!(data.is_ok(), "{name}: {data:?}");
            }
            _ => {}
        }
        check_for(target).expect("a known target")(bytes);
    }
    // A chunk list entry keeps its length: the dir records carry them.
    assert!(seeds.iter().filter(|s| s.0 == "dir_record").any(|(_, _, b)| {
        DirRecord::decode(b).unwrap().children.iter().any(|(_, r)| r.chunks.iter().any(|c: &ChunkRef| c.len > 0))
    }));
}

/// Writes every seed to `$SNAPSYNC_FUZZ_SEED_DIR/<target>/<name>`.
#[test]
#[ignore = "writes files: run by `tests/fuzz/run --seed`"]
fn write_seed_corpus() {
    let dir = std::env::var_os("SNAPSYNC_FUZZ_SEED_DIR").expect("SNAPSYNC_FUZZ_SEED_DIR names where to write");
    for (target, name, bytes) in seeds() {
        let dir = Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
