//! Pinning the CPU backend's workers to cores (Linux only; elsewhere nothing is pinned).
//!
//! Worker `i` of a pool of `threads` is pinned to the `i`-th core of the process's affinity
//! mask, but only when the mask has at least `threads` cores, so that no two workers share one.
//! `GOVBOX_CPU_PIN=0` turns it off. A refused pin is logged and otherwise ignored: the worker
//! then runs wherever the scheduler puts it.

/// The cores to pin workers `0..threads` to, or `None` to leave them unpinned.
pub(super) fn plan(threads: usize) -> Option<Vec<usize>> {
    if std::env::var("GOVBOX_CPU_PIN").is_ok_and(|v| v == "0") {
        return None;
    }
    let cpus = allowed_cpus()?;
    (threads >= 1 && threads <= cpus.len()).then(|| cpus[..threads].to_vec())
}

/// The cores in this thread's affinity mask.
#[cfg(target_os = "linux")]
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: `cpu_set_t` is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the size and pointer describe `set`, which lives
    // across the call.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    // SAFETY: `set` was filled in by the kernel and every index is below CPU_SETSIZE.
    Some((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Option<Vec<usize>> {
    None
}

/// Pins the calling thread to `cpu`; logs and carries on when the kernel refuses.
#[cfg(target_os = "linux")]
pub(super) fn pin_current(cpu: usize) {
    // SAFETY: as in `allowed_cpus`: all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` comes from the process's own mask, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the size and pointer describe `set`.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        log::debug!("cpu backend: pinning a worker to core {cpu} was refused ({})", std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn pin_current(_cpu: usize) {}

#[cfg(test)]
mod tests {
    #[test]
    fn never_plans_more_workers_than_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(p) = super::plan(cores) {
            assert_eq!(p.len(), cores);
        }
        assert_eq!(super::plan(100_000), None);
    }
}
