//! The master's allocator, kept small: it runs no user code, allocates little and lives for
//! months, so glibc's per-thread arenas (one per thread that ever allocated, each keeping what
//! it once held) only add resident pages that grow a little with every upgrade.
//!
//! Elsewhere (musl, other systems) these are no-ops.

/// One malloc arena for the whole process. Called only where the process is the master's alone
/// (a plain `main`; not from inside the application's own runtime, whose threads would contend
/// for it).
pub(crate) fn lean_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; M_ARENA_MAX takes a count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns freed heap pages to the system; called once an upgrade is over (the old worker gone),
/// when the pipeline's buffers, parsed responses and events have just been freed.
pub(crate) fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the amount of padding to keep and touches only the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}
