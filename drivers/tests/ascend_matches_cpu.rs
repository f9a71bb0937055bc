//! Every Backend op of the Ascend backend, run on govbox's simulator, against the CPU backend on
//! the same random inputs (f32 paths: 1e-4 relative to the values' scale; quantised matmuls:
//! the bound of the CPU's 8-bit activations).
#![cfg(feature = "ascend")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common {
    pub mod ascend_sim;
}

use govbox_drivers::ascend::AscendBackend;
use govbox_drivers::cpu::CpuBackend;
use govbox_drivers::{
    Backend, DType, DenseAttn, HostBytes, KvDType, KvSpec, PagedAttn, Rope, RopeStyle, SeqAttn, Tensor,
};
use rand::{Rng, SeedableRng};

const TOL: f32 = 1e-4;

fn backends() -> (CpuBackend, AscendBackend) {
    (CpuBackend::new(1).unwrap(), AscendBackend::open_with_library(&common::ascend_sim::sim_lib(), 0).unwrap())
}

fn rand_vec(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = a.iter().fold(1f32, |m, x| m.max(x.abs()));
    let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(err <= TOL * scale, "{what}: max abs error {err} (scale {scale})");
}

fn both(
    cpu: &CpuBackend,
    npu: &AscendBackend,
    inputs: &[(&[f32], &[usize])],
    f: impl Fn(&dyn Backend, &[Tensor]) -> Tensor,
    what: &str,
) {
    let run = |b: &dyn Backend| {
        let ts: Vec<Tensor> = inputs.iter().map(|(v, s)| b.upload_f32(v, s).unwrap()).collect();
        b.download_f32(&f(b, &ts)).unwrap()
    };
    close(&run(cpu), &run(npu), what);
}

#[test]
fn elementwise_norm_and_matmul_ops_match_the_cpu() {
    let (cpu, npu) = backends();
    let info = npu.info();
    eprintln!("ascend backend: {} (simulated: {})", info.name, info.simulated);
    assert!(info.simulated && info.name.contains("(simulated)"), "{info:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (r, n, k) = (5, 64, 96);
    let (x, y, row) = (rand_vec(&mut rng, r * n), rand_vec(&mut rng, r * n), rand_vec(&mut rng, n));
    let w = rand_vec(&mut rng, k * n);
    let s = [r, n];
    both(&cpu, &npu, &[(&x, &s), (&y, &s)], |b, t| b.add(&t[0], &t[1]).unwrap(), "add");
    both(&cpu, &npu, &[(&x, &s), (&row, &[n])], |b, t| b.add(&t[0], &t[1]).unwrap(), "add row");
    both(&cpu, &npu, &[(&x, &s), (&row, &[n])], |b, t| b.mul(&t[0], &t[1]).unwrap(), "mul row");
    both(&cpu, &npu, &[(&x, &s)], |b, t| b.scale(&t[0], 0.37).unwrap(), "scale");
    both(&cpu, &npu, &[(&x, &s)], |b, t| b.softmax(&t[0]).unwrap(), "softmax");
    both(&cpu, &npu, &[(&x, &s)], |b, t| b.gelu(&t[0]).unwrap(), "gelu");
    both(&cpu, &npu, &[(&x, &s), (&y, &s)], |b, t| b.swiglu(&t[0], &t[1]).unwrap(), "swiglu");
    both(&cpu, &npu, &[(&x, &s), (&row, &[n])], |b, t| b.rms_norm(&t[0], &t[1], 1e-6).unwrap(), "rms_norm");
    both(
        &cpu,
        &npu,
        &[(&x, &s), (&row, &[n]), (&row, &[n])],
        |b, t| b.layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap(),
        "layer_norm",
    );
    both(&cpu, &npu, &[(&x, &s), (&w, &[k, n])], |b, t| b.matmul(&t[0], &t[1]).unwrap(), "matmul f32");
    both(&cpu, &npu, &[(&x, &s)], |b, t| b.gather_rows(&t[0], &[4, 0, 4]).unwrap(), "gather_rows");
    for style in [RopeStyle::Half, RopeStyle::Interleaved] {
        for rot in [8usize, 6] {
            let inv: Vec<f32> = (0..rot).map(|i| 10000f32.powf(-(2.0 * i as f32) / 16.0)).collect();
            let pos = [0u32, 3, 4, 9, 100];
            let rope = Rope { n_heads: 4, head_dim: 16, inv_freq: &inv, style, positions: &pos };
            both(&cpu, &npu, &[(&x, &s)], |b, t| b.rope(&t[0], &rope).unwrap(), &format!("rope {style:?} {rot}"));
        }
    }
    let am = |b: &dyn Backend| b.argmax(&b.upload_f32(&x, &s).unwrap()).unwrap();
    assert_eq!(am(&cpu), am(&npu));
    let narrow = npu.upload_f32(&w[..k * (n - 1)], &[k, n - 1]).unwrap();
    let err = npu.matmul(&npu.upload_f32(&x, &s).unwrap(), &narrow);
    assert!(err.is_err(), "a weight of the wrong width is refused");
}

fn upload_weight(b: &dyn Backend, bytes: &[u8], dt: DType, shape: &[usize]) -> Tensor {
    b.upload(HostBytes::from_vec(bytes.to_vec()), dt, shape).unwrap()
}

#[test]
fn quantised_and_half_weights_match_the_cpu() {
    let (cpu, npu) = backends();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let (m, n, k) = (3, 24, 64);
    let x = rand_vec(&mut rng, m * k);
    let w = rand_vec(&mut rng, n * k);
    for dt in [DType::Q8_0, DType::Q4_1, DType::Q5_0, DType::F16, DType::BF16] {
        let wv = &w;
        let bytes: Vec<u8> = match dt {
            DType::F16 => wv.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            DType::BF16 => wv.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            _ => wv
                .chunks_exact(k)
                .flat_map(|r| {
                    let mut o = Vec::new();
                    govbox_drivers::quant::quantize_row(dt, r, &mut o).unwrap();
                    assert_eq!(o.len(), dt.row_bytes(k).unwrap());
                    o
                })
                .collect(),
        };
        let run = |b: &dyn Backend| {
            let wt = upload_weight(b, &bytes, dt, &[n, k]);
            let xt = b.upload_f32(&x, &[m, k]).unwrap();
            let mm = b.download_f32(&b.matmul(&xt, &wt).unwrap()).unwrap();
            let emb = b.download_f32(&b.embedding(&wt, &[3, 0, 23, 3]).unwrap()).unwrap();
            (mm, emb)
        };
        let ((mc, ec), (mn, en)) = (run(&cpu), run(&npu));
        if matches!(dt, DType::F16 | DType::BF16) {
            close(&mc, &mn, &format!("matmul {dt}"));
        } else {
            // The CPU quantises the activations of quantised formats to 8 bits per 32-value block
            // (scale amax / 127, as llama.cpp does); the simulator computes in f32. Each output may
            // then differ by at most sum over blocks of (amax / 254) x sum |w| in the block, plus
            // float rounding (10 % slack for the weights' own quantisation).
            for (o, (a, b)) in mc.iter().zip(&mn).enumerate() {
                let (row, col) = (o / n, o % n);
                let xr = &x[row * k..(row + 1) * k];
                let wr = &w[col * k..(col + 1) * k];
                let bound: f32 = xr
                    .chunks(32)
                    .zip(wr.chunks(32))
                    .map(|(xb, wb)| {
                        xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 254.0 * wb.iter().map(|v| v.abs()).sum::<f32>()
                    })
                    .sum();
                let err = (a - b).abs();
                assert!(
                    err <= 1.1 * bound + 1e-4,
                    "matmul {dt}, output {o}: error {err} above the 8-bit bound {bound}"
                );
            }
        }
        close(&ec, &en, &format!("embedding {dt}"));
    }
    let notes = npu.info().notes.join("; ");
    assert!(notes.contains("Q4_1 weights de-quantised to F32 at upload"), "{notes}");
    let t = upload_weight(&npu, &[0u8; 34 * 2], DType::Q8_0, &[2, 32]);
    assert!(matches!(npu.embedding(&t, &[2]), Err(govbox_drivers::DriverError::TokenOutOfRange { id: 2, vocab: 2 })));
}

#[test]
fn paged_and_dense_attention_match_the_cpu() {
    let (cpu, npu) = backends();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (nh, nkv, hd, bs) = (4, 2, 8, 4);
    // Both pool types: an f16 pool rounds the same stored values on both backends.
    for dtype in KvDType::ALL {
        let spec = KvSpec { n_layers: 2, n_kv_heads: nkv, head_dim: hd, block_size: bs, n_blocks: 8, dtype };
        let backs: [&dyn Backend; 2] = [&cpu, &npu];
        let mut caches: Vec<_> = backs.iter().map(|b| b.new_kv_cache(spec).unwrap()).collect();
        // Two steps: a prefill of two sequences (6 and 3 rows), then one decode row each, with a
        // copy-on-write block copy between.
        let tables: [&[u32]; 2] = [&[5, 1], &[2, 7]];
        let steps: [[(usize, usize); 2]; 2] = [[(0, 6), (0, 3)], [(6, 1), (3, 1)]];
        for (step, seqs) in steps.iter().enumerate() {
            let rows: usize = seqs.iter().map(|s| s.1).sum();
            let (q, k, v) = (
                rand_vec(&mut rng, rows * nh * hd),
                rand_vec(&mut rng, rows * nkv * hd),
                rand_vec(&mut rng, rows * nkv * hd),
            );
            let sa: Vec<SeqAttn<'_>> = seqs
                .iter()
                .zip(tables)
                .map(|(&(start_pos, n_new), block_table)| SeqAttn { block_table, start_pos, n_new })
                .collect();
            let a = PagedAttn { layer: 1, n_heads: nh, n_kv_heads: nkv, head_dim: hd, scale: 0.35, seqs: &sa };
            let outs: Vec<Vec<f32>> = backs
                .iter()
                .zip(caches.iter_mut())
                .map(|(b, c)| {
                    if step == 1 {
                        c.copy_block(1, 3).unwrap();
                    }
                    let t = |v: &[f32], w| b.upload_f32(v, &[rows, w]).unwrap();
                    let o = b.attention(&t(&q, nh * hd), &t(&k, nkv * hd), &t(&v, nkv * hd), c.as_mut(), &a).unwrap();
                    b.download_f32(&o).unwrap()
                })
                .collect();
            close(&outs[0], &outs[1], &format!("paged attention ({dtype} pool) step {step}"));
        }
    }
    let (b, l) = (2, 5);
    let mask = [true, true, true, false, false, true, true, true, true, true];
    let (q, k, v) = (rand_vec(&mut rng, b * l * 32), rand_vec(&mut rng, b * l * 32), rand_vec(&mut rng, b * l * 32));
    let d = DenseAttn { batch: b, seq_len: l, n_heads: 4, head_dim: 8, scale: 0.35, key_mask: &mask };
    let s = [b * l, 32];
    both(
        &cpu,
        &npu,
        &[(&q, &s), (&k, &s), (&v, &s)],
        |bk, t| bk.attention_dense(&t[0], &t[1], &t[2], &d).unwrap(),
        "dense",
    );
}
