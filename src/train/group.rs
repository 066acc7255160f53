//! The processes a training run is split over. One process (`Single`) is the default; under
//! `mpirun` or `srun`, with the `mpi` feature, every rank trains on its share of each global
//! batch and the ranks sum their gradients ([`Group::all_reduce_sum`]) before the same AdamW
//! step, so that the run follows a single process's (see [`super::train`]). The ranks check
//! at the start that they were started alike ([`agree`]), and a rank that waits for the others
//! longer than the rank timeout ends the job rather than hang with it.

use anyhow::{bail, Result};
use std::time::Duration;

/// The processes of one training run.
pub trait Group {
    /// This process's index, `0..size`; rank 0 evaluates, logs and writes.
    fn rank(&self) -> usize;
    /// Processes in the group.
    fn size(&self) -> usize;
    /// Sums `buf` element-wise over every process, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Sums `x` over every process.
    fn sum(&self, x: f64) -> f64;
    /// Every process's `x` (the same length on each), concatenated in rank order.
    fn all_gather(&self, x: &[u32]) -> Vec<u32>;
    /// Waits until every process reaches it.
    fn barrier(&self);
    /// Ends every process of the job with `code` (after an error on this one), so that none
    /// waits forever for it.
    fn abort(&self, code: i32) -> !;
}

impl std::fmt::Debug for dyn Group {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.rank(), self.size())
    }
}

/// A run of one process.
pub struct Single;

impl Group for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) {}
    fn sum(&self, x: f64) -> f64 {
        x
    }
    fn all_gather(&self, x: &[u32]) -> Vec<u32> {
        x.to_vec()
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The environment variables that MPI launchers set in every rank, with the world's size:
/// OpenMPI's mpirun, MPICH's Hydra (and PMI-2), Slurm's srun (for the tasks of a step; a batch
/// script alone is one task).
const LAUNCHER_SIZE: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"];

/// The launcher's world size, if this process was started by one.
fn launched_size() -> Option<usize> {
    LAUNCHER_SIZE
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// The group this process belongs to: an MPI world when an MPI launcher started several
/// processes (and crossenc was built with the `mpi` feature), else a single process.
/// `rank_timeout` bounds how long a rank waits for the others at any one exchange; past it,
/// the rank reports which exchange it waited at and exits, and the launcher ends the job.
pub fn from_env(rank_timeout: Duration) -> Result<Box<dyn Group>> {
    match launched_size() {
        Some(n) if n > 1 => world(n, rank_timeout),
        _ => Ok(Box::new(Single)),
    }
}

/// Fails, on every rank alike, where a rank's `facts` (named checksums) differ from rank 0's.
/// Ranks started with different builds, arguments, files or checkpoints would otherwise sum
/// the gradients of different runs without a word, or wait for each other forever.
pub fn agree(group: &dyn Group, facts: &[(&str, u32)]) -> Result<()> {
    // A different build may check other facts: compare their number first.
    let counts = group.all_gather(&[facts.len() as u32]);
    if let Some(rank) = counts.iter().position(|&c| c != counts[0]) {
        bail!(
            "rank {rank} of {} runs a different crossenc build than rank 0: start every rank with the same executable",
            group.size()
        );
    }
    let crcs: Vec<u32> = facts.iter().map(|f| f.1).collect();
    let all = group.all_gather(&crcs);
    for (rank, theirs) in all.chunks(facts.len()).enumerate().skip(1) {
        if let Some(i) = (0..facts.len()).find(|&i| theirs[i] != all[i]) {
            bail!(
                "rank {rank} of {} differs from rank 0 in its {}: start every rank with the same executable, arguments and files",
                group.size(),
                facts[i].0
            );
        }
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn world(n: usize, _: Duration) -> Result<Box<dyn Group>> {
    anyhow::bail!(
        "started as one of {n} MPI processes, but this crossenc was built without MPI: build it with `cargo build --release --features mpi` (needs OpenMPI or MPICH and clang)"
    )
}

#[cfg(feature = "mpi")]
fn world(_: usize, rank_timeout: Duration) -> Result<Box<dyn Group>> {
    Ok(Box::new(mpi_world::Mpi::init(rank_timeout)?))
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use super::Group;
    use anyhow::{Context, Result};
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use std::cell::RefCell;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    /// An MPI world (`MPI_COMM_WORLD`); finalized when dropped.
    pub struct Mpi {
        world: SimpleCommunicator,
        /// The send buffer of an all-reduce (MPI does not reduce a buffer into itself here).
        scratch: RefCell<Vec<f32>>,
        watchdog: Watchdog,
        universe: Option<Universe>,
    }

    impl Mpi {
        pub fn init(rank_timeout: Duration) -> Result<Self> {
            let universe = mpi::initialize().context("MPI is already initialized")?;
            let world = universe.world();
            let (rank, size) = (world.rank(), world.size());
            Ok(Mpi {
                world,
                scratch: RefCell::new(Vec::new()),
                watchdog: Watchdog::start(rank, size, rank_timeout)?,
                universe: Some(universe),
            })
        }
    }

    impl Group for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) {
            let mut send = self.scratch.borrow_mut();
            send.clear();
            send.extend_from_slice(buf);
            self.watchdog.wait("the gradient sum", || {
                self.world
                    .all_reduce_into(&send[..], buf, SystemOperation::sum())
            });
        }
        fn sum(&self, x: f64) -> f64 {
            let mut total = 0f64;
            self.watchdog.wait("the loss sum", || {
                self.world
                    .all_reduce_into(&x, &mut total, SystemOperation::sum())
            });
            total
        }
        fn all_gather(&self, x: &[u32]) -> Vec<u32> {
            let mut all = vec![0u32; x.len() * self.size()];
            self.watchdog.wait("the start-up check", || {
                self.world.all_gather_into(x, &mut all[..])
            });
            all
        }
        fn barrier(&self) {
            self.watchdog.wait("a barrier", || self.world.barrier());
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }

    impl Drop for Mpi {
        fn drop(&mut self) {
            // MPI_Finalize waits for every rank.
            let universe = self.universe.take();
            self.watchdog.wait("the end of the run", || drop(universe));
        }
    }

    /// Ends this process when one exchange with the other ranks has waited longer than the
    /// rank timeout. A rank that hangs (stopped, deadlocked, its node frozen) holds the others
    /// inside MPI, where no error reaches them; a rank that exits instead makes the launcher
    /// end the whole job.
    struct Watchdog {
        /// The exchange in progress and when it began.
        waiting: Arc<Mutex<Option<(Instant, &'static str)>>>,
    }

    impl Watchdog {
        fn start(rank: i32, size: i32, timeout: Duration) -> Result<Self> {
            let waiting = Arc::new(Mutex::new(None::<(Instant, &'static str)>));
            let seen = waiting.clone();
            let tick = (timeout / 4).min(Duration::from_secs(1));
            std::thread::Builder::new()
                .name("rank-timeout".into())
                .spawn(move || loop {
                    std::thread::sleep(tick);
                    let now = *seen.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some((_, what)) = now.filter(|(t, _)| t.elapsed() > timeout) {
                        eprintln!(
                            "error on rank {rank} of {size}: waited {} s for the other ranks at {what}: one of them is stopped, hung or far slower (see its output); if rank 0 evaluates or saves for longer than that, raise {set_timeout}",
                            timeout.as_secs(),
                            set_timeout = crate::setting::Setting::RankTimeout
                        );
                        // Not `exit`: its handlers could wait on MPI, where the main thread is.
                        unsafe { libc::_exit(1) }
                    }
                })
                .context("cannot start the rank-timeout thread")?;
            Ok(Watchdog { waiting })
        }

        /// Runs the exchange `what` under the timeout.
        fn wait<T>(&self, what: &'static str, exchange: impl FnOnce() -> T) -> T {
            let set = |v| *self.waiting.lock().unwrap_or_else(PoisonError::into_inner) = v;
            set(Some((Instant::now(), what)));
            let out = exchange();
            set(None);
            out
        }
    }
}
