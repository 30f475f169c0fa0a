//! SPEC §3, csync2 drop-in: the binary run under csync2's name takes
//! csync2's command line, default config name and exit statuses, on a
//! three-node loopback cluster whose daemons were started as snapsync.

use std::path::PathBuf;

use crate::cluster::{BIN, Cluster, Out};
use crate::common::write;

/// A `csync2` symlink to the binary, in a directory of its own.
fn csync2_link(c: &Cluster) -> PathBuf {
    let dir = c.root().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("csync2");
    if !link.exists() {
        std::os::unix::fs::symlink(BIN, &link).unwrap();
    }
    link
}

/// Runs `csync2 ARGS` for node `name`: the config is csync2's default
/// (`$CSYNC2_SYSTEM_DIR/csync2.cfg`, the cluster's file), `-N` and `-D`
/// as csync2 takes them.
fn csync2(c: &Cluster, name: &str, args: &[&str]) -> Out {
    let out = std::process::Command::new(csync2_link(c))
        .env("CSYNC2_SYSTEM_DIR", c.root())
        .env_remove("RUST_LOG")
        .arg("-N")
        .arg(name)
        .arg("-D")
        .arg(c.state(name))
        .args(args)
        .output()
        .expect("csync2 runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(out: &Out, what: &str) {
    assert_eq!(out.code, 0, "{what}: {}{}", out.stdout, out.stderr);
}

/// The seed deployment's wrapper (`csync2 -m FILE; csync2 -u`), a cron
/// line (`csync2 -x`), `-cr`, `-T`, `-M`, `-f` and `-fr`, with csync2's
/// exit statuses.
#[test]
fn csync2_command_lines_work_unchanged() {
    let mut c = Cluster::new(3);
    c.start_all();
    assert_eq!(c.config_path().file_name().unwrap(), "csync2.cfg");

    // The wrapper: mark, then update.
    write(&c.path("a", "www/index.html"), b"v1");
    ok(&csync2(&c, "a", &["-m", c.path("a", "www/index.html").to_str().unwrap()]), "-m");
    ok(&csync2(&c, "a", &["-u"]), "-u");
    c.assert_all_same();

    // The cron line.
    write(&c.path("b", "www/page.html"), b"from b");
    ok(&csync2(&c, "b", &["-x"]), "-x");
    c.assert_all_same();

    // -T: exit 2 when in sync (csync2's meaning), 0 when something differs.
    let t = csync2(&c, "c", &["-T"]);
    assert_eq!(t.code, 2, "-T in sync: {}{}", t.stdout, t.stderr);
    write(&c.path("c", "www/new.txt"), b"new on c");
    ok(&csync2(&c, "c", &["-cr", c.tree("c").to_str().unwrap()]), "-cr");
    let t = csync2(&c, "c", &["-T"]);
    assert_eq!(t.code, 0, "-T with differences: {}{}", t.stdout, t.stderr);
    // -M lists what a sync would send; exit 2 once there is nothing.
    let m = csync2(&c, "c", &["-M"]);
    assert_eq!(m.code, 0, "{}{}", m.stdout, m.stderr);
    assert!(m.stdout.lines().any(|l| l.ends_with("%tree%/www/new.txt")), "{}", m.stdout);
    ok(&csync2(&c, "c", &["-x"]), "-x");
    let m = csync2(&c, "c", &["-M"]);
    assert_eq!(m.code, 2, "-M with nothing dirty: {}{}", m.stdout, m.stderr);

    // A conflict fails -x (exit 1, as csync2); -f on one side settles it.
    write(&c.path("a", "www/index.html"), b"edited on a");
    write(&c.path("b", "www/index.html"), b"edited on b, longer");
    let x = csync2(&c, "a", &["-x"]);
    assert_eq!(x.code, 1, "a conflict fails -x: {}{}", x.stdout, x.stderr);
    ok(&csync2(&c, "b", &["-f", c.path("b", "www/index.html").to_str().unwrap()]), "-f");
    ok(&csync2(&c, "b", &["-x"]), "-x after -f");
    c.sync_ok("c");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("a", "www/index.html")).unwrap(), b"edited on b, longer");

    // -fr settles everything below a directory.
    write(&c.path("a", "www/index.html"), b"again on a");
    write(&c.path("c", "www/index.html"), b"again on c");
    let x = csync2(&c, "c", &["-x"]);
    assert_eq!(x.code, 1, "{}{}", x.stdout, x.stderr);
    ok(&csync2(&c, "a", &["-fr", c.path("a", "www").to_str().unwrap()]), "-fr");
    ok(&csync2(&c, "a", &["-x"]), "-x after -fr");
    c.sync_ok("b");
    c.assert_all_same();

    // -L lists the tracked paths.
    let l = csync2(&c, "b", &["-L"]);
    assert_eq!(l.code, 0, "{}{}", l.stdout, l.stderr);
    assert!(l.stdout.contains("www/page.html"), "{}", l.stdout);

    // Bad command lines exit 1, as csync2's do.
    for args in [&["-x", "-m", "f"][..], &["-Q"], &[]] {
        let out = csync2(&c, "a", args);
        assert_eq!(out.code, 1, "{args:?}: {}{}", out.stdout, out.stderr);
    }
}

/// `-TT FILE [PEER]` compares one file with a peer: a unified diff of the
/// peer's text against this host's, both sides' metadata for a binary
/// file, exit 2 when they are the same (csync2's `-T` statuses); nothing
/// is written on either host. `snapsync diff` is the same under
/// snapsync's name.
#[test]
fn csync2_tt_shows_one_file_against_a_peer() {
    let mut c = Cluster::new(2);
    c.start_all();
    let file = c.path("a", "www/site.conf");
    let file_arg = file.to_str().unwrap();
    write(&file, b"listen 80;\nroot /srv;\nindex index.html;\n");
    write(&c.path("a", "www/logo.bin"), b"\x89PNG\0\0one");
    c.sync_ok("a");

    let same = csync2(&c, "a", &["-TT", file_arg]);
    assert_eq!(same.code, 2, "in sync: {}{}", same.stdout, same.stderr);
    assert!(same.stdout.contains(&format!("{file_arg}: same on a and b")), "{}", same.stdout);

    write(&c.path("b", "www/site.conf"), b"listen 8080;\nroot /srv;\nindex index.html;\n");
    write(&c.path("b", "www/logo.bin"), b"\x89PNG\0\0two, longer");
    c.check("b");
    let (before_a, before_b) = (c.snapshot("a"), c.snapshot("b"));

    for args in [&["-TT", file_arg][..], &["-TT", file_arg, "b"], &["-TT", "b", file_arg], &["-TT", "a", "b", file_arg]]
    {
        let d = csync2(&c, "a", args);
        assert_eq!(d.code, 0, "{args:?} differs: {}{}", d.stdout, d.stderr);
        let want = [
            format!("--- b:{file_arg}"),
            format!("+++ a:{file_arg}"),
            "-listen 8080;".into(),
            "+listen 80;".into(),
            " root /srv;".into(),
        ];
        for line in &want {
            assert!(d.stdout.lines().any(|l| l == line), "{args:?}: no line {line:?} in\n{}", d.stdout);
        }
    }

    // A binary file: both sides' kind, size, hash, time and version.
    let logo = c.path("a", "www/logo.bin");
    let d = csync2(&c, "a", &["-TT", logo.to_str().unwrap()]);
    assert_eq!(d.code, 0, "{}{}", d.stdout, d.stderr);
    assert!(d.stdout.contains("no text diff"), "{}", d.stdout);
    let sides: Vec<&str> = d.stdout.lines().filter(|l| l.starts_with("  a ") || l.starts_with("  b ")).collect();
    assert_eq!(sides.len(), 2, "{}", d.stdout);
    for s in sides {
        assert!(
            s.contains("file, ") && s.contains("content ") && s.contains("modified ") && s.contains("version "),
            "{s}"
        );
    }

    // The same under snapsync's name, as JSON.
    let (code, v) = c.json("a", &["diff", file_arg, "--peer", "b"]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["peers"][0]["peer"], "b", "{v:#}");
    assert_eq!(v["peers"][0]["same"], false, "{v:#}");
    assert!(v["peers"][0]["diff"].as_str().unwrap().contains("\n-listen 8080;\n+listen 80;\n"), "{v:#}");

    assert_eq!(c.snapshot("a"), before_a, "a's tree changed");
    assert_eq!(c.snapshot("b"), before_b, "b's tree changed");
    // A path no group includes is a usage error.
    let out = c.run("a", &["diff", "/nonexistent/elsewhere"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    // A local edit not checked yet is pointed out; the text is the file's.
    write(&file, b"listen 81;\n");
    let d = c.run("a", &["diff", file_arg]);
    assert_eq!(d.code, 3, "{}{}", d.stdout, d.stderr);
    assert!(d.stdout.contains("changed here since the last check"), "{}", d.stdout);
    assert!(d.stdout.lines().any(|l| l == "+listen 81;"), "{}", d.stdout);
}
