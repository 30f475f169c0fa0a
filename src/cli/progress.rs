//! Progress bars on a terminal: the command line's [`ProgressSink`].

use crate::progress::{ProgressSink, ProgressTask};

/// Draws each piece of long work as an indicatif bar on stderr (a spinner
/// when its length is not known), cleared when the work ends.
pub(super) struct Bars;

impl ProgressSink for Bars {
    fn start(&self, what: &str, len: Option<u64>) -> Box<dyn ProgressTask> {
        let bar = match len {
            Some(n) => indicatif::ProgressBar::new(n).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} {human_pos}/{human_len} [{elapsed}] {wide_bar}",
                )
                .expect("the template is valid"),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} {human_pos} [{elapsed}]")
                    .expect("the template is valid"),
            ),
        };
        bar.set_message(what.to_owned());
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
