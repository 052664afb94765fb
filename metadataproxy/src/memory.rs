//! Giving freed memory back to the system after a large, passing peak (a full resynchronisation
//! of thousands of containers builds the new index while the old one still stands): glibc's
//! allocator otherwise keeps every arena at its high-water mark for the life of the daemon.
#![allow(
    unsafe_code,
    reason = "malloc_trim is a plain libc call with no pointer arguments"
)]

/// Returns the free pages of every malloc arena to the system (glibc's `malloc_trim`); nothing
/// with another C library.
pub fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: no arguments but a size; it only walks the allocator's own free lists, under the
    // allocator's locks, and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
