//! snapsync-docs: writes snapsync's man pages and shell completions.
//!
//! `snapsync-docs OUT_DIR` writes, from the same clap definition the
//! `snapsync` binary parses with ([`snapsync::cli::Cli`]):
//!
//! - `OUT_DIR/man/snapsync.1` and one page per subcommand,
//!   `snapsync-SUBCOMMAND.1` (roff, section 1), with clap_mangen;
//! - `OUT_DIR/completions/snapsync.bash`, `_snapsync` (zsh) and
//!   `snapsync.fish`, with clap_complete.
//!
//! Generated rather than committed, so a new flag cannot leave the pages
//! behind. README.md, "Install", says where the files go.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out_dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: snapsync-docs OUT_DIR");
        return ExitCode::from(snapsync::cli::EXIT_USAGE);
    };
    match write_all(Path::new(&out_dir)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("snapsync-docs: {e:#}");
            ExitCode::from(snapsync::cli::EXIT_FAILURE)
        }
    }
}

/// Writes the man pages and completions below `out_dir` and returns the
/// files written.
fn write_all(out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();

    let man_dir = out_dir.join("man");
    std::fs::create_dir_all(&man_dir).with_context(|| format!("creating {}", man_dir.display()))?;
    // `help` is clap's, not ours: its page would only repeat `--help`.
    let mut cmd = snapsync::cli::Cli::command().disable_help_subcommand(true);
    // Building names each subcommand `snapsync-SUB`, the page's title and
    // file name.
    cmd.build();
    let source = format!("snapsync {}", env!("CARGO_PKG_VERSION"));
    write_man_pages(&cmd, &man_dir, &source, &mut written)?;

    let completions_dir = out_dir.join("completions");
    std::fs::create_dir_all(&completions_dir).with_context(|| format!("creating {}", completions_dir.display()))?;
    let mut cmd = snapsync::cli::Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, "snapsync", &completions_dir)
            .with_context(|| format!("writing the {shell} completions in {}", completions_dir.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// One page for `cmd` and one for each of its visible subcommands, at any
/// depth. Every page carries the package's version in its footer (clap only
/// gives the top-level command a version).
fn write_man_pages(
    cmd: &clap::Command,
    man_dir: &Path,
    source: &str,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let page = clap_mangen::Man::new(cmd.clone()).source(source).manual("snapsync");
    let path = page.generate_to(man_dir).with_context(|| format!("writing {}", page.get_filename()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, man_dir, source, written)?;
    }
    Ok(())
}
