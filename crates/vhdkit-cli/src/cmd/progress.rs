//! A progress bar for `convert`, `share`, `relink` and `check`, shown only when stderr is a
//! terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// Progress shown on stderr with indicatif: the library's [`vhdkit::Progress`] for `convert`,
/// `share`, `relink` and `check`.
pub struct Bar {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar when stderr is a terminal, the output is not JSON and neither `--quiet` nor
    /// `--no-progress` was given.
    pub fn new(json: bool) -> Bar {
        Bar {
            enabled: crate::output::progress_shown(json),
            bar: None,
        }
    }
}

impl vhdkit::Progress for Bar {
    fn start(&mut self, what: &str, total: Option<u64>) {
        if !self.enabled {
            return;
        }
        let (b, tpl) = match (what, total) {
            (_, None | Some(0)) => (ProgressBar::new_spinner(), "{spinner} {msg}: {pos} disks"),
            // One bar for the whole copy, unlabelled (the command says what it converts).
            ("convert", Some(t)) => (
                ProgressBar::new(t),
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ),
            ("hash" | "flatten" | "merge" | "compact" | "move", Some(t)) => (
                ProgressBar::new(t),
                "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ),
            (_, Some(t)) => (ProgressBar::new(t), "{msg} {bar:40} {pos}/{len} eta {eta}"),
        };
        b.set_style(
            ProgressStyle::with_template(tpl).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_message(what.to_string());
        self.bar = Some(b);
    }
    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    /// A command that fails mid-phase leaves no bar behind its error message.
    fn drop(&mut self) {
        vhdkit::Progress::finish(self);
    }
}
