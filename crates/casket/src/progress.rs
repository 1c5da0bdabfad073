//! Progress bars on stderr, drawn only when stderr is a terminal.

use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar counting items, with bytes done and total as its message.
pub struct Bar {
    bar: ProgressBar,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
}

impl Bar {
    /// A bar labelled `what` (e.g. "capture"); hidden when `quiet` or stderr is not a terminal.
    pub fn new(what: &str, quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        let style =
            ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.to_owned());
        Bar {
            bar,
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn show_bytes(&self, done: u64) {
        let total = self.bytes_total.load(Ordering::Relaxed);
        self.bar
            .set_message(format!("items, {} of {}", BinaryBytes(done), BinaryBytes(total)));
    }
}

impl casket_tree::Progress for Bar {
    fn start(&self, items: u64, bytes: u64) {
        self.bar.set_length(items);
        self.bytes_total.store(bytes, Ordering::Relaxed);
        self.show_bytes(0);
    }

    fn advance(&self, items: u64, bytes: u64) {
        self.bar.inc(items);
        let done = self.bytes_done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.show_bytes(done);
    }
}
