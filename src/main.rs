fn main() -> std::process::ExitCode {
    crossenc::cli::main()
}
