//! The all-reduce of a data-parallel training step, timed alone: every rank sums a buffer the
//! size of a model's gradient over the MPI world, as `crossenc train` does after each step.
//!
//!     cargo build --release --features mpi --example allreduce
//!     mpirun -np 2 target/release/examples/allreduce target/fixtures/all-MiniLM-L6-v2 20
//!
//! Arguments: a model folder (its parameter count sizes the buffer), repetitions (20). Rank 0
//! prints the best, median and worst time and the bus bandwidth (2 (n-1)/n bytes per byte).

use crossenc::{CrossEncoder, LoadOptions};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    crossenc::engine::run(work)
}

fn work() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .map_or("target/fixtures/all-MiniLM-L6-v2", String::as_str);
    let reps: usize = args.get(2).map_or(Ok(20), |s| s.parse())?;
    let group = crossenc::train::group::from_env(std::time::Duration::from_secs(600))?;
    let params = CrossEncoder::load(model, &LoadOptions::default())?
        .model()
        .weights
        .len();
    let mut grads = vec![1f32; params];
    group.all_reduce_sum(&mut grads);
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            group.barrier();
            let t = Instant::now();
            group.all_reduce_sum(&mut grads);
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    if group.rank() == 0 {
        let n = group.size() as f64;
        let bytes = (params * 4) as f64;
        let best = times[0];
        println!(
            "{{\"ranks\": {}, \"params\": {params}, \"mb\": {:.1}, \"best_s\": {best:.4}, \"median_s\": {:.4}, \"worst_s\": {:.4}, \"bus_gb_s\": {:.2}}}",
            group.size(),
            bytes / 1e6,
            times[times.len() / 2],
            times[times.len() - 1],
            bytes * 2.0 * (n - 1.0) / n / best / 1e9
        );
    }
    Ok(())
}
