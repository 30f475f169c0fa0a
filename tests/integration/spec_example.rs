//! SPEC §1: the csync2 config from a real deployment, verbatim.
//!
//! Its paths are absolute (`/etc/csync2.key-app`, `/vol/...`), so this test
//! writes there. It needs root; elsewhere it says so and does nothing. It
//! removes what it created and never touches a key file it did not create.

use std::path::Path;

use crate::common::write;

const CONFIG: &str = include_str!("../../fixtures/config/spec-example.cfg");

#[test]
fn spec_example_config_checks_and_lists_both_includes() {
    if !crate::local::is_root() {
        eprintln!("spec_example: needs root to write /etc and /vol; not run");
        return;
    }
    let key = Path::new("/etc/csync2.key-app");
    let made_key = !key.exists();
    let made_vol = !Path::new("/vol").exists();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("csync2.cfg");
    std::fs::write(&cfg, CONFIG).unwrap();
    let snapsync = |args: &[&str]| {
        let mut c = assert_cmd::Command::cargo_bin("snapsync").unwrap();
        c.arg("--config").arg(&cfg).args(["-N", "app0.example.com", "-D"]).arg(dir.path().join("state"));
        c.args(args);
        c
    };
    if made_key {
        snapsync(&["keygen", "/etc/csync2.key-app"]).assert().success();
    }
    let marker = format!("snapsync-test-{}", std::process::id());
    let shared = Path::new("/vol/0/app/shared").join(&marker);
    let spool = Path::new("/vol/0/app/spool").join(&marker);
    write(&shared.join("index.html"), b"<html>");
    write(&shared.join("img/logo.png"), &crate::common::bytes(1, 40_000));
    write(&spool.join("queue/job-1"), b"job");

    let result = std::panic::catch_unwind(|| {
        snapsync(&["check"]).assert().success();
        let out = snapsync(&["--json", "ls"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let paths: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
        for p in [shared.join("index.html"), shared.join("img/logo.png"), spool.join("queue/job-1")] {
            assert!(paths.contains(&p.to_str().unwrap()), "{} not listed in {paths:?}", p.display());
        }
        let gens = snapsync(&["--json", "generations"]).output().unwrap();
        let g: serde_json::Value = serde_json::from_slice(&gens.stdout).unwrap();
        assert_eq!(g["generations"].as_array().unwrap().len(), 1, "backup-directory is honoured");
    });

    let _ = std::fs::remove_dir_all(&shared);
    let _ = std::fs::remove_dir_all(&spool);
    // This node's chunk store: `snapsync-app0.example.com-<tag>`.
    if let Ok(dir) = std::fs::read_dir("/vol/csync2/backup") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with("snapsync-app0.example.com") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if made_vol {
        let _ = std::fs::remove_dir_all("/vol");
    }
    if made_key {
        let _ = std::fs::remove_file(key);
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
