//! Progress of long CLI jobs: an indicatif bar with rate and ETA on a terminal,
//! periodic plain log lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a non-terminal run logs a line.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// Progress of one job.
pub struct Progress {
    what: String,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(what: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(what.to_owned());
            bar
        });
        Progress { what: what.to_owned(), bar, started: Instant::now(), last_line: Mutex::new(Instant::now()) }
    }

    /// Reports `done` of `total` items.
    pub fn update(&self, done: i64, total: i64) {
        let (done_u, total_u) = (u64::try_from(done).unwrap_or(0), u64::try_from(total).unwrap_or(0));
        if let Some(bar) = &self.bar {
            bar.set_length(total_u);
            bar.set_position(done_u);
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() >= LINE_INTERVAL || done >= total {
            *last = Instant::now();
            let rate = done_u as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            let eta_s = if rate > 0.0 { total_u.saturating_sub(done_u) as f64 / rate } else { 0.0 };
            tracing::info!(job = %self.what, done, total, rate_per_s = rate as u64, eta_s = eta_s as u64, "progress");
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
