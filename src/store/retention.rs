//! Retention: which generations of a group stay, and why.
//!
//! Terms:
//! - A *version* of a path is an entry it held (see [`Side::identity`]:
//!   kind, metadata and content; a directory's version leaves out what is
//!   below it). Absence is not a version: there is nothing to bring back.
//! - A path's *previous versions* are the distinct versions it held
//!   before the one it holds now, newest first. `backup-generations N`
//!   keeps, for every path, the newest generation holding each of its N
//!   newest previous versions (csync2 keeps N backups of each file).
//! - A *bucket* rule of `backup-keep` (restic's `forget` policies) keeps
//!   the newest generation of each of the last N hours, days, weeks or
//!   months that have one; `within D` keeps every generation younger than D.
//!   Buckets are counted in UTC.
//!
//! The newest generation always stays (it is what the next change is
//! compared with), and so does one a restore is using. A generation that
//! was restored stays as long as the generation recording that restore
//! (cause `restore of generation N`) does: its versions are then the
//! current ones, which no previous-version rule keeps, and the operator
//! who just restored it must be able to restore it again (issue 10).
//! Every other generation is dropped once no rule keeps it.
//!
//! The plan walks the generations newest first and compares each with the
//! next newer one (the current tree for the newest) through
//! [`super::diff_trees`], which descends only where trees differ: the cost
//! follows what changed between generations, not their size. Dropping
//! what the plan does not keep leaves the plan of the rest unchanged: a
//! kept generation is the newest holding its versions, so no comparison
//! the plan depends on is lost.

use std::collections::{BTreeMap, HashMap};

use super::{DiffScope, Generation, Store, StoreError, diff_trees};
use crate::config::KeepPolicy;
use crate::hash::Hash;
use crate::tree::{RootSet, Timestamp};

/// How a group keeps its generations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// `backup-generations`: previous versions kept for every path.
    pub versions: u32,
    /// `backup-keep`.
    pub keep: KeepPolicy,
}

impl Retention {
    /// Whether the group keeps no generation at all (no backups).
    pub fn keeps_nothing(&self) -> bool {
        self.versions == 0 && self.keep.is_empty()
    }
}

/// Why a generation is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// It is the group's newest generation.
    Newest,
    /// A restore is using it.
    Restoring,
    /// The generation recording a restore of it, which is kept.
    RestoredBy(u64),
    /// It is the newest generation holding one of the previous versions
    /// kept for `paths` paths; `example` is the first of them in path order.
    Versions {
        /// How many paths it holds a kept previous version of.
        paths: u64,
        /// One of them (a logical path).
        example: Vec<u8>,
    },
    /// `backup-keep within`.
    Within,
    /// A bucket rule of `backup-keep`: `hourly`, `daily`, `weekly` or
    /// `monthly`.
    Bucket(&'static str),
}

/// Which of `gens` (the generations of one group, any order) stay under
/// `policy`, with the reasons; a generation with no reason is dropped.
/// `current` is the group's current tree; `protected` lists generations a
/// restore is using.
pub fn plan(
    store: &Store,
    gens: &[&Generation],
    current: Option<&RootSet>,
    policy: &Retention,
    protected: &[u64],
    now: Timestamp,
) -> Result<BTreeMap<u64, Vec<KeepReason>>, StoreError> {
    let mut order: Vec<&Generation> = gens.to_vec();
    order.sort_by_key(|g| std::cmp::Reverse(g.id));
    let mut out: BTreeMap<u64, Vec<KeepReason>> = order.iter().map(|g| (g.id, Vec::new())).collect();
    for g in &order {
        if protected.contains(&g.id) {
            out.get_mut(&g.id).expect("listed").push(KeepReason::Restoring);
        }
    }
    if policy.keeps_nothing() || order.is_empty() {
        return Ok(out);
    }
    out.get_mut(&order[0].id).expect("listed").insert(0, KeepReason::Newest);

    if policy.versions > 0 {
        // Per path: the identities of its current and counted versions.
        let mut seen: HashMap<Vec<u8>, Vec<Hash>> = HashMap::new();
        let limit = policy.versions as usize;
        let mut newer = current.unwrap_or(&order[0].roots);
        for g in &order {
            let mut paths: Vec<Vec<u8>> = Vec::new();
            diff_trees(store, &g.roots, newer, DiffScope::OldSides, &mut |path, old, new| {
                let ids = seen.entry(path.to_vec()).or_insert_with(|| {
                    // The first difference met walking back: the newer side
                    // is what the path holds now.
                    let mut v = Vec::with_capacity(limit + 1);
                    v.push(new.map(|s| s.identity()).unwrap_or(Hash([0; 32])));
                    v
                });
                // The current version plus `limit` previous ones.
                if ids.len() > limit {
                    return;
                }
                if let Some(o) = old {
                    let id = o.identity();
                    if !ids.contains(&id) {
                        ids.push(id);
                        paths.push(path.to_vec());
                    }
                }
            })?;
            if let Some(example) = paths.iter().min().cloned() {
                out.get_mut(&g.id).expect("listed").push(KeepReason::Versions { paths: paths.len() as u64, example });
            }
            newer = &g.roots;
        }
    }

    let keep = &policy.keep;
    if let Some(within) = keep.within {
        let since = now.secs.saturating_sub(within.min(i64::MAX as u64) as i64);
        for g in order.iter().filter(|g| g.time.secs >= since) {
            out.get_mut(&g.id).expect("listed").push(KeepReason::Within);
        }
    }
    let rules: [BucketRule; 4] = [
        ("hourly", keep.hourly, |s| s.div_euclid(3600)),
        ("daily", keep.daily, |s| s.div_euclid(86_400)),
        // The epoch was a Thursday: shifted by three days, weeks start on Monday.
        ("weekly", keep.weekly, |s| (s.div_euclid(86_400) + 3).div_euclid(7)),
        ("monthly", keep.monthly, |s| month_of(s.div_euclid(86_400))),
    ];
    for (name, n, bucket) in rules {
        let mut last = None;
        let mut taken = 0;
        for g in &order {
            if taken >= n {
                break;
            }
            let b = bucket(g.time.secs);
            if last != Some(b) {
                last = Some(b);
                taken += 1;
                out.get_mut(&g.id).expect("listed").push(KeepReason::Bucket(name));
            }
        }
    }
    // Newest first, so a restore of a generation that is itself kept only
    // as restored keeps its own source too.
    for g in &order {
        let Some(source) = restored_from(&g.cause) else { continue };
        if out[&g.id].is_empty() {
            continue;
        }
        if let Some(reasons) = out.get_mut(&source) {
            reasons.push(KeepReason::RestoredBy(g.id));
        }
    }
    Ok(out)
}

/// The generation a generation with `cause` recorded a restore of
/// (`restore of generation N`, as [`crate::restore`] names it).
fn restored_from(cause: &str) -> Option<u64> {
    cause.strip_prefix("restore of generation ")?.parse().ok()
}

/// A bucket rule: its name, how many buckets it keeps, and the bucket of a
/// time (seconds since the epoch).
type BucketRule = (&'static str, u32, fn(i64) -> i64);

/// A month number (year * 12 + month - 1) for a day since the epoch
/// (Howard Hinnant's `civil_from_days`).
fn month_of(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    y * 12 + m - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generations of one unchanging tree, recorded at `secs` each.
    fn at(secs: &[i64]) -> Vec<Generation> {
        secs.iter()
            .zip(1..)
            .map(|(&s, id)| Generation {
                id,
                group: "g".into(),
                time: Timestamp { secs: s, nanos: 0 },
                cause: "test".into(),
                roots: RootSet::default(),
                root_chunks: Vec::new(),
                entries: 0,
                bytes: 0,
                added_bytes: 0,
            })
            .collect()
    }

    fn kept(policy: Retention, gens: &[Generation], protected: &[u64], now: i64) -> Vec<(u64, Vec<KeepReason>)> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let refs: Vec<&Generation> = gens.iter().collect();
        let now = Timestamp { secs: now, nanos: 0 };
        plan(&store, &refs, None, &policy, protected, now).unwrap().into_iter().filter(|(_, r)| !r.is_empty()).collect()
    }

    #[test]
    fn buckets_keep_the_newest_generation_of_each_period_as_restic_does() {
        const H: i64 = 3600;
        // Two in hour 0, two in hour 1, one in hour 3 (hour 2 has none).
        let gens = at(&[10, 20, H + 10, H + 20, 3 * H + 5]);
        let policy = Retention { versions: 0, keep: KeepPolicy { hourly: 3, ..KeepPolicy::default() } };
        let got = kept(policy, &gens, &[], 3 * H + 100);
        use KeepReason::{Bucket, Newest};
        assert_eq!(
            got,
            [(2, vec![Bucket("hourly")]), (4, vec![Bucket("hourly")]), (5, vec![Newest, Bucket("hourly")])]
        );

        let policy =
            Retention { versions: 1, keep: KeepPolicy { within: Some(2 * H as u64), ..KeepPolicy::default() } };
        let got: Vec<u64> = kept(policy, &gens, &[], 3 * H).into_iter().map(|(id, _)| id).collect();
        assert_eq!(got, [3, 4, 5], "within two hours of now");
    }

    #[test]
    fn the_newest_and_protected_generations_stay_and_no_backups_keep_none() {
        let gens = at(&[1, 2, 3]);
        let policy = Retention { versions: 3, keep: KeepPolicy::default() };
        let got = kept(policy, &gens, &[1], 10);
        assert_eq!(got, [(1, vec![KeepReason::Restoring]), (3, vec![KeepReason::Newest])]);
        let got = kept(Retention::default(), &gens, &[], 10);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn months_follow_the_calendar() {
        // 1970-01-01, 1970-01-31, 1970-02-01, 2000-02-29, 2000-03-01.
        assert_eq!(month_of(0), 1970 * 12);
        assert_eq!(month_of(30), 1970 * 12);
        assert_eq!(month_of(31), 1970 * 12 + 1);
        assert_eq!(month_of(11_016), 2000 * 12 + 1);
        assert_eq!(month_of(11_017), 2000 * 12 + 2);
    }
}
