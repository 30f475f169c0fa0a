//! Where log lines go, and how they are written.
//!
//! Terms:
//! - A *sink* is where the lines go: stderr (every command, and `serve` by
//!   default), the system journal (`serve --log journal`) or a file
//!   (`serve --log FILE`, appended to).
//! - *Escaping*: every sink gets each message and field value escaped as
//!   [`output::escape`] does. Errors and audit lines name paths a peer
//!   chose, and those must reach neither a terminal nor a log reader
//!   (`journalctl`, `tail -f`) raw.
//!
//! The daemon's lines carry a UTC timestamp (the journal stamps its own);
//! `RUST_LOG` overrides the levels `-v` and `-q` choose. A log file is
//! reopened on SIGHUP ([`reopen`]), so logrotate can move it away.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::output;

/// Where the daemon's log lines go (`serve --log`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LogSink {
    /// Standard error, as every other command.
    #[default]
    Stderr,
    /// The system journal; stderr, with a warning, when it is not there.
    Journal,
    /// Appended to this file.
    File(PathBuf),
}

impl LogSink {
    /// Parses `--log`'s value: `journal`, `stderr`, or a file path (write
    /// `./journal` for a file of that name).
    pub fn parse(s: &str) -> Result<LogSink, String> {
        match s {
            "" => Err("an empty value: give journal, stderr or a file path".into()),
            "journal" => Ok(LogSink::Journal),
            "stderr" => Ok(LogSink::Stderr),
            path => Ok(LogSink::File(PathBuf::from(path))),
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file cannot be opened for appending.
    #[error("cannot open the log file {}: {why}", output::escape_path(path))]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// Installs the global subscriber: lines at the levels `quiet`, `verbose`
/// and `RUST_LOG` choose, to `sink`. Stderr lines carry a timestamp only
/// for the daemon (`daemon`).
pub fn init(quiet: bool, verbose: u8, daemon: bool, sink: &LogSink) -> Result<(), LogError> {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) if daemon => "warn,audit=info,snapsync::daemon=info,snapsync::engine::actions=info",
        (false, 0) => "warn,audit=info",
        (false, 1) => "info,snapsync=debug",
        (false, _) => "debug,snapsync=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        // A message's Debug form is its text; other fields are `name=value`.
        let text = format!("{value:?}");
        if field.name() == "message" {
            write!(w, "{}", output::escape(&text))
        } else {
            write!(w, "{}={}", field.name(), output::escape(&text))
        }
    })
    .delimited(" ");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).fmt_fields(fields).with_target(false);
    match sink {
        LogSink::Stderr => {
            // Written around the progress bars a command draws.
            let builder = builder
                .with_writer(|| super::progress::LogWriter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            let _ = if daemon { builder.try_init() } else { builder.without_time().try_init() };
        }
        LogSink::File(path) => {
            let file = Arc::new(LogFile { path: path.clone(), file: Mutex::new(open_log_file(path)?) });
            if builder.with_writer(Arc::clone(&file)).with_ansi(false).try_init().is_ok() {
                let _ = LOG_FILE.set(file);
            }
        }
        LogSink::Journal => match tracing_journald::layer() {
            Ok(journal) => {
                let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
                let journal = journal.with_syslog_identifier("snapsync".into());
                let _ = tracing_subscriber::registry().with(filter).with(Escaped(journal)).try_init();
            }
            Err(e) => {
                let builder = builder
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
                let _ = builder.try_init();
                tracing::warn!("the system journal cannot be reached ({e}); logging to stderr instead");
            }
        },
    }
    Ok(())
}

/// The log file of `serve --log FILE`: its path, to reopen it, and the
/// file lines are appended to now.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// The process's log file, once logging to one is set up.
static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

impl std::io::Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// Whether this process logs to a file (`serve --log FILE`).
pub fn logs_to_file() -> bool {
    LOG_FILE.get().is_some()
}

/// Opens the log file's path again and appends to the new file from now
/// on (after logrotate has moved the old one away); the old file stays in
/// use when the path cannot be opened.
pub fn reopen() -> Result<(), LogError> {
    let Some(log) = LOG_FILE.get() else { return Ok(()) };
    let file = open_log_file(&log.path)?;
    *log.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
    Ok(())
}

/// Opens the daemon's log file for appending: created 0640 if missing,
/// never through a symbolic link planted at its path (the daemon runs as
/// root and would append to whatever the link names).
fn open_log_file(path: &Path) -> Result<File, LogError> {
    let fail = |why: String| LogError::File { path: path.to_path_buf(), why };
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => fail("it is a symbolic link; refusing to follow it".into()),
            _ => fail(e.to_string()),
        })?;
    let md = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !md.is_file() {
        return Err(fail("not a regular file".into()));
    }
    Ok(file)
}

/// A layer that hands `L` every event with its fields escaped, for
/// layers that write fields themselves (the journal's) and take no field
/// formatter. snapsync records no spans, so span fields pass unchanged.
struct Escaped<L>(L);

impl<S, L> tracing_subscriber::Layer<S> for Escaped<L>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: tracing_subscriber::Layer<S>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn on_record(
        &self,
        span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_record(span, values, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_close(id, ctx);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        let mut texts = EscapedFields(vec![None; meta.fields().len()]);
        event.record(&mut texts);
        let shown: Vec<Option<tracing::field::DisplayValue<&str>>> =
            texts.0.iter().map(|t| t.as_deref().map(tracing::field::display)).collect();
        let values: Vec<Option<&dyn tracing::Value>> =
            shown.iter().map(|v| v.as_ref().map(|v| v as &dyn tracing::Value)).collect();
        // `value_set_all` is how `tracing`'s own macros build a full set of
        // values; every field of the event's metadata gets one here.
        let set = meta.fields().value_set_all(&values);
        let escaped = tracing::Event::new_child_of(event.parent().cloned(), meta, &set);
        self.0.on_event(&escaped, ctx);
    }
}

/// Each field's value as text, escaped, by field index.
struct EscapedFields(Vec<Option<String>>);

impl Visit for EscapedFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if let Some(slot) = self.0.get_mut(field.index()) {
            *slot = Some(output::escape(&format!("{value:?}")).into_owned());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(slot) = self.0.get_mut(field.index()) {
            *slot = Some(output::escape(value).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_values_parse() {
        assert_eq!(LogSink::parse("journal"), Ok(LogSink::Journal));
        assert_eq!(LogSink::parse("stderr"), Ok(LogSink::Stderr));
        assert_eq!(LogSink::parse("/var/log/snapsync.log"), Ok(LogSink::File("/var/log/snapsync.log".into())));
        assert_eq!(LogSink::parse("./journal"), Ok(LogSink::File("./journal".into())));
        assert!(LogSink::parse("").is_err());
    }

    /// Records the fields of every event it sees, as the journal's layer
    /// would write them.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct Fields<'a>(&'a mut Vec<String>);
            impl Visit for Fields<'_> {
                fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                    self.0.push(format!("{}={value:?}", field.name()));
                }
            }
            event.record(&mut Fields(&mut self.0.lock().unwrap()));
        }
    }

    #[test]
    fn the_journal_gets_escaped_fields() {
        let seen = Capture::default();
        let subscriber = tracing_subscriber::registry().with(Escaped(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let path = "evil\x1b[2J\nname";
            tracing::warn!(peer = "b\r", "cannot apply {path}");
        });
        let seen = seen.0.lock().unwrap();
        assert_eq!(*seen, ["message=cannot apply evil\\x1b[2J\\nname", "peer=b\\r"]);
    }

    #[test]
    fn a_link_at_the_log_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("snapsync.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_log_file(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }

    #[test]
    fn a_new_log_file_is_not_readable_by_others() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapsync.log");
        open_log_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o007, 0);
    }
}
