/// mimalloc keeps freed pages for reuse: training allocates and frees the same large buffers
/// every step, which glibc returns to the kernel and faults back in each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    crossenc::cli::main()
}
