//! Calls into libc that have no safe wrapper.

/// Returns memory the allocator holds but no one uses (free chunks in glibc's arenas,
/// left by bursts such as image unpacking) to the kernel. A no-op on other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no
    // pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
