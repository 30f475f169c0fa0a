fn main() -> std::process::ExitCode {
    snapsync::cli::main()
}
