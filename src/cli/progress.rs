//! Progress bars on a terminal: the command line's [`ProgressSink`], for
//! work done here and for work the daemon does for this command.

use crate::progress::{ProgressSink, ProgressTask, Unit};

/// Draws each piece of long work as an indicatif bar on stderr (a spinner
/// when its length is not known), cleared when the work ends. Pieces that
/// run at once (one per peer) get a line each.
pub(super) struct Bars(indicatif::MultiProgress);

impl Bars {
    pub(super) fn new() -> Self {
        Bars(indicatif::MultiProgress::new())
    }
}

impl ProgressSink for Bars {
    fn start(&self, what: &str, len: Option<u64>, unit: Unit) -> Box<dyn ProgressTask> {
        let template = match (len, unit) {
            (Some(_), Unit::Items) => "{spinner} {msg} {human_pos}/{human_len} [{elapsed}] {wide_bar}",
            (None, Unit::Items) => "{spinner} {msg} {human_pos} [{elapsed}]",
            (Some(_), Unit::Bytes) => {
                "{spinner} {msg} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} [{elapsed}] {wide_bar}"
            }
            (None, Unit::Bytes) => "{spinner} {msg} {bytes} {binary_bytes_per_sec} [{elapsed}]",
        };
        let style = indicatif::ProgressStyle::with_template(template).expect("the templates are valid");
        let bar = match len {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let bar = self.0.add(bar.with_style(style).with_message(what.to_owned()));
        // Drawn at once, so that even short work shows.
        bar.tick();
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Box::new(Bar(bar))
    }
}

/// One bar; cleared when dropped.
struct Bar(indicatif::ProgressBar);

impl ProgressTask for Bar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
