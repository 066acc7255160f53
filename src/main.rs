//! The `crossenc` binary: the command line (`cli/`, one file per subcommand) over the library.

mod cli;

/// mimalloc keeps freed pages for reuse: training allocates and frees the same large buffers
/// every step, which glibc returns to the kernel and faults back in each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // mimalloc itself returns freed memory to the OS after 10 ms by default, and every training
    // step then faults its buffers back in (50 STS-B steps: 163K minor page faults and 7.3 s of
    // kernel time; never purging: 1K faults, 1.2 s). RSS stays at its peak instead.
    // SAFETY: called before any other thread exists, as mimalloc requires for option changes.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    cli::main()
}
