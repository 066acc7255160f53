//! How long work reports progress: the library calls a [`Progress`] and never draws or prints
//! on its own; the CLI implements it with a terminal bar.

/// Receives the progress of training, indexing or scoring. Every method has a default that
/// does nothing, so an implementation picks what it shows.
pub trait Progress: Send + Sync {
    /// Work of `total` units begins, `done` of them already done (a resumed run).
    fn start(&self, _total: u64, _done: u64) {}
    /// `done` units are done; `status` says how it goes (training: epoch, loss, lr).
    fn update(&self, _done: u64, _status: &str) {}
    /// A periodic log line (training's every `log_steps`), which a bar may leave out.
    fn log(&self, _line: &str) {}
    /// A line to keep: an evaluation's metrics, which model was kept, a resumed run.
    fn report(&self, _line: &str) {}
    /// The work is over.
    fn finish(&self) {}
    /// Whether the front end asks the work to stop (Ctrl-C in Python, where the process goes
    /// on). Training asks after every step and stops with [`Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// The error of work stopped because its [`Progress`] asked: nothing half-written is left (a
/// training run's output holds what its last evaluation saved).
#[derive(Debug, thiserror::Error)]
#[error("stopped on request")]
pub struct Cancelled;

impl std::fmt::Debug for dyn Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("dyn Progress")
    }
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}

/// Log and report lines on standard output, as a script or a log file wants them.
pub struct Lines;

impl Progress for Lines {
    fn log(&self, line: &str) {
        println!("{line}");
    }
    fn report(&self, line: &str) {
        println!("{line}");
    }
}
