//! SPEC §4.8 and §6: a receive-only host never sends its changes; its
//! local edits are overwritten by the group's version and kept in its
//! generations.

use crate::cluster::{Cluster, Setup, changes, peer_report, write_at};
use crate::common::write;

fn setup() -> Cluster {
    let mut c = Cluster::with(Setup::nodes(3).receive_only("c").backups(10));
    c.start_all();
    write_at(&c.path("a", "edited.txt"), b"group version", 1_600_000_000);
    write_at(&c.path("a", "deleted-on-c"), b"keep me", 1_600_000_000);
    write_at(&c.path("a", "d/x"), b"x", 1_600_000_000);
    let v = c.sync_ok("a");
    // A never takes anything from C, but C takes from A.
    assert!(
        peer_report(&v, "c")["pulled"].is_null() || peer_report(&v, "c")["pulled"]["changes"] == serde_json::json!([])
    );
    c.assert_all_same();
    c
}

/// C's own `sync` never changes A or B, and brings C back to the group's
/// version: its edit and its deletion are undone.
#[test]
fn sync_receive_only_host_never_changes_others() {
    let c = setup();
    let (before_a, before_b) = (c.snapshot("a"), c.snapshot("b"));
    let ls_a = c.ls("a");
    write_at(&c.path("c", "edited.txt"), b"edit made on c", 1_650_000_000);
    std::fs::remove_file(c.path("c", "deleted-on-c")).unwrap();
    let (code, v) = c.sync("c", &[]);
    assert_eq!(code, 0, "{v:#}");
    for peer in ["a", "b"] {
        let p = peer_report(&v, peer);
        assert!(p["error"].is_null(), "{v:#}");
        assert_eq!(p["pushed"], serde_json::json!([]), "c pushed to {peer}: {v:#}");
    }
    assert_eq!(c.snapshot("a"), before_a, "a changed after c's sync");
    assert_eq!(c.snapshot("b"), before_b, "b changed after c's sync");
    assert_eq!(c.ls("a"), ls_a, "a's records changed after c's sync");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("c", "edited.txt")).unwrap(), b"group version");
    assert!(c.path("c", "deleted-on-c").exists());
    // Nothing is left to do, and nobody reports a conflict.
    for n in ["a", "b", "c"] {
        assert!(c.conflicts(n).is_empty(), "{n}");
    }
}

/// A sync run by a sending host overwrites C's edits too, and C's
/// generations keep the overwritten edit.
#[test]
fn sync_receive_only_edits_are_overwritten_and_kept_in_generations() {
    let c = setup();
    write_at(&c.path("c", "edited.txt"), b"edit made on c", 1_650_000_000);
    // C records its edit (a generation with it).
    c.check("c");
    let before_a = c.snapshot("a");
    let v = c.sync_ok("a");
    let pc = peer_report(&v, "c");
    assert!(
        changes(&pc["pushed"]).contains(&("update".to_owned(), "%tree%/edited.txt".to_owned())),
        "c did not take the group's version: {v:#}"
    );
    assert_eq!(c.snapshot("a"), before_a, "a took c's edit");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("c", "edited.txt")).unwrap(), b"group version");

    // The overwritten edit is in one of C's generations.
    let (code, gens) = c.json("c", &["generations"]);
    assert_eq!(code, 0);
    let gens = gens["generations"].as_array().unwrap().clone();
    assert!(gens.iter().any(|g| g["cause"].as_str().unwrap_or("").contains("from a")), "{gens:#?}");
    let mut found = false;
    for g in &gens {
        let id = g["id"].to_string();
        let to = c.root().join(format!("restored-{id}"));
        let out = c.run("c", &["restore", "--generation", &id, "--to", to.to_str().unwrap()]);
        assert_eq!(out.code, 0, "restore {id}: {}", out.stderr);
        for f in Cluster::find_files(&to, "edited.txt") {
            found |= std::fs::read(&f).unwrap() == b"edit made on c";
        }
    }
    assert!(found, "no generation of c holds its overwritten edit: {gens:#?}");
}

/// SPEC §6: a receive-only host's attempt to push is refused by its peers
/// even if its own config claims it may send.
#[test]
fn sync_receive_only_host_cannot_push_by_changing_its_config() {
    let mut c = setup();
    // C's own config lists it as a normal host; A and B still list it in
    // parentheses. C runs without its daemon (its state moves with the
    // config file, so it starts afresh and checks its tree).
    c.stop("c");
    let mut text = String::new();
    for line in c.config_text(&["a", "b", "c"], &c.key_path()).lines() {
        if line.trim_start().starts_with("host ") {
            text.push_str(&line.replace(['(', ')'], ""));
        } else {
            text.push_str(line);
        }
        text.push('\n');
    }
    assert!(!text.contains("(c@"), "{text}");
    let old_key = c.node_state_dir("c").join("net/node-key.pem");
    c.use_own_config("c", &text);
    // Same node key as before, so the peers' pins hold and only the
    // receive-only rule can refuse it.
    let net = c.node_state_dir("c").join("net");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::copy(&old_key, net.join("node-key.pem")).unwrap();
    write_at(&c.path("c", "edited.txt"), b"edit pushed by c", 1_650_000_000);
    let before_a = c.snapshot("a");
    let before_b = c.snapshot("b");
    let (code, v) = c.sync("c", &[]);
    assert_ne!(code, 0, "c pushed as a sender: {v:#}");
    for peer in ["a", "b"] {
        let err = peer_report(&v, peer)["error"].as_str().unwrap_or_default().to_owned();
        assert!(err.contains("receive-only"), "{v:#}");
    }
    assert_eq!(c.snapshot("a"), before_a, "a took c's edit");
    assert_eq!(c.snapshot("b"), before_b, "b took c's edit");
}

/// Files C creates are not the group's: C's next sync removes them (the
/// group's version of those paths is "absent"), and A and B never get them.
#[test]
fn sync_receive_only_creations_are_removed() {
    let c = setup();
    write(&c.path("c", "created-on-c"), b"new on c");
    write(&c.path("c", "d/y"), b"also new on c");
    let (code, v) = c.sync("c", &[]);
    assert_eq!(code, 0, "{v:#}");
    assert!(!c.path("a", "created-on-c").exists() && !c.path("b", "d/y").exists());
    assert!(!c.path("c", "created-on-c").exists(), "c kept its own creation: {v:#}");
    assert!(!c.path("c", "d/y").exists(), "c kept its own creation: {v:#}");
    c.assert_all_same();
}
