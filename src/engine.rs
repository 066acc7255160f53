//! The engine's process-wide set-up, which its speed depends on: one call, [`run`], around a
//! program's work (the CLI's every command, the examples, the Python module).

use std::sync::Once;

/// Runs `f` with the engine set up as it runs fastest: candle's element-wise ops without the
/// spinning worker threads of their own that it would start beside rayon's (measured: a MiniLM
/// training step 0.81 s with them, 0.68 s without, on 2 cores), and one rayon pool (candle's,
/// sized to the cores) for gemm, candle's ops and crossenc's kernels. Call it first, before the
/// program starts threads of its own (it sets `CANDLE_NUM_THREADS=1` unless already set), and
/// put the program's whole work inside it: work outside runs on rayon's global pool instead.
///
/// The allocator is the program's choice: crossenc's binary uses mimalloc with purging off
/// (`src/main.rs`), which keeps a training step from faulting its buffers back in each time.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static CANDLE_THREADS: Once = Once::new();
    CANDLE_THREADS.call_once(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
    candle_core::Device::Cpu.with_context(f)
}

#[cfg(test)]
mod tests {
    /// The work runs on a rayon worker of candle's pool, with candle's own spinning threads
    /// turned off unless the environment chose their number first.
    #[test]
    fn work_runs_on_one_pool_with_candles_spinners_off() {
        let before = std::env::var("CANDLE_NUM_THREADS").ok();
        let (worker, threads) = super::run(|| {
            let threads = std::env::var("CANDLE_NUM_THREADS").ok();
            (rayon::current_thread_index(), threads)
        });
        assert!(worker.is_some(), "the work ran outside rayon's workers");
        assert_eq!(threads, Some(before.unwrap_or_else(|| "1".into())));
    }
}
