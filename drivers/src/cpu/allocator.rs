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
//! A model's load leaves freed memory behind in the heap: the GGUF's parsed metadata (every
//! vocabulary string and merge), the tokenizer's build, staging copies. Those blocks sit between
//! live ones, so no trim threshold gives them back and the activations, megabytes each, do not
//! fit in them; in a thread's own arena (govboxd loads on a scoped thread) glibc never trims at
//! all. [`give_back_freed_memory`] returns their pages once the load is over: the 7B Q4_K_M
//! file's `govbox model bench` peak fell by about 16 MB in one pair of runs, and `malloc_trim` took back 20-40 MB
//! from a 1.5B Q8_0 run (probed with gdb on a running process).
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

/// Gives the whole free pages of every malloc arena back to the system (glibc's
/// `malloc_trim(0)`), for a caller that has just freed a lot that will not be allocated again
/// soon, such as a model's load (see the module documentation). Freed pages that are used again
/// fault back in as zeros. Elsewhere than glibc on Linux it does nothing.
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages of free chunks to the kernel; it takes the
    // arenas' locks itself and has no memory-safety preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
