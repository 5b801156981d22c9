//! Timing of the phases of a hot path, as `ledger_phase_seconds{path, phase, size}`
//! histograms: where the time of one writer batch goes, measured in production, not
//! only under a profiler.

use std::time::Instant;

/// The running phase of `path`; [`Phases::next`] records it and starts the next.
pub struct Phases {
    path: &'static str,
    /// How many commands the batch holds, as a class: `1`, `2-63` or `64+`.
    size: &'static str,
    started: Instant,
}

impl Phases {
    pub fn start(path: &'static str, commands: usize) -> Phases {
        let size = match commands {
            0 | 1 => "1",
            2..64 => "2-63",
            _ => "64+",
        };
        Phases { path, size, started: Instant::now() }
    }

    /// Records the time since the last phase began as `finished`, and starts the next.
    pub fn next(self, finished: &'static str) -> Phases {
        let now = Instant::now();
        metrics::histogram!("ledger_phase_seconds", "path" => self.path, "phase" => finished, "size" => self.size)
            .record(now.duration_since(self.started).as_secs_f64());
        Phases { started: now, ..self }
    }
}
