//! Progress bars on a terminal: the command line's [`ProgressSink`], for
//! work done here and for work the daemon does for this command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::progress::{ProgressSink, ProgressTask, Unit};

/// The bars of this process, once it draws any: log lines are written
/// around them ([`LogWriter`]).
static SHOWN: OnceLock<indicatif::MultiProgress> = OnceLock::new();

/// Draws each piece of long work as an indicatif bar on stderr (a spinner
/// when its length is not known), cleared when the work ends. Pieces that
/// run at once (one per peer) get a line each.
pub(super) struct Bars(indicatif::MultiProgress);

impl Bars {
    pub(super) fn new() -> Self {
        Bars(SHOWN.get_or_init(indicatif::MultiProgress::new).clone())
    }
}

/// Stderr for log lines: while bars are drawn, each line is written with
/// the bars taken off the screen and drawn again below it, so that a
/// warning during a sync is not torn up by a bar.
pub(super) struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match SHOWN.get() {
            Some(bars) => bars.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl ProgressSink for Bars {
    fn start(&self, what: &str, len: Option<u64>, unit: Unit) -> Box<dyn ProgressTask> {
        let template = match (len, unit) {
            (Some(_), Unit::Items) => "{spinner} {msg} {human_pos}/{human_len}{read} [{elapsed}] {wide_bar}",
            (None, Unit::Items) => "{spinner} {msg} {human_pos}{read} [{elapsed}]",
            (Some(_), Unit::Bytes) => {
                "{spinner} {msg} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} [{elapsed}] {wide_bar}"
            }
            (None, Unit::Bytes) => "{spinner} {msg} {bytes} {binary_bytes_per_sec} [{elapsed}]",
        };
        let read = Arc::new(AtomicU64::new(0));
        let shown = Arc::clone(&read);
        let style = indicatif::ProgressStyle::with_template(template).expect("the templates are valid").with_key(
            "read",
            move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let n = shown.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = write!(w, ", {} read", indicatif::HumanBytes(n));
                }
            },
        );
        let bar = match len {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let bar = self.0.add(bar.with_style(style).with_message(what.to_owned()));
        // Drawn at once, so that even short work shows.
        bar.tick();
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Box::new(Bar { bar, read })
    }
}

/// One bar; cleared when dropped.
struct Bar {
    bar: indicatif::ProgressBar,
    /// Bytes read, for work counted in items.
    read: Arc<AtomicU64>,
}

impl ProgressTask for Bar {
    fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    fn read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
