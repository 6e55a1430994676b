//! A progress bar for `share` and `relink`, shown only when stderr is a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// Progress shown on stderr with indicatif.
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

impl vhdkit::share::Progress for Bar {
    fn phase(&mut self, name: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let (b, tpl) = match (name, total) {
            (_, 0) => (ProgressBar::new_spinner(), "{spinner} {msg}: {pos} disks"),
            ("hash", t) => (
                ProgressBar::new(t),
                "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ),
            (_, t) => (ProgressBar::new(t), "{msg} {bar:40} {pos}/{len} eta {eta}"),
        };
        b.set_style(
            ProgressStyle::with_template(tpl).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_message(name.to_string());
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
