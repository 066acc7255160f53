//! The processes a training run is split over. One process (`Single`) is the default; under
//! `mpirun` or `srun`, with the `mpi` feature, every rank trains on its share of each global
//! batch and the ranks sum their gradients ([`Group::all_reduce_sum`]) before the same AdamW
//! step, so that the run follows a single process's (see [`super::train`]).

use anyhow::Result;

/// The processes of one training run.
pub trait Group {
    /// This process's index, `0..size`; rank 0 evaluates, logs and writes.
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sums `buf` element-wise over every process, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Sums `x` over every process.
    fn sum(&self, x: f64) -> f64;
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
pub fn from_env() -> Result<Box<dyn Group>> {
    match launched_size() {
        Some(n) if n > 1 => world(n),
        _ => Ok(Box::new(Single)),
    }
}

#[cfg(not(feature = "mpi"))]
fn world(n: usize) -> Result<Box<dyn Group>> {
    anyhow::bail!(
        "started as one of {n} MPI processes, but this crossenc was built without MPI: build it with `cargo build --release --features mpi` (needs OpenMPI or MPICH and clang)"
    )
}

#[cfg(feature = "mpi")]
fn world(_: usize) -> Result<Box<dyn Group>> {
    Ok(Box::new(mpi_world::Mpi::init()?))
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

    /// An MPI world (`MPI_COMM_WORLD`); finalized when dropped.
    pub struct Mpi {
        world: SimpleCommunicator,
        /// The send buffer of an all-reduce (MPI does not reduce a buffer into itself here).
        scratch: RefCell<Vec<f32>>,
        _universe: Universe,
    }

    impl Mpi {
        pub fn init() -> Result<Self> {
            let universe = mpi::initialize().context("MPI is already initialized")?;
            Ok(Mpi {
                world: universe.world(),
                scratch: RefCell::new(Vec::new()),
                _universe: universe,
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
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
        fn sum(&self, x: f64) -> f64 {
            let mut total = 0f64;
            self.world
                .all_reduce_into(&x, &mut total, SystemOperation::sum());
            total
        }
        fn barrier(&self) {
            self.world.barrier();
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}
