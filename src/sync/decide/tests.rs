//! Tests of the per-entry decision: one test per scenario of SPEC §4 that
//! the decision carries (named `scenario_NN_...`), then property tests of
//! its laws: mirror symmetry, version ordering, convergence, and agreement
//! with the true causal history of a path under random edits and syncs.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::hash::Hash;
use crate::store::Stat;
use crate::tree::{Meta, Node, Timestamp};

use ConflictKind::*;
use Decision::{Conflict, InSync, KeepLocal, TakeRemote};

/// A version vector from `(host, counter)` pairs in any order.
fn v(pairs: &[(&str, u64)]) -> Version {
    pairs.iter().fold(Version::default(), |v, (h, c)| v.bumped(h, *c))
}

fn record(meta: Meta, body: Body, version: Version) -> EntryRecord {
    EntryRecord {
        meta,
        body,
        chunks: Vec::new(),
        stat: Stat::default(),
        racy: false,
        stored: false,
        version,
        deleted: false,
        count: 1,
        bytes: 0,
    }
}

/// A regular file holding `text`, modified at second `mtime`.
fn file(text: &str, mtime: i64, version: Version) -> EntryRecord {
    let meta =
        Meta { mode: Some(0o644), uid: Some(1000), gid: Some(1000), mtime: Some(Timestamp { secs: mtime, nanos: 0 }) };
    record(meta, Body::File { size: text.len() as u64, content: Hash::of(text.as_bytes()) }, version)
}

/// An empty directory with permission bits `mode`.
fn dir(mode: u32, version: Version) -> EntryRecord {
    let meta = Meta { mode: Some(mode), uid: Some(1000), gid: Some(1000), mtime: None };
    record(meta, Body::Dir { tree: Node::default().hash() }, version)
}

/// The same directory with other children.
fn with_children(d: &EntryRecord, children: &str) -> EntryRecord {
    EntryRecord { body: Body::Dir { tree: Hash::of(children.as_bytes()) }, ..d.clone() }
}

/// A symbolic link to `target`.
fn link(target: &str, version: Version) -> EntryRecord {
    let meta = Meta { mode: None, uid: Some(1000), gid: Some(1000), mtime: None };
    record(meta, Body::Symlink { target: target.as_bytes().to_vec() }, version)
}

/// `r` deleted, as a scan records it: the last state kept, a new version.
fn deleted(r: &EntryRecord, version: Version) -> EntryRecord {
    EntryRecord { deleted: true, version, ..r.clone() }
}

/// `r` under another version.
fn at(r: &EntryRecord, version: Version) -> EntryRecord {
    EntryRecord { version, ..r.clone() }
}

/// The local host's decision, checked against the remote host's: the two
/// must be mirror images whoever initiates.
fn both(local: Option<&EntryRecord>, remote: Option<&EntryRecord>) -> Decision {
    let here = decide(Side::new(local), Side::new(remote));
    let there = decide(Side::new(remote), Side::new(local));
    assert_eq!(there, here.mirror(), "the two hosts disagree on {local:?} / {remote:?}");
    here
}

/// The pair's records after carrying out a decision (a conflict changes
/// nothing).
fn apply(
    local: Option<&EntryRecord>,
    remote: Option<&EntryRecord>,
    decision: Decision,
) -> (Option<EntryRecord>, Option<EntryRecord>) {
    match decision {
        TakeRemote => (remote.cloned(), remote.cloned()),
        KeepLocal => (local.cloned(), local.cloned()),
        InSync => {
            let m = merged_version(version_of(local), version_of(remote));
            let adopt = |own: Option<&EntryRecord>, other: Option<&EntryRecord>| {
                own.or(other).map(|r| EntryRecord { version: m.clone(), ..r.clone() })
            };
            (adopt(local, remote), adopt(remote, local))
        }
        Conflict(_) => (local.cloned(), remote.cloned()),
    }
}

/// The winner of a settled conflict, stored on both sides.
fn settle(
    local: Option<&EntryRecord>,
    remote: Option<&EntryRecord>,
    resolution: Resolution,
    host: &str,
    seq: u64,
) -> Option<EntryRecord> {
    let version = settled_version(version_of(local), version_of(remote), host, seq);
    let winner = match resolution {
        Resolution::KeepLocal => local,
        Resolution::TakeRemote => remote,
    };
    // A winning "never seen" is stored as a tombstone of the loser's entry,
    // so the settlement can travel.
    Some(match winner {
        Some(w) => at(w, version),
        None => deleted(local.or(remote).expect("a conflict has a live side"), version),
    })
}

// ---------------------------------------------------------------------------
// SPEC §4, scenario by scenario.

#[test]
fn scenario_01_a_new_entry_appears_on_every_host() {
    let a1 = v(&[("a", 1)]);
    let empty_dir = dir(0o755, a1.clone());
    let new = [file("x", 10, a1.clone()), with_children(&empty_dir, "c"), empty_dir, link("target", a1)];
    for entry in &new {
        assert_eq!(both(None, Some(entry)), TakeRemote, "{entry:?}");
    }
}

#[test]
fn scenario_02_a_change_replaces_the_old_version_everywhere() {
    let old = file("old", 10, v(&[("a", 1)]));
    // Content, metadata only, and a change made by another host than the creator.
    let new = file("new", 11, v(&[("a", 2)]));
    let chmod =
        EntryRecord { meta: Meta { mode: Some(0o600), ..old.meta.clone() }, ..at(&old, v(&[("a", 1), ("b", 1)])) };
    assert_eq!(both(Some(&old), Some(&new)), TakeRemote);
    assert_eq!(both(Some(&old), Some(&chmod)), TakeRemote);
    // A directory's own metadata, and a link's target.
    let d = dir(0o755, v(&[("a", 1)]));
    assert_eq!(both(Some(&d), Some(&dir(0o750, v(&[("a", 2)])))), TakeRemote);
    let l = link("one", v(&[("a", 1)]));
    assert_eq!(both(Some(&link("two", v(&[("a", 1), ("c", 4)]))), Some(&l)), KeepLocal);
}

#[test]
fn scenario_03_a_deletion_deletes_the_entry_everywhere() {
    let f = file("x", 10, v(&[("a", 1)]));
    // Deleted by its creator, and by another host.
    assert_eq!(both(Some(&f), Some(&deleted(&f, v(&[("a", 2)])))), TakeRemote);
    assert_eq!(both(Some(&deleted(&f, v(&[("a", 1), ("b", 7)]))), Some(&f)), KeepLocal);
    let d = dir(0o755, v(&[("b", 3)]));
    assert_eq!(both(Some(&with_children(&d, "x")), Some(&deleted(&d, v(&[("b", 4)])))), TakeRemote);
}

#[test]
fn scenario_03_a_deletion_is_never_mistaken_for_a_creation() {
    let f = file("x", 10, v(&[("a", 1)]));
    let gone = deleted(&f, v(&[("a", 2)]));
    // The host that still has the file takes the deletion; it never pushes the file back.
    assert_eq!(both(Some(&gone), Some(&f)), KeepLocal);
    // A host that never saw the entry has nothing to create or delete.
    assert_eq!(both(None, Some(&gone)), InSync);
    let (here, there) = apply(None, Some(&gone), InSync);
    assert!(here.as_ref().is_some_and(|r| r.deleted && r.version == gone.version), "{here:?}");
    assert_eq!(there.as_ref(), Some(&gone));
}

#[test]
fn scenario_03_a_recreation_wins_over_the_older_deletion() {
    let f = file("x", 10, v(&[("a", 1)]));
    let gone = deleted(&f, v(&[("a", 2)]));
    let again = file("y", 30, v(&[("a", 2), ("b", 5)]));
    assert_eq!(both(Some(&gone), Some(&again)), TakeRemote);
    assert_eq!(both(Some(&f), Some(&again)), TakeRemote);
}

#[test]
fn scenario_04_the_same_change_on_two_hosts_is_not_a_conflict() {
    let base = v(&[("a", 1)]);
    let f = file("x", 10, base.clone());
    // Both hosts make the same edit, the same deletion, the same new file.
    let edit_a = file("y", 20, base.bumped("a", 2));
    let edit_b = file("y", 20, base.bumped("b", 1));
    assert_eq!(both(Some(&edit_a), Some(&edit_b)), InSync);
    assert_eq!(both(Some(&deleted(&f, base.bumped("a", 2))), Some(&deleted(&f, base.bumped("b", 1)))), InSync);
    assert_eq!(both(Some(&file("z", 5, v(&[("a", 9)]))), Some(&file("z", 5, v(&[("b", 3)])))), InSync);
    // Afterwards both hold a version that dominates both edits.
    let (here, there) = apply(Some(&edit_a), Some(&edit_b), InSync);
    let (here, there) = (here.unwrap(), there.unwrap());
    assert_eq!(here.version, there.version);
    assert!(here.version.dominates(&edit_a.version) && here.version.dominates(&edit_b.version));
    // A directory is compared by its own metadata: its children are decided one by one.
    let d = dir(0o755, base.bumped("a", 2));
    assert_eq!(both(Some(&with_children(&d, "p")), Some(&at(&d, base.bumped("b", 1)))), InSync);
}

#[test]
fn scenario_05_different_changes_are_a_conflict() {
    let base = v(&[("a", 1)]);
    let a = file("from a", 20, base.bumped("a", 2));
    let b = file("from b", 20, base.bumped("b", 1));
    assert_eq!(both(Some(&a), Some(&b)), Conflict(ModifyModify));
    // Metadata alone, and two independent creations.
    let chmod = EntryRecord { meta: Meta { mode: Some(0o600), ..a.meta.clone() }, ..at(&a, base.bumped("b", 1)) };
    assert_eq!(both(Some(&a), Some(&chmod)), Conflict(ModifyModify));
    assert_eq!(both(Some(&file("p", 1, v(&[("a", 1)]))), Some(&file("q", 1, v(&[("b", 1)])))), Conflict(ModifyModify));
}

#[test]
fn scenario_05_modify_versus_delete_is_a_conflict() {
    let base = v(&[("a", 1)]);
    let f = file("x", 10, base.clone());
    let changed = file("y", 20, base.bumped("a", 2));
    let gone = deleted(&f, base.bumped("b", 1));
    assert_eq!(both(Some(&changed), Some(&gone)), Conflict(ModifyDelete));
    assert_eq!(both(Some(&gone), Some(&changed)), Conflict(DeleteModify));
}

#[test]
fn scenario_05_file_versus_directory_is_a_conflict() {
    let base = v(&[("a", 1)]);
    let f = file("x", 10, base.bumped("a", 2));
    let d = dir(0o755, base.bumped("b", 1));
    assert_eq!(both(Some(&f), Some(&d)), Conflict(TypeChange));
    assert_eq!(both(Some(&link("x", base.bumped("c", 1))), Some(&f)), Conflict(TypeChange));
    // A type change that the versions order is an ordinary change.
    assert_eq!(both(Some(&file("x", 10, base.clone())), Some(&d)), TakeRemote);
}

#[test]
fn scenario_05_force_settles_a_conflict_for_the_forced_side() {
    let base = v(&[("a", 1)]);
    let a = file("from a", 20, base.bumped("a", 2));
    let b = file("from b", 20, base.bumped("b", 1));
    let (plain_a, plain_b) = (Side::new(Some(&a)), Side::new(Some(&b)));
    assert_eq!(decide(plain_a.with_force(true), plain_b), KeepLocal);
    assert_eq!(decide(plain_b, plain_a.with_force(true)), TakeRemote);
    assert_eq!(decide(plain_a.with_force(true), plain_b.with_force(true)), Conflict(ModifyModify));
    // Force settles conflicts only: it never brings back a state the other host has already replaced.
    let newer = file("newer", 30, a.version.bumped("b", 2));
    assert_eq!(decide(plain_a.with_force(true), Side::new(Some(&newer))), TakeRemote);
}

#[test]
fn scenario_05_a_settled_conflict_stays_settled_on_every_host() {
    // A and B change the file concurrently; C took B's version before the conflict was found.
    let base = v(&[("a", 1)]);
    let a = file("from a", 20, base.bumped("a", 2));
    let b = file("from b", 20, base.bumped("b", 1));
    let c = b.clone();
    assert_eq!(both(Some(&a), Some(&b)), Conflict(ModifyModify));
    assert_eq!(decide(Side::new(Some(&a)).with_force(true), Side::new(Some(&b))), KeepLocal);
    let won = settle(Some(&a), Some(&b), Resolution::KeepLocal, "a", 3).unwrap();
    // B stores the same record; C then meets either of them and takes A's state.
    assert_eq!(both(Some(&c), Some(&won)), TakeRemote);
    assert_eq!(both(Some(&a), Some(&won)), InSync);
}

#[test]
fn scenario_05_auto_none_leaves_every_conflict() {
    let (l, r) = (file("x", 1, v(&[("a", 1)])), file("yy", 2, v(&[("b", 1)])));
    for kind in [ModifyModify, ModifyDelete, DeleteModify, TypeChange] {
        for (left, first) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(resolve(kind, Some(&l), Some(&r), AutoPolicy::None, left, first), None);
        }
    }
}

#[test]
fn scenario_05_auto_first_lets_the_initiating_host_win() {
    let l = file("x", 1, v(&[("a", 1)]));
    let r = deleted(&l, v(&[("b", 1)]));
    for remote_is_left in [false, true] {
        assert_eq!(
            resolve(ModifyDelete, Some(&l), Some(&r), AutoPolicy::First, remote_is_left, true),
            Some(Resolution::KeepLocal)
        );
        assert_eq!(
            resolve(ModifyDelete, Some(&l), Some(&r), AutoPolicy::First, remote_is_left, false),
            Some(Resolution::TakeRemote)
        );
        // A deletion wins when its host initiates.
        assert_eq!(
            resolve(DeleteModify, Some(&r), Some(&l), AutoPolicy::First, remote_is_left, true),
            Some(Resolution::KeepLocal)
        );
    }
}

#[test]
fn scenario_05_auto_left_and_right_follow_the_host_list() {
    let (l, r) = (file("x", 1, v(&[("a", 1)])), dir(0o755, v(&[("b", 1)])));
    for initiated in [false, true] {
        let res = |policy, remote_is_left| resolve(TypeChange, Some(&l), Some(&r), policy, remote_is_left, initiated);
        assert_eq!(res(AutoPolicy::Left, true), Some(Resolution::TakeRemote));
        assert_eq!(res(AutoPolicy::Left, false), Some(Resolution::KeepLocal));
        assert_eq!(res(AutoPolicy::Right, true), Some(Resolution::KeepLocal));
        assert_eq!(res(AutoPolicy::Right, false), Some(Resolution::TakeRemote));
    }
    // Deletions win too when their host is on the winning side.
    let gone = deleted(&l, v(&[("a", 2)]));
    assert_eq!(
        resolve(DeleteModify, Some(&gone), Some(&l), AutoPolicy::Left, false, false),
        Some(Resolution::KeepLocal)
    );
}

#[test]
fn scenario_05_auto_younger_and_older_compare_modification_times() {
    let old = file("old", 100, v(&[("a", 2)]));
    let young = file("young", 200, v(&[("b", 1)]));
    let res = |policy, l: &EntryRecord, r: &EntryRecord| resolve(ModifyModify, Some(l), Some(r), policy, false, true);
    assert_eq!(res(AutoPolicy::Younger, &old, &young), Some(Resolution::TakeRemote));
    assert_eq!(res(AutoPolicy::Younger, &young, &old), Some(Resolution::KeepLocal));
    assert_eq!(res(AutoPolicy::Older, &old, &young), Some(Resolution::KeepLocal));
    assert_eq!(res(AutoPolicy::Older, &young, &old), Some(Resolution::TakeRemote));
    // Nanoseconds count.
    let later =
        EntryRecord { meta: Meta { mtime: Some(Timestamp { secs: 100, nanos: 1 }), ..old.meta.clone() }, ..young };
    assert_eq!(res(AutoPolicy::Younger, &old, &later), Some(Resolution::TakeRemote));
}

#[test]
fn scenario_05_auto_bigger_and_smaller_compare_sizes() {
    let small = file("s", 200, v(&[("a", 2)]));
    let big = file("bigger", 100, v(&[("b", 1)]));
    let res = |policy, l: &EntryRecord, r: &EntryRecord| resolve(ModifyModify, Some(l), Some(r), policy, true, false);
    assert_eq!(res(AutoPolicy::Bigger, &small, &big), Some(Resolution::TakeRemote));
    assert_eq!(res(AutoPolicy::Bigger, &big, &small), Some(Resolution::KeepLocal));
    assert_eq!(res(AutoPolicy::Smaller, &small, &big), Some(Resolution::KeepLocal));
    assert_eq!(res(AutoPolicy::Smaller, &big, &small), Some(Resolution::TakeRemote));
    // A link's size is its target's length.
    let to = link("a/long/target", v(&[("c", 1)]));
    assert_eq!(
        resolve(TypeChange, Some(&small), Some(&to), AutoPolicy::Bigger, true, false),
        Some(Resolution::TakeRemote)
    );
}

#[test]
fn scenario_05_auto_by_time_or_size_keeps_the_entry_over_a_deletion() {
    let f = file("x", 10, v(&[("a", 2)]));
    let gone = deleted(&file("a much bigger and younger file", 99, v(&[("a", 1)])), v(&[("a", 1), ("b", 1)]));
    for policy in [AutoPolicy::Younger, AutoPolicy::Older, AutoPolicy::Bigger, AutoPolicy::Smaller] {
        for (left, first) in [(false, false), (true, true)] {
            assert_eq!(resolve(ModifyDelete, Some(&f), Some(&gone), policy, left, first), Some(Resolution::KeepLocal));
            assert_eq!(resolve(DeleteModify, Some(&gone), Some(&f), policy, left, first), Some(Resolution::TakeRemote));
        }
    }
}

#[test]
fn scenario_05_auto_by_time_or_size_leaves_ties_and_unknowns() {
    let (x, z) = (file("x", 10, v(&[("a", 2)])), file("z", 10, v(&[("b", 1)])));
    let (d1, d2) = (dir(0o755, v(&[("a", 2)])), dir(0o700, v(&[("b", 1)])));
    let to = link("t", v(&[("b", 1)]));
    for policy in [AutoPolicy::Younger, AutoPolicy::Older, AutoPolicy::Bigger, AutoPolicy::Smaller] {
        // Same mtime, same size.
        assert_eq!(resolve(ModifyModify, Some(&x), Some(&z), policy, false, true), None, "{policy}");
        // Directories keep neither mtime nor size.
        assert_eq!(resolve(ModifyModify, Some(&d1), Some(&d2), policy, false, true), None, "{policy}");
        assert_eq!(resolve(TypeChange, Some(&x), Some(&d2), policy, false, true), None, "{policy}");
    }
    // Links keep no mtime.
    assert_eq!(resolve(TypeChange, Some(&x), Some(&to), AutoPolicy::Younger, false, true), None);
}

#[test]
fn scenario_06_a_change_travels_transitively_without_conflict() {
    let base = file("x", 10, v(&[("c", 1)]));
    let (mut a, mut b, c) = (base.clone(), base.clone(), base.clone());
    // A changes the file and syncs with B while C is down.
    a = file("y", 20, a.version.bumped("a", 5));
    assert_eq!(both(Some(&b), Some(&a)), TakeRemote);
    b = a.clone();
    // Later B syncs with C: C takes A's change, and C then agrees with A.
    assert_eq!(both(Some(&c), Some(&b)), TakeRemote);
    assert_eq!(both(Some(&b), Some(&a)), InSync);
    assert_eq!(both(Some(&b), Some(&a)), both(Some(&a), Some(&b)));
}

#[test]
fn scenario_07_a_host_back_after_days_gets_everything_it_missed() {
    // What C had when it went down, and what the others hold now.
    let changed_then = file("x", 10, v(&[("a", 1)]));
    let changed_now = file("x3", 40, v(&[("a", 3), ("b", 2)]));
    let deleted_then = file("d", 10, v(&[("b", 1)]));
    let deleted_now = deleted(&deleted_then, v(&[("a", 4), ("b", 1)]));
    let born_and_gone = deleted(&file("t", 12, v(&[("b", 3)])), v(&[("b", 4)]));
    let born = dir(0o755, v(&[("a", 6)]));
    assert_eq!(both(Some(&changed_then), Some(&changed_now)), TakeRemote);
    assert_eq!(both(Some(&deleted_then), Some(&deleted_now)), TakeRemote);
    assert_eq!(both(None, Some(&born_and_gone)), InSync);
    assert_eq!(both(None, Some(&born)), TakeRemote);
}

#[test]
fn scenario_08_a_receive_only_host_takes_the_group_version() {
    let group = file("x", 10, v(&[("a", 1)]));
    let r = |local: Option<&EntryRecord>, remote: Option<&EntryRecord>| {
        decide_receive_only(Side::new(local), Side::new(remote), "r")
    };
    // Its own edit, deletion and creation are overwritten by the group's state.
    assert_eq!(r(Some(&file("local edit", 11, v(&[("a", 1), ("r", 5)]))), Some(&group)), TakeRemote);
    assert_eq!(r(Some(&deleted(&group, v(&[("a", 1), ("r", 6)]))), Some(&group)), TakeRemote);
    assert_eq!(r(Some(&file("mine", 1, v(&[("r", 7)]))), None), TakeRemote);
    // Group changes are taken, and one concurrent with a local edit is no conflict.
    assert_eq!(r(Some(&group), Some(&file("x2", 20, v(&[("a", 2)])))), TakeRemote);
    assert_eq!(
        r(Some(&file("mine", 11, v(&[("a", 1), ("r", 5)]))), Some(&file("x2", 20, v(&[("a", 1), ("b", 1)])))),
        TakeRemote
    );
    // Force does not make it send.
    let edit = file("local edit", 11, v(&[("a", 1), ("r", 5)]));
    assert_eq!(decide_receive_only(Side::new(Some(&edit)).with_force(true), Side::new(Some(&group)), "r"), TakeRemote);
    assert_eq!(r(Some(&at(&group, v(&[("a", 1), ("r", 2)]))), Some(&group)), InSync);
}

#[test]
fn scenario_08_a_receive_only_host_keeps_a_newer_group_version_it_already_has() {
    // R took C's change; B has not seen it yet. Stepping back to B's state would only
    // be undone by the next sync with C.
    let from_b = file("x", 10, v(&[("a", 1)]));
    let from_c = file("x from c", 20, v(&[("a", 1), ("c", 1)]));
    let r = |local: &EntryRecord, remote: &EntryRecord| {
        decide_receive_only(Side::new(Some(local)), Side::new(Some(remote)), "r")
    };
    assert_eq!(r(&from_c, &from_b), KeepLocal);
    // The same with its own edit on top: C, which has everything R received, overwrites it.
    let edited = file("mine", 30, from_c.version.bumped("r", 9));
    assert_eq!(r(&edited, &from_b), KeepLocal);
    assert_eq!(r(&edited, &from_c), TakeRemote);
}

#[test]
fn scenario_08_the_peer_of_a_receive_only_host_never_takes_its_changes() {
    let group = file("x", 10, v(&[("a", 1)]));
    let edit = file("local edit", 11, v(&[("a", 1), ("r", 5)]));
    // B's view of R: the mirror of R's own decision. R's edit would dominate under `decide`.
    assert_eq!(decide(Side::new(Some(&group)), Side::new(Some(&edit))), TakeRemote);
    assert_eq!(decide_receive_only(Side::new(Some(&edit)), Side::new(Some(&group)), "r").mirror(), KeepLocal);
}

#[test]
fn scenario_17_a_receive_only_host_does_not_flip_between_the_sides_of_a_conflict() {
    // A and B agreed on `base`, then each changed it: a conflict.
    let base = file("base", 10, v(&[("a", 1)]));
    let side_a = file("from a", 20, v(&[("a", 2)]));
    let side_b = file("from b", 30, v(&[("a", 1), ("b", 1)]));
    let r = |local: &EntryRecord, remote: &EntryRecord| {
        decide_receive_only(Side::new(Some(local)), Side::new(Some(remote)), "r")
    };
    // A host that knows of the conflict offers its side under the agreed
    // version: R keeps `base`, from either side.
    let agreed = agreed_version(&side_a.version, &side_b.version);
    assert_eq!(agreed, base.version);
    assert_eq!(r(&base, &at(&side_a, agreed.clone())), KeepLocal);
    assert_eq!(r(&base, &at(&side_b, agreed.clone())), KeepLocal);
    // One side reached R before the conflict was known: R keeps it, and
    // never takes the other side.
    assert_eq!(r(&base, &side_a), TakeRemote);
    assert_eq!(r(&side_a, &side_b), KeepLocal);
    assert_eq!(r(&side_b, &side_a), KeepLocal);
    assert_eq!(r(&side_a, &at(&side_b, agreed)), KeepLocal);
    // Settled (by force on A or a policy): the winner's version dominates
    // both sides, and R takes it whatever it holds.
    let settled = at(&side_a, settled_version(&side_a.version, &side_b.version, "a", 3));
    assert_eq!(r(&base, &settled), TakeRemote);
    assert_eq!(r(&side_b, &settled), TakeRemote);
    assert_eq!(r(&side_a, &settled), InSync);
    // R's own edit on top of `base` is still undone by the agreed state.
    let edited = file("mine", 40, base.version.bumped("r", 9));
    assert_eq!(r(&edited, &at(&side_a, base.version.clone())), TakeRemote);
}

#[test]
fn agreed_version_is_the_greatest_version_both_descend_from() {
    let a = v(&[("a", 3), ("b", 1), ("c", 2)]);
    let b = v(&[("a", 1), ("b", 4), ("d", 1)]);
    let m = agreed_version(&a, &b);
    assert_eq!(m, v(&[("a", 1), ("b", 1)]));
    assert!(a.dominates(&m) && b.dominates(&m));
    assert_eq!(agreed_version(&a, &a), a);
    assert_eq!(agreed_version(&a, &Version::default()), Version::default());
    assert_eq!(agreed_version(&a, &b), agreed_version(&b, &a));
}

#[test]
fn scenario_09_a_rename_is_a_deletion_and_a_creation_of_the_same_content() {
    let old_name = file("content", 10, v(&[("a", 1)]));
    let renamed_from = deleted(&old_name, v(&[("a", 2)]));
    let renamed_to = at(&old_name, v(&[("a", 3)]));
    assert_eq!(both(Some(&old_name), Some(&renamed_from)), TakeRemote);
    assert_eq!(both(None, Some(&renamed_to)), TakeRemote);
    // The new name's body names the content the receiver already has.
    assert_eq!(renamed_to.body, old_name.body);
}

#[test]
fn scenario_15_a_change_applied_once_is_in_sync_on_the_next_run() {
    let old = file("x", 10, v(&[("a", 1)]));
    let new = file("y", 20, v(&[("a", 2)]));
    // Two runs from both ends decide the same thing; once one has applied it, the other finds nothing to do.
    assert_eq!(both(Some(&old), Some(&new)), TakeRemote);
    let (here, there) = apply(Some(&old), Some(&new), TakeRemote);
    assert_eq!(both(here.as_ref(), there.as_ref()), InSync);
    assert_eq!(both(here.as_ref(), Some(&new)), InSync);
}

#[test]
fn equal_versions_over_different_states_are_a_conflict_not_an_overwrite() {
    // Two hosts that settled one conflict differently, each storing only the merged version.
    let version = v(&[("a", 2), ("b", 1)]);
    let a = file("a won", 10, version.clone());
    let b = file("b won", 10, version);
    assert_eq!(both(Some(&a), Some(&b)), Conflict(ModifyModify));
}

#[test]
fn settling_with_settled_version_separates_two_crossing_settlements() {
    let base = v(&[("a", 1)]);
    let a = file("from a", 20, base.bumped("a", 2));
    let b = file("from b", 20, base.bumped("b", 1));
    // Both ran `sync` at once under `auto first`: each initiator won its own run.
    let at_a = settle(Some(&a), Some(&b), Resolution::KeepLocal, "a", 3).unwrap();
    let at_b = settle(Some(&b), Some(&a), Resolution::KeepLocal, "b", 2).unwrap();
    assert_eq!(both(Some(&at_a), Some(&at_b)), Conflict(ModifyModify));
}

#[test]
fn merged_version_takes_the_largest_counter_of_each_host() {
    let m = merged_version(&v(&[("a", 3), ("c", 1)]), &v(&[("a", 1), ("b", 2), ("d", 0)]));
    assert_eq!(m, v(&[("a", 3), ("b", 2), ("c", 1), ("d", 0)]));
    assert_eq!(merged_version(&Version::default(), &Version::default()), Version::default());
}

#[test]
fn names_of_conflict_kinds() {
    let names: Vec<_> = [ModifyModify, ModifyDelete, DeleteModify, TypeChange].map(ConflictKind::as_str).into();
    assert_eq!(names, ["modify-modify", "modify-delete", "delete-modify", "type-change"]);
    assert!(Conflict(TypeChange).is_conflict() && !InSync.is_conflict());
    assert_eq!(Decision::from(Resolution::KeepLocal), KeepLocal);
}

// ---------------------------------------------------------------------------
// Laws.

const HOSTS: [&str; 4] = ["a", "b", "c", "r"];

fn version() -> impl Strategy<Value = Version> {
    proptest::collection::vec((0..HOSTS.len(), 0..6u64), 0..5)
        .prop_map(|pairs| pairs.into_iter().fold(Version::default(), |v, (h, c)| v.bumped(HOSTS[h], c)))
}

/// A few states, so that equal ones, ties and type changes all come up.
const STATES: u8 = 7;

fn state(i: u8, version: Version) -> EntryRecord {
    match i % STATES {
        0 => file("x", 10, version),
        1 => file("z", 10, version),
        2 => file("yy", 20, version),
        3 => dir(0o755, version),
        4 => with_children(&dir(0o755, version), "other children"),
        5 => dir(0o700, version),
        _ => link("t", version),
    }
}

/// A host's record: none, a live entry, or a tombstone, under any version.
fn side() -> impl Strategy<Value = Option<EntryRecord>> {
    proptest::option::of((0..STATES, version(), any::<bool>())).prop_map(|r| {
        r.map(|(i, version, gone)| {
            let e = state(i, version.clone());
            if gone { deleted(&e, version) } else { e }
        })
    })
}

fn counter(v: &Version, host: &str) -> u64 {
    v.0.iter().find(|(h, _)| h == host).map_or(0, |(_, c)| *c)
}

fn well_formed(v: &Version) -> bool {
    v.0.windows(2).all(|w| w[0].0 < w[1].0)
}

/// The outcome of one exchange, as `(initiator's record, responder's
/// record)`, when `initiator` decides and settles conflicts with `policy`.
fn exchange(
    initiator: Option<&EntryRecord>,
    responder: Option<&EntryRecord>,
    policy: AutoPolicy,
    responder_is_left: bool,
) -> (Option<EntryRecord>, Option<EntryRecord>) {
    match decide(Side::new(initiator), Side::new(responder)) {
        Conflict(k) => match resolve(k, initiator, responder, policy, responder_is_left, true) {
            Some(r) => {
                let w = settle(initiator, responder, r, "settler", 1);
                (w.clone(), w)
            }
            None => (initiator.cloned(), responder.cloned()),
        },
        d => apply(initiator, responder, d),
    }
}

proptest! {
    /// Both hosts of a pair reach mirror-image decisions, force included.
    #[test]
    fn deciding_is_the_mirror_of_the_other_side(l in side(), r in side(), lf: bool, rf: bool) {
        let here = decide(Side::new(l.as_ref()).with_force(lf), Side::new(r.as_ref()).with_force(rf));
        let there = decide(Side::new(r.as_ref()).with_force(rf), Side::new(l.as_ref()).with_force(lf));
        prop_assert_eq!(here, there.mirror());
        prop_assert_eq!(here.mirror().mirror(), here);
    }

    /// Both hosts settle a conflict the same way under every policy: the
    /// same winner, whichever end looks at it.
    #[test]
    fn resolving_is_the_mirror_of_the_other_side(
        l in side(), r in side(), p in 0..AutoPolicy::ALL.len(), remote_is_left: bool, local_initiated: bool,
    ) {
        let policy = AutoPolicy::ALL[p];
        if let Conflict(k) = decide(Side::new(l.as_ref()), Side::new(r.as_ref())) {
            let here = resolve(k, l.as_ref(), r.as_ref(), policy, remote_is_left, local_initiated);
            let there = resolve(k.mirror(), r.as_ref(), l.as_ref(), policy, !remote_is_left, !local_initiated);
            prop_assert_eq!(here, there.map(Resolution::mirror));
            if policy != AutoPolicy::First {
                let other = resolve(k, l.as_ref(), r.as_ref(), policy, remote_is_left, !local_initiated);
                prop_assert_eq!(here, other);
            }
        }
    }

    /// Whichever host initiates, an exchange leaves the pair with the same
    /// records (under `auto first` the initiator wins by definition, so it
    /// is left out).
    #[test]
    fn deciding_is_independent_of_which_host_initiates(
        x in side(), y in side(), p in 0..AutoPolicy::ALL.len(), y_is_left: bool,
    ) {
        let policy = AutoPolicy::ALL[p];
        prop_assume!(policy != AutoPolicy::First);
        let (x1, y1) = exchange(x.as_ref(), y.as_ref(), policy, y_is_left);
        let (y2, x2) = exchange(y.as_ref(), x.as_ref(), policy, !y_is_left);
        prop_assert_eq!(x1, x2);
        prop_assert_eq!(y1, y2);
    }

    /// Carrying out a decision, or settling a conflict, leaves the pair in sync.
    #[test]
    fn applying_a_decision_brings_the_pair_in_sync(l in side(), r in side(), local_wins: bool) {
        let (l2, r2) = match decide(Side::new(l.as_ref()), Side::new(r.as_ref())) {
            Conflict(_) => {
                let res = if local_wins { Resolution::KeepLocal } else { Resolution::TakeRemote };
                let w = settle(l.as_ref(), r.as_ref(), res, "a", 99);
                (w.clone(), w)
            }
            d => apply(l.as_ref(), r.as_ref(), d),
        };
        prop_assert_eq!(decide(Side::new(l2.as_ref()), Side::new(r2.as_ref())), InSync);
        prop_assert!(version_of(l2.as_ref()).dominates(version_of(l.as_ref())));
        prop_assert!(version_of(r2.as_ref()).dominates(version_of(r.as_ref())));
    }

    /// A version bumped with a newer counter dominates the one it came from, strictly.
    #[test]
    fn a_bumped_version_dominates_its_origin(base in version(), h in 0..HOSTS.len(), step in 1..4u64) {
        let host = HOSTS[h];
        let bumped = base.bumped(host, counter(&base, host) + step);
        prop_assert!(bumped.dominates(&base));
        prop_assert!(!base.dominates(&bumped));
        prop_assert!(well_formed(&bumped));
    }

    /// The merged version dominates both, and lowering any of its counters
    /// loses that: it is the least such version.
    #[test]
    fn the_merged_version_is_the_least_upper_bound(a in version(), b in version(), w in version()) {
        let m = merged_version(&a, &b);
        prop_assert!(well_formed(&m));
        prop_assert!(m.dominates(&a) && m.dominates(&b));
        prop_assert_eq!(&merged_version(&b, &a), &m);
        prop_assert_eq!(&merged_version(&m, &a), &m);
        if w.dominates(&a) && w.dominates(&b) {
            prop_assert!(w.dominates(&m));
        }
        for (host, c) in m.0.iter().filter(|(_, c)| *c > 0) {
            let lower = m.bumped(host, c - 1);
            prop_assert!(!(lower.dominates(&a) && lower.dominates(&b)), "{:?} is still above both", lower);
        }
    }

    /// Changes made one after another (each on a host that had the latest
    /// state) never conflict, whichever order the hosts then meet in, and
    /// every host ends with the latest state: SPEC §4.6 and §4.7 in general.
    #[test]
    fn sequential_changes_never_conflict_whatever_order_hosts_meet(
        changes in proptest::collection::vec((0..3usize, proptest::option::of(0..STATES)), 1..8),
        start in proptest::collection::vec(0..8usize, 3),
        meetings in proptest::collection::vec((0..3usize, 0..3usize), 0..12),
    ) {
        // The history every host has some prefix of.
        let mut history: Vec<Option<EntryRecord>> = vec![None];
        for (seq, (host, new)) in changes.iter().enumerate() {
            let last = history.last().unwrap().clone();
            let version = version_of(last.as_ref()).bumped(HOSTS[*host], seq as u64 + 1);
            history.push(match (new, &last) {
                (Some(i), _) => Some(state(*i, version)),
                (None, Some(prev)) => Some(deleted(prev, version)),
                (None, None) => None,
            });
        }
        history.dedup_by(|b, a| a.is_none() && b.is_none());
        let mut hosts: Vec<Option<EntryRecord>> =
            start.iter().map(|i| history[(*i).min(history.len() - 1)].clone()).collect();
        hosts[0] = history.last().unwrap().clone();
        let all_pairs = [(0, 1), (1, 2), (0, 2)];
        for (x, y) in meetings.iter().copied().filter(|(x, y)| x != y).chain(all_pairs) {
            let d = both(hosts[x].as_ref(), hosts[y].as_ref());
            prop_assert!(!d.is_conflict(), "{:?} between {:?} and {:?}", d, hosts[x], hosts[y]);
            let (nx, ny) = apply(hosts[x].as_ref(), hosts[y].as_ref(), d);
            (hosts[x], hosts[y]) = (nx, ny);
        }
        for h in &hosts {
            prop_assert_eq!(decide(Side::new(h.as_ref()), Side::new(history.last().unwrap().as_ref())), InSync);
        }
    }

    /// Under random concurrent edits and syncs among three hosts, every
    /// decision is the one the true causal history of the path calls for:
    /// take what has seen everything we have, keep what has seen
    /// everything they have, and call a conflict only when each side has a
    /// change the other has not seen. Conflicts are settled by force.
    #[test]
    fn decisions_follow_the_causal_history(
        ops in proptest::collection::vec((0..3usize, 0..3usize, proptest::option::of(0..STATES), any::<bool>()), 1..40),
    ) {
        struct Host {
            record: Option<EntryRecord>,
            history: BTreeSet<u32>,
        }
        let mut hosts: Vec<Host> = (0..3).map(|_| Host { record: None, history: BTreeSet::new() }).collect();
        let mut seq = [0u64; 3];
        let mut events = 0u32;
        for (x, y, new, is_edit) in ops {
            if is_edit || x == y {
                // An edit on host x: write state `new`, or delete.
                let old = hosts[x].record.clone();
                let next = match (new, old.as_ref().filter(|r| !r.deleted)) {
                    (Some(i), _) => Some(state(i, Version::default())),
                    (None, Some(live)) => Some(deleted(live, Version::default())),
                    (None, None) => None,
                };
                if next.is_none() || EntryRecord::same_state(next.as_ref(), old.as_ref()) {
                    continue;
                }
                seq[x] += 1;
                events += 1;
                let version = version_of(old.as_ref()).bumped(HOSTS[x], seq[x]);
                hosts[x].record = next.map(|r| at(&r, version));
                hosts[x].history.insert(events);
                continue;
            }
            let (lr, rr) = (hosts[x].record.clone(), hosts[y].record.clone());
            let (lh, rh) = (hosts[x].history.clone(), hosts[y].history.clone());
            let d = both(lr.as_ref(), rr.as_ref());
            let expected = if EntryRecord::same_state(lr.as_ref(), rr.as_ref()) {
                InSync
            } else if lh.is_subset(&rh) {
                TakeRemote
            } else if rh.is_subset(&lh) {
                KeepLocal
            } else {
                Conflict(conflict_kind(lr.as_ref(), rr.as_ref()))
            };
            prop_assert_eq!(d, expected, "local {:?} {:?}, remote {:?} {:?}", lr, lh, rr, rh);
            let union: BTreeSet<u32> = lh.union(&rh).copied().collect();
            let (nl, nr, history) = match d {
                Conflict(_) => {
                    seq[x] += 1;
                    events += 1;
                    let w = settle(lr.as_ref(), rr.as_ref(), Resolution::KeepLocal, HOSTS[x], seq[x]);
                    let mut h = union;
                    h.insert(events);
                    (w.clone(), w, h)
                }
                TakeRemote => (rr.clone(), rr, rh),
                KeepLocal => (lr.clone(), lr, lh),
                InSync => {
                    let (nl, nr) = apply(lr.as_ref(), rr.as_ref(), InSync);
                    (nl, nr, union)
                }
            };
            hosts[x] = Host { record: nl, history: history.clone() };
            hosts[y] = Host { record: nr, history };
        }
    }

    /// A receive-only host never conflicts, its own changes never hold
    /// against the peer's state, and it never takes a state that does not
    /// descend from what it received: it takes the peer's state exactly
    /// when the peer's version strictly dominates what it received, or
    /// equals it over an edit of its own.
    #[test]
    fn a_receive_only_host_never_conflicts_and_never_keeps_its_own_changes(
        l in side(), r in side(), lf: bool, rf: bool,
    ) {
        let d = decide_receive_only(Side::new(l.as_ref()).with_force(lf), Side::new(r.as_ref()).with_force(rf), "r");
        prop_assert!(!d.is_conflict());
        prop_assert_eq!(d == InSync, EntryRecord::same_state(l.as_ref(), r.as_ref()));
        let lv = version_of(l.as_ref());
        let received = Version(lv.0.iter().filter(|(h, _)| h != "r").cloned().collect());
        let rv = version_of(r.as_ref());
        let own = lv.0.iter().any(|(h, _)| h == "r");
        if d != InSync {
            let takes = rv.dominates(&received) && (!received.dominates(rv) || own);
            prop_assert_eq!(d == TakeRemote, takes, "local {:?}, remote {:?}", l, r);
        }
        if d == TakeRemote {
            prop_assert!(rv.dominates(&received));
        }
    }
}
