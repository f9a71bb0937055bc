//! The CPU backend tunes glibc's malloc so that activation-sized buffers (several MiB) stay with
//! the process when freed and are reused, instead of going back to the system and faulting in
//! again (`cpu/allocator.rs`). One test in its own process: malloc's settings are process-wide.
#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(clippy::unwrap_used)]

use govbox_drivers::cpu::CpuBackend;

/// This process's resident size, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_freed_activation_sized_buffer_is_kept_and_reused() {
    if std::env::var_os("GLIBC_TUNABLES").is_some() || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some() {
        eprintln!("skipping: malloc tunables are set in the environment, so the backend leaves malloc alone");
        return;
    }
    let _cpu = CpuBackend::new(1).unwrap();
    const MIB16: usize = 16 << 20;
    let before = rss_kib();
    let a = std::hint::black_box(vec![1u8; MIB16]);
    let with_a = rss_kib();
    drop(a);
    let after_free = rss_kib();
    let b = std::hint::black_box(vec![2u8; MIB16]);
    let with_b = rss_kib();
    eprintln!("RSS KiB: {before} before, {with_a} with 16 MiB, {after_free} after freeing it, {with_b} with another");
    assert!(with_a >= before + 15 * 1024, "the buffer's pages were not counted: {before} -> {with_a} KiB");
    assert!(after_free + 1024 >= with_a, "the freed buffer went back to the system: {with_a} -> {after_free} KiB");
    assert!(with_b <= with_a + 1024, "the second buffer did not reuse the first: {with_a} -> {with_b} KiB");
    assert!(b.iter().all(|&x| x == 2));
}
