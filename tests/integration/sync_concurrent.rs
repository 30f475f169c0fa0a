//! SPEC §4.15: two `sync` runs started at once do not corrupt anything or
//! deliver a change twice.

use std::collections::HashMap;
use std::time::Duration;

use crate::cluster::{Cluster, any_conflict};
use crate::common::write;

/// Audit lines (host, path) in a daemon log from byte `from` on.
fn audits(log: &str, from: usize) -> Vec<(String, String)> {
    log[from..]
        .lines()
        .filter_map(|l| {
            let l = &l[l.find("audit host=")?..];
            let host = l.split_whitespace().next()?.strip_prefix("host=")?.to_owned();
            let path = l[l.find(" path=")? + 6..].to_owned();
            Some((host, path))
        })
        .collect()
}

#[test]
fn sync_two_runs_at_once_on_two_hosts() {
    let mut c = Cluster::new(3);
    c.start_all();
    for i in 0..20 {
        write(&c.path("a", &format!("shared/{i}")), format!("v0 {i}").as_bytes());
    }
    c.sync_ok("a");
    c.assert_all_same();
    for i in 0..10 {
        write(&c.path("a", &format!("shared/{i}")), format!("v1 from a {i}").as_bytes());
        write(&c.path("a", &format!("from-a/{i}")), &crate::common::bytes(i, 70_000));
    }
    for i in 10..20 {
        write(&c.path("b", &format!("shared/{i}")), format!("v1 from b {i}").as_bytes());
        write(&c.path("b", &format!("from-b/{i}")), &crate::common::bytes(100 + i, 70_000));
    }
    let marks: HashMap<&str, usize> = ["a", "b", "c"].iter().map(|n| (*n, c.log(n).len())).collect();
    let ra = c.spawn("a", "sync-a", &["--json", "sync"]);
    let rb = c.spawn("b", "sync-b", &["--json", "sync"]);
    let (oa, ob) = (ra.wait(Duration::from_secs(90)), rb.wait(Duration::from_secs(90)));
    for (n, o) in [("a", &oa), ("b", &ob)] {
        let v = o.json();
        assert!(!any_conflict(&v), "{n}: {v:#}");
        assert_eq!(o.code, 0, "sync on {n} exited {}: {}\n{}", o.code, o.stderr, o.stdout);
    }
    // Both runs together brought everything everywhere, each file once.
    c.assert_all_same();
    for n in ["a", "b", "c"] {
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for k in audits(&c.log(n), marks[n]) {
            *seen.entry(k).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, k)| **k > 1).collect();
        assert!(twice.is_empty(), "{n} applied changes twice: {twice:?}");
    }
    assert_eq!(std::fs::read(c.path("c", "shared/3")).unwrap(), b"v1 from a 3");
    assert_eq!(std::fs::read(c.path("c", "shared/13")).unwrap(), b"v1 from b 13");
    // A following sync from each host finds every pair in sync.
    for n in ["a", "b", "c"] {
        let v = c.sync_ok(n);
        for p in v["peers"].as_array().unwrap() {
            assert_eq!(p["in_sync"], true, "{n}: {v:#}");
        }
        assert!(c.conflicts(n).is_empty(), "{n}");
    }
    for n in ["a", "b", "c"] {
        let out = c.run(n, &["verify"]);
        assert_eq!(out.code, 0, "verify on {n}: {}{}", out.stdout, out.stderr);
    }
}
