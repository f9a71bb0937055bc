//! `cpu::tune_malloc`: what one thread frees, another thread reuses, instead of each thread
//! growing an arena of its own (`cpu/allocator.rs`). A test with its own `main` (no harness):
//! the limit holds only for arenas made after it is set, and the test harness starts threads
//! first. The resident size is the whole process's.
#![allow(clippy::unwrap_used)]

/// This process's resident anonymous memory, in KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 32 MiB in 64 KiB blocks (heap-sized, under any mmap threshold), every page written.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fill(tag: u8) -> Vec<Vec<u8>> {
    (0..512).map(|_| std::hint::black_box(vec![tag; 64 << 10])).collect()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() || std::env::var_os("GLIBC_TUNABLES").is_some() {
        println!("one_malloc_arena: skipped, the environment sets malloc's tunables (tune_malloc keeps them)");
        return;
    }
    govbox_drivers::cpu::tune_malloc();
    let (freed_tx, freed_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // Thread A fills 32 MiB and frees it, then stays alive (holding its arena, if it has one of
    // its own) while thread B fills 32 MiB.
    let a = std::thread::spawn(move || {
        drop(fill(1));
        freed_tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    freed_rx.recv().unwrap();
    let before = anon_kib();
    let b = std::thread::spawn(|| {
        let blocks = fill(2);
        let grown = anon_kib();
        assert!(blocks.iter().all(|b| b.iter().all(|&x| x == 2)));
        grown
    });
    let grown = b.join().unwrap();
    done_tx.send(()).unwrap();
    a.join().unwrap();
    println!("one_malloc_arena: RssAnon {before} KiB after thread A freed 32 MiB, {grown} KiB with thread B's 32 MiB");
    // With an arena per thread, B's 32 MiB are fresh pages (about 32,768 KiB more); with one
    // arena they are the pages A freed.
    assert!(grown < before + 8 * 1024, "thread B did not reuse what thread A freed: RssAnon {before} -> {grown} KiB");
    // The summary line the harness would print, which `scripts/test.sh` adds up.
    println!(
        "test one_malloc_arena ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("one_malloc_arena: skipped, glibc on Linux only");
}
