//! glibc's malloc, tuned once for the CPU backend's activations.
//!
//! A prefill pass allocates and frees buffers of several MiB per operation (a `[512, 4864]` f32
//! activation is 10 MiB). By default glibc serves each of those with a fresh `mmap` and gives it
//! back with `munmap` when it is freed, so every operation faults its pages in again and the
//! kernel zeroes them: about 7 % of an F16 pp512 in page faults, and 5 % in memset, under
//! `perf`. With a fixed mmap threshold of 32 MiB and a trim threshold of 64 MiB the freed
//! buffers stay in the heap and the next operation reuses them: F16 pp512 went from 194-209 to
//! 214-233 tokens/s (`govbox model bench`, alternating runs). The heap keeps at most 64 MiB free
//! at its top, and govboxd's peak RSS while serving did not change (599 MB either way).
//!
//! An operator who sets glibc's malloc tunables (`GLIBC_TUNABLES=glibc.malloc.*`,
//! `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`) keeps them: the tuning is then skipped.

/// Allocations from this size on get their own mapping (and go back to the system when freed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of the heap beyond this is given back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 64 << 20;

/// Applies the tuning once per process (later calls do nothing). Elsewhere than glibc on Linux,
/// or when the operator has set malloc tunables, it does nothing.
pub(super) fn tune() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let chosen = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
                || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
                || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
            if !chosen {
                // SAFETY: mallopt only sets allocator parameters; it is thread-safe and has no
                // memory-safety preconditions. A refused value leaves glibc's default in place.
                unsafe {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
                }
            }
        }
    });
}
