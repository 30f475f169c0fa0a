//! Packaging: the man pages and shell completions `snapsync-docs` writes,
//! and the systemd units in `contrib/systemd/`.
//!
//! The pages are generated from the clap definition, so these tests guard
//! against a command that gets no page (a new subcommand the generator
//! skips) and against units that systemd would reject or half-ignore.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory as _;

/// The visible subcommands' names, as `snapsync --help` lists them.
fn subcommand_names() -> Vec<String> {
    snapsync::cli::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_owned())
        .collect()
}

/// Runs the built `snapsync-docs` into `out`.
fn generate_docs(out: &Path) {
    let result = Command::new(env!("CARGO_BIN_EXE_snapsync-docs")).arg(out).output().expect("snapsync-docs runs");
    assert!(
        result.status.success(),
        "snapsync-docs failed ({}): {}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn snapsync_docs_writes_a_man_page_per_command_and_three_completions() {
    let dir = tempfile::tempdir().unwrap();
    generate_docs(dir.path());

    let man = dir.path().join("man");
    let main_page = read(&man.join("snapsync.1"));
    assert!(main_page.contains(".TH snapsync 1"), "snapsync.1 has no title line for snapsync");

    let subcommands = subcommand_names();
    for needed in ["sync", "restore", "serve", "check"] {
        assert!(subcommands.iter().any(|s| s == needed), "no `{needed}` among {subcommands:?}");
    }
    for sub in &subcommands {
        let page = read(&man.join(format!("snapsync-{sub}.1")));
        assert!(page.contains(&format!(".TH snapsync-{sub} 1")), "snapsync-{sub}.1 has no title line for itself");
        // The synopsis shows the command as typed.
        assert!(page.contains(&format!("snapsync {sub}")), "snapsync-{sub}.1 never shows `snapsync {sub}`");
        // The main page lists every subcommand.
        assert!(main_page.contains(&format!("snapsync\\-{sub}(1)")), "snapsync.1 does not list snapsync-{sub}(1)");
    }
    // Nothing else: no page for clap's `help`, none left over.
    let mut pages: Vec<String> =
        std::fs::read_dir(&man).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    let mut expected: Vec<String> = subcommands.iter().map(|s| format!("snapsync-{s}.1")).collect();
    expected.push("snapsync.1".to_owned());
    expected.sort();
    assert_eq!(pages, expected);

    // Each shell's file offers every subcommand, in that shell's own form
    // (a bare "sync" would match "snapsync" anywhere), and sync's --dry-run.
    let completions = dir.path().join("completions");
    for file in ["snapsync.bash", "_snapsync", "snapsync.fish"] {
        let text = read(&completions.join(file));
        for sub in &subcommands {
            assert!(text.contains(&offered(file, sub)), "{file} does not offer the `{sub}` command");
        }
        assert!(text.contains("dry-run"), "{file} does not complete sync's --dry-run");
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let units_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let units = ["snapsync.service", "snapsync-sync.service", "snapsync-sync.timer"];

    // Each unit's Documentation= names pages snapsync-docs writes.
    let docs = tempfile::tempdir().unwrap();
    generate_docs(docs.path());
    for unit in units {
        let text = read(&units_dir.join(unit));
        let doc_line = text.lines().find(|l| l.starts_with("Documentation=")).unwrap_or_else(|| {
            panic!("{unit} has no Documentation= line");
        });
        for reference in doc_line.trim_start_matches("Documentation=").split_whitespace() {
            let page = reference
                .strip_prefix("man:")
                .and_then(|r| r.strip_suffix("(1)"))
                .unwrap_or_else(|| panic!("{unit}: {reference} is not a section 1 man page"));
            assert!(docs.path().join("man").join(format!("{page}.1")).is_file(), "{unit}: no page for {reference}");
        }
    }

    let Some(analyze) = find_on_path("systemd-analyze") else {
        eprintln!("systemd-analyze is not on PATH: the units are not verified");
        return;
    };
    // verify checks that ExecStart's binary exists and is executable: point
    // it at the binary this build made instead of /usr/bin/snapsync.
    let dir = tempfile::tempdir().unwrap();
    let built = env!("CARGO_BIN_EXE_snapsync");
    let mut paths: Vec<PathBuf> = Vec::new();
    for unit in units {
        let text = read(&units_dir.join(unit));
        if unit.ends_with(".service") {
            assert!(text.contains("ExecStart=/usr/bin/snapsync "), "{unit} does not run /usr/bin/snapsync");
        }
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("ExecStart=/usr/bin/snapsync ", &format!("ExecStart={built} "))).unwrap();
        paths.push(path);
    }
    // The man pages are not installed here; their names were checked above.
    let result =
        Command::new(analyze).arg("verify").arg("--man=no").args(&paths).output().expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "systemd-analyze verify failed ({}):\n{stderr}", result.status);
    // An unknown or misspelt setting is only a warning, and the unit runs
    // without it: a sandbox with a typo is a weaker sandbox. Any message
    // fails the test.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warned:\n{stderr}");
}

/// How a shell's completion file offers the subcommand `sub`.
fn offered(file: &str, sub: &str) -> String {
    match file {
        "snapsync.bash" => format!("snapsync,{sub})"),
        "_snapsync" => format!("'{sub}:"),
        "snapsync.fish" => format!("-a \"{sub}\""),
        _ => unreachable!("no completion file {file}"),
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The README's first command is `cargo run --release -- demo`: with a
/// second binary in the package, that needs `default-run` to name snapsync.
#[test]
fn cargo_run_runs_snapsync() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(manifest.lines().any(|l| l.trim() == r#"default-run = "snapsync""#), "Cargo.toml has no default-run");
}

/// The Debian package's definition (`[package.metadata.deb]` in
/// Cargo.toml, for cargo-deb): every asset it names exists once the
/// documented steps ran (the release binary aside, which `cargo deb`
/// builds itself), the man pages and completions land where Debian's
/// tools look, and the maintainer scripts that offer snapsync as the
/// `csync2` alternative are executable shell scripts.
#[test]
fn the_debian_package_names_files_that_exist() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let meta = Command::new(cargo)
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1"])
        .current_dir(root)
        .output()
        .expect("cargo metadata runs");
    assert!(meta.status.success(), "{}", String::from_utf8_lossy(&meta.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    let deb = &meta["packages"][0]["metadata"]["deb"];
    let assets = deb["assets"].as_array().expect("assets listed");

    // The generated files, as `snapsync-docs target/docs` writes them.
    let docs = tempfile::tempdir().unwrap();
    generate_docs(docs.path());
    let mut dests = Vec::new();
    for asset in assets {
        let [source, dest, mode] = [0, 1, 2].map(|i| asset[i].as_str().expect("three strings").to_owned());
        assert!(mode == "644" || mode == "755", "{source}: mode {mode}");
        dests.push(dest.clone());
        if source == "target/release/snapsync" {
            continue;
        }
        let found: Vec<PathBuf> = match source.strip_prefix("target/docs/") {
            Some(rest) => match rest.strip_suffix("*.1") {
                Some(dir) => std::fs::read_dir(docs.path().join(dir))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|x| x == "1"))
                    .collect(),
                None => vec![docs.path().join(rest)],
            },
            None => vec![root.join(&source)],
        };
        assert!(!found.is_empty(), "{source} matches nothing");
        for f in found {
            assert!(f.is_file(), "the package's asset {source} is not there ({})", f.display());
        }
    }
    for needed in [
        "usr/bin/",
        "usr/share/man/man1/",
        "usr/share/bash-completion/completions/snapsync",
        "usr/share/zsh/vendor-completions/",
        "usr/share/fish/vendor_completions.d/",
        "lib/systemd/system/",
    ] {
        assert!(dests.iter().any(|d| d == needed), "nothing is installed to {needed}");
    }

    let scripts = root.join(deb["maintainer-scripts"].as_str().expect("maintainer scripts named"));
    for script in ["postinst", "prerm"] {
        let path = scripts.join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert!(mode & 0o111 != 0, "{} is not executable", path.display());
        let text = read(&path);
        assert!(text.contains("update-alternatives") && text.contains("csync2"), "{script} manages the csync2 link");
        let check = Command::new("sh").arg("-n").arg(&path).output().expect("sh runs");
        assert!(check.status.success(), "{script}: {}", String::from_utf8_lossy(&check.stderr));
    }
}
