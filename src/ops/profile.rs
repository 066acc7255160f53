//! Wall-clock time per engine op, for `crossenc bench`'s per-op table. Off by default: a span
//! then costs one relaxed atomic load. The engine's top-level code is sequential (parallelism
//! lives inside the kernels), so spans never overlap and their times add up to the step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
/// Name, seconds, calls; in first-seen order.
static TABLE: Mutex<Vec<(&'static str, f64, usize)>> = Mutex::new(Vec::new());

pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Adds the time until it is dropped to `name`'s row.
struct Span {
    name: &'static str,
    start: Option<Instant>,
}

fn span(name: &'static str) -> Span {
    let start = ON.load(Ordering::Relaxed).then(Instant::now);
    Span { name, start }
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some(start) = self.start else { return };
        let secs = start.elapsed().as_secs_f64();
        let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        match table.iter_mut().find(|r| r.0 == self.name) {
            Some(row) => {
                row.1 += secs;
                row.2 += 1;
            }
            None => table.push((self.name, secs, 1)),
        }
    }
}

/// Rows of the per-op table: name, seconds, calls.
pub type Rows = Vec<(&'static str, f64, usize)>;

/// The rows gathered so far, clearing them.
pub fn take() -> Rows {
    std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Runs `f` inside a span named `name`.
pub fn timed<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let _span = span(name);
    f()
}
