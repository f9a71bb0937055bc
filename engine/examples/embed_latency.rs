//! Closed-loop latency of `Engine::embed` called in-process, for `bench/https-overhead.sh`.
//!
//! usage: `embed_latency --model DIR [--text "short text"] [--threads 2] [--callers 32]
//! [--duration 10] [--max-concurrent 0] [--warmup 1]`
//!
//! `callers` threads each call `engine.embed(&[text])` back to back for `duration` seconds, like
//! `wrk -c callers` does against `/v1/embeddings`. With `--max-concurrent K` (K > 0) at most K
//! calls run on the engine at once and the others wait, as govboxd's `[serving] max_concurrent`
//! admission does (first come, first served); a call's latency includes that wait. Prints one
//! JSON object: calls, seconds, throughput (calls per second), latency percentiles in
//! milliseconds, and the process's CPU time over the timed span (all threads).

use std::collections::VecDeque;
use std::error::Error;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use govbox_drivers::cpu::CpuBackend;
use govbox_engine::{Engine, EngineOptions};

struct Args {
    model: PathBuf,
    text: String,
    threads: usize,
    callers: usize,
    duration: f64,
    max_concurrent: usize,
    warmup: f64,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        model: PathBuf::new(),
        text: "The quick brown fox jumps over the lazy dog.".into(),
        threads: 2,
        callers: 32,
        duration: 10.0,
        max_concurrent: 0,
        warmup: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => a.model = value.into(),
            "--text" => a.text = value,
            "--threads" => a.threads = value.parse()?,
            "--callers" => a.callers = value.parse()?,
            "--duration" => a.duration = value.parse()?,
            "--max-concurrent" => a.max_concurrent = value.parse()?,
            "--warmup" => a.warmup = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if a.model.as_os_str().is_empty() {
        return Err("usage: embed_latency --model DIR [--text T] [--threads N] [--callers N] [--duration S] \
                    [--max-concurrent K] [--warmup S]"
            .into());
    }
    a.callers = a.callers.max(1);
    Ok(a)
}

/// A FIFO counting semaphore (std only), standing in for govboxd's admission slots (a tokio
/// `Semaphore`, which is fair too). A freed slot goes straight to the longest waiter, and only
/// that waiter is woken.
struct Slots {
    state: Mutex<SlotState>,
}

struct SlotState {
    free: usize,
    waiters: VecDeque<Arc<Waiter>>,
}

#[derive(Default)]
struct Waiter {
    granted: Mutex<bool>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Slots {
    fn new(n: usize) -> Self {
        Self { state: Mutex::new(SlotState { free: n, waiters: VecDeque::new() }) }
    }

    fn acquire(&self) {
        let me = {
            let mut st = lock(&self.state);
            if st.free > 0 && st.waiters.is_empty() {
                st.free -= 1;
                return;
            }
            let me = Arc::new(Waiter::default());
            st.waiters.push_back(me.clone());
            me
        };
        let mut granted = lock(&me.granted);
        while !*granted {
            granted = me.cv.wait(granted).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn release(&self) {
        let next = {
            let mut st = lock(&self.state);
            let next = st.waiters.pop_front();
            if next.is_none() {
                st.free += 1;
            }
            next
        };
        if let Some(w) = next {
            *lock(&w.granted) = true;
            w.cv.notify_one();
        }
    }
}

/// CPU seconds (user + system) this process has used, all threads, from /proc (USER_HZ = 100).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the ")" that ends the command name; utime and stime are fields 14, 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<(), Box<dyn Error>> {
    let a = parse_args()?;
    let engine = Arc::new(Engine::load(&a.model, Arc::new(CpuBackend::new(a.threads)?), &EngineOptions::default())?);
    if engine.embedding_model().is_none() {
        return Err(format!("{} is not an embedding model", a.model.display()).into());
    }
    let slots = (a.max_concurrent > 0).then(|| Arc::new(Slots::new(a.max_concurrent)));
    let text = Arc::new(a.text.clone());

    // Warm-up, single caller: page faults of the mapped weights, thread-pool start.
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < a.warmup {
        engine.embed(&[text.as_str()])?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let workers: Vec<_> = (0..a.callers)
        .map(|_| {
            let (engine, slots, text, stop) = (engine.clone(), slots.clone(), text.clone(), stop.clone());
            std::thread::spawn(move || -> Result<Vec<(f64, Instant)>, String> {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Some(s) = &slots {
                        s.acquire();
                    }
                    let r = engine.embed(&[text.as_str()]);
                    if let Some(s) = &slots {
                        s.release();
                    }
                    let v = r.map_err(|e| e.to_string())?;
                    std::hint::black_box(&v);
                    lat.push((t.elapsed().as_secs_f64() * 1e3, Instant::now()));
                }
                Ok(lat)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(a.duration));
    let end = Instant::now();
    let cpu = cpu_seconds() - cpu0;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for w in workers {
        let done = w.join().map_err(|_| "a caller thread panicked")??;
        // Like wrk: only the calls that completed within the run count; those in flight at the
        // end are dropped.
        lat.extend(done.into_iter().filter(|&(_, at)| at <= end).map(|(ms, _)| ms));
    }
    let secs = end.duration_since(start).as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    let tokens = engine.embed(&[text.as_str()])?.token_counts[0];
    let out = serde_json::json!({
        "callers": a.callers,
        "threads": a.threads,
        "max_concurrent": a.max_concurrent,
        "input_tokens": tokens,
        "calls": lat.len(),
        "seconds": secs,
        "rps": lat.len() as f64 / secs,
        "p50_ms": percentile(&lat, 0.50),
        "p90_ms": percentile(&lat, 0.90),
        "p99_ms": percentile(&lat, 0.99),
        "mean_ms": mean,
        "max_ms": lat.last().copied().unwrap_or(0.0),
        "cpu_seconds": cpu,
        "cpu_ms_per_call": cpu * 1e3 / lat.len().max(1) as f64,
    });
    println!("{out}");
    Ok(())
}
