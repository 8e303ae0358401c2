//! Progress of long steps (download, decrypt): a bar on a terminal, a log line at start and end otherwise
//! (the journal and CI logs get no control characters).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
}

impl Progress {
    /// Starts a step of `total` bytes: a bar when stderr is a terminal, else a log line.
    pub fn start(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style =
                ProgressStyle::with_template("{msg:<12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .map(|s| s.progress_chars("=> "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(what.to_string());
            bar
        });
        if bar.is_none() {
            tracing::info!(bytes = total, "{what}: started");
        }
        Progress { bar, what: what.to_string() }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    pub fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None => tracing::info!("{}: done", self.what),
        }
    }
}
