//! `cpu::give_back_freed_memory`: memory freed between live blocks, which no trim threshold
//! returns, leaves the process's resident size (`cpu/allocator.rs`). One test in its own
//! process: the resident size is the whole process's.
#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(clippy::unwrap_used)]

/// This process's resident anonymous memory, in KiB.
fn anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_freed_between_live_blocks_goes_back() {
    // 48 MiB in 64 KiB blocks (heap-sized, under any mmap threshold), every page written; then
    // all but every eighth freed, so the free memory sits between live blocks, as a load's
    // temporaries do between the tokenizer's and the model's.
    const BLOCK: usize = 64 << 10;
    let mut blocks: Vec<Vec<u8>> = (0..768).map(|i| std::hint::black_box(vec![(i % 251) as u8 + 1; BLOCK])).collect();
    let full = anon_kib();
    let kept: Vec<Vec<u8>> = blocks.drain(..).enumerate().filter(|(i, _)| i % 8 == 0).map(|(_, b)| b).collect();
    let freed = anon_kib();
    govbox_drivers::cpu::give_back_freed_memory();
    let after = anon_kib();
    eprintln!("RssAnon KiB: {full} with 48 MiB, {freed} after freeing 42 MiB of it, {after} after giving it back");
    assert!(after + 30 * 1024 <= freed, "the freed blocks' pages stayed resident: {freed} -> {after} KiB");
    assert!(
        kept.iter().enumerate().all(|(j, b)| b.iter().all(|&x| x == ((8 * j) % 251) as u8 + 1)),
        "a live block changed"
    );
}
