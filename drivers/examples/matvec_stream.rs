//! How fast the CPU backend streams weights in decode-shaped matrix products (one activation
//! row), as GB/s of weight bytes read: one large matrix alone, and the sequence of matrices of
//! one decode step of a model shape (every layer's projections, then the output head), which adds
//! the cost of starting and finishing each product on the worker threads.
//!
//!   cargo run --release -p govbox-drivers --example matvec_stream -- [DTYPE] [THREADS] [SECONDS] [SHAPE]
//!
//! DTYPE is f16 (default), bf16, f32, q8_0, q4_k or q6_k; SHAPE is 0.5b (default: Qwen2.5-0.5B,
//! hidden 896, intermediate 4864, 14 query and 2 KV heads of 64, 24 layers) or 1.5b
//! (Qwen2.5-1.5B: 1536, 8960, 12 and 2 heads of 128, 28 layers; the K formats need it, their
//! rows being whole super-blocks of 256), both with a vocabulary of 151,936 and the head read as
//! its own matrix. Weights are random; only the bytes read matter. Compare the figures with a
//! memory benchmark of the same machine (bench/triad.c) and with a whole model's decode
//! (`govbox model bench`): the gap between the two rows here is the per-product overhead.

use std::time::{Duration, Instant};

use govbox_drivers::cpu::CpuBackend;
use govbox_drivers::{Backend, DType, HostBytes, Tensor};

const VOCAB: usize = 151_936;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dtype = match args.first().map_or("f16", String::as_str) {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        "q8_0" => DType::Q8_0,
        "q4_k" => DType::Q4K,
        "q6_k" => DType::Q6K,
        other => return Err(format!("DTYPE must be f16, bf16, f32, q8_0, q4_k or q6_k, not '{other}'").into()),
    };
    let threads: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let seconds: f64 = args.get(2).map_or(Ok(5.0), |s| s.parse())?;
    // hidden, intermediate, query and KV widths, layers
    let (hidden, ffn, q, kv, layers_n) = match args.get(3).map_or("0.5b", String::as_str) {
        "0.5b" => (896, 4864, 14 * 64, 2 * 64, 24),
        "1.5b" => (1536, 8960, 12 * 128, 2 * 128, 28),
        other => return Err(format!("SHAPE must be 0.5b or 1.5b, not '{other}'").into()),
    };
    let backend = CpuBackend::new(threads)?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut matrix = |rows: usize, cols: usize| -> Result<Tensor, Box<dyn std::error::Error>> {
        let bytes = dtype.row_bytes(cols).ok_or("row size")? * rows;
        let mut v = vec![0u8; bytes];
        for pair in v.chunks_exact_mut(2) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Small finite values in every format: a sign, a low exponent, random mantissa bits.
            let h = (seed as u16 & 0x83ff) | 0x2c00;
            pair.copy_from_slice(&h.to_le_bytes());
        }
        Ok(backend.upload(HostBytes::from_vec(v), dtype, &[rows, cols])?)
    };
    let head = matrix(VOCAB, hidden)?;
    let mut layers = Vec::new();
    for _ in 0..layers_n {
        layers.push([
            matrix(q, hidden)?,
            matrix(kv, hidden)?,
            matrix(kv, hidden)?,
            matrix(hidden, q)?,
            matrix(ffn, hidden)?,
            matrix(ffn, hidden)?,
            matrix(hidden, ffn)?,
        ]);
    }
    let x_hidden = backend.upload_f32(&vec![0.01; hidden], &[1, hidden])?;
    let x_ffn = backend.upload_f32(&vec![0.01; ffn], &[1, ffn])?;
    let bytes = |t: &Tensor| dtype.row_bytes(t.last_dim()).unwrap_or(0) * t.rows();
    let step_bytes: usize = bytes(&head) + layers.iter().flatten().map(bytes).sum::<usize>();

    // Inside the worker pool, as the engine runs a forward pass (`Backend::run_within`).
    let within = |f: &(dyn Fn() -> govbox_drivers::Result<()> + Sync)| {
        let mut r = Ok(());
        backend.run_within(&mut || r = f());
        r
    };
    let head_only = || {
        within(&|| {
            backend.matmul(&x_hidden, &head)?;
            Ok(())
        })
    };
    let whole_step = || {
        within(&|| {
            for l in &layers {
                for (i, w) in l.iter().enumerate() {
                    backend.matmul(if i == 6 { &x_ffn } else { &x_hidden }, w)?;
                }
            }
            backend.matmul(&x_hidden, &head)?;
            Ok(())
        })
    };
    println!("{dtype}, {threads} threads, {:.0} MB per decode step", step_bytes as f64 / 1e6);
    for (name, run, b) in [
        ("output head alone", &head_only as &dyn Fn() -> govbox_drivers::Result<()>, bytes(&head)),
        ("whole step (every layer's products and the head)", &whole_step, step_bytes),
    ] {
        run()?;
        let (mut n, mut best) = (0u32, Duration::MAX);
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds {
            let t = Instant::now();
            run()?;
            best = best.min(t.elapsed());
            n += 1;
        }
        let mean = start.elapsed() / n;
        println!(
            "{name}: mean {:.2} ms = {:.1} GB/s, best {:.2} ms = {:.1} GB/s ({n} runs)",
            mean.as_secs_f64() * 1e3,
            b as f64 / mean.as_secs_f64() / 1e9,
            best.as_secs_f64() * 1e3,
            b as f64 / best.as_secs_f64() / 1e9
        );
    }
    Ok(())
}
