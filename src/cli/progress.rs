//! Progress bars for long transfers (drawn on stderr, only when it is a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A byte progress bar with a rate and an optional message (peers, say).
pub(crate) fn bytes_bar(total: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}
