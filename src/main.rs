/// jemalloc instead of the C library's malloc: glibc's kept what the
/// daemon's threads freed in their arenas (15-25 MiB over the heap in use
/// while serving peers) and cost the receiving daemons more CPU. Measured
/// in docs/design.md ("Daemon and sessions").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (its `malloc_conf`; the
/// `_RJEM_MALLOC_CONF` environment variable still overrides them): one
/// arena and no per-thread caches, so memory one thread frees is the next
/// one's to reuse (a cache for each of the runtime's blocking threads held
/// 5-8 MiB more at the peak); freed pages go back to the system after
/// 100 ms, by jemalloc's own background thread, so an idle daemon does not
/// hold what its last sync used.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"narenas:1,tcache:false,dirty_decay_ms:100,muzzy_decay_ms:0,background_thread:true\0"[0];

fn main() -> std::process::ExitCode {
    // Before anything else, and before any thread starts: the stores are
    // private whatever umask we were started with (their database creates
    // its files itself).
    snapsync::store::restrict_umask();
    // What the C libraries allocate (TLS, zstd's contexts) still comes
    // from the C library's malloc: two arenas instead of glibc's eight per
    // core, so what one thread freed is reused by the next instead of
    // sitting resident in an arena of its own.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter and takes glibc's
    // malloc lock itself; called before the program starts threads of its
    // own.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    snapsync::cli::main()
}
