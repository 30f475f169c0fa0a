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
//! compared with), and so does one a restore is using. Every other
//! generation is dropped once no rule keeps it.
//!
//! The plan walks the generations newest first and compares each with the
//! next newer one (the current tree for the newest) through
//! [`super::diff_trees`], which descends only where trees differ: the cost
//! follows what changed between generations, not their size. Dropping
//! what the plan does not keep leaves the plan of the rest unchanged: a
//! kept generation is the newest holding its versions, so no comparison
//! the plan depends on is lost.

use std::collections::{BTreeMap, HashMap};

use super::{Generation, Store, StoreError, diff_trees};
use crate::hash::Hash;
use crate::tree::{RootSet, Timestamp};

/// `backup-keep`: generations kept by age, beyond the versions of paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Keep every generation younger than this many seconds.
    pub within: Option<u64>,
    /// Newest generation of each of the last N hours that have one.
    pub hourly: u32,
    /// Of each of the last N days.
    pub daily: u32,
    /// Of each of the last N weeks (Monday to Sunday).
    pub weekly: u32,
    /// Of each of the last N months.
    pub monthly: u32,
}

impl KeepPolicy {
    /// Whether the policy keeps nothing.
    pub fn is_empty(&self) -> bool {
        self.within.is_none() && self.hourly == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

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
            diff_trees(store, &g.roots, newer, &mut |path, old, new| {
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
    Ok(out)
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
