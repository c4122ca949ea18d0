//! Progress bars on stderr, drawn only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` units; `bytes` formats the counts as sizes.
pub(crate) fn bar(total: u64, message: &str, bytes: bool) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let counts = if bytes {
        "{bytes}/{total_bytes} ({bytes_per_sec})"
    } else {
        "{human_pos}/{human_len} ({per_sec})"
    };
    let style = ProgressStyle::with_template(&format!(
        "{{msg}} [{{elapsed_precise}}] {{wide_bar}} {counts} eta {{eta}}"
    ))
    .expect("valid template");
    let bar = ProgressBar::with_draw_target(Some(total), target).with_style(style);
    bar.set_message(message.to_owned());
    bar
}
