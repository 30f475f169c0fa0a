fn main() -> std::process::ExitCode {
    // Before anything else, and before any thread starts: the stores are
    // private whatever umask we were started with (their database creates
    // its files itself).
    snapsync::store::restrict_umask();
    snapsync::cli::main()
}
