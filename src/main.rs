fn main() -> std::process::ExitCode {
    // Before anything else, and before any thread starts: the stores are
    // private whatever umask we were started with (their database creates
    // its files itself).
    snapsync::store::restrict_umask();
    // Two malloc arenas instead of glibc's eight per core: the daemon's
    // threads share them, so what one burst of work freed is reused by the
    // next instead of sitting resident in an arena of its own.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    snapsync::cli::main()
}
