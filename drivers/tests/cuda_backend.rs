//! The CUDA backend agrees with the CPU backend, op by op, on random inputs.
//!
//! Every test opens `cuda:0`. Where that fails (no driver, no device) it prints
//! "SKIPPED: no CUDA device" and passes, unless `GOVBOX_REQUIRE_CUDA=1`, when it fails: the GPU
//! check script sets it so that a broken device run cannot look green.
//!
//! Tolerances, per value `a` (CUDA) against `b` (CPU) of an output `B`:
//! `|a - b| <= tol * (|b| + rms(B))`.
//! - `tol = 1e-4` wherever both backends compute from the same values in f32 (F32, F16, BF16
//!   and Q8_0 weights are read as stored by both); only the order of additions, fused
//!   multiply-adds and the libm/CUDA math functions (exp, erf, sin, cos) differ, each worth a
//!   few ulp, which accumulate to ~1e-6 relative over the row lengths used here.
//! - `tol = 1e-2` for Q4_1/Q5_0 weights, which the CUDA backend de-quantises to BF16 at upload
//!   while the CPU reads them exactly: BF16 keeps 8 significant bits, so each weight moves by
//!   at most 2^-9 ≈ 0.2% of itself, and over a dot product those errors add like a random walk,
//!   well below 1% of the output's scale.

#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use govbox_drivers::cpu::CpuBackend;
use govbox_drivers::cuda::CudaBackend;
use govbox_drivers::quant::quantize_row;
use govbox_drivers::{
    Backend, DType, DenseAttn, DriverError, HostBytes, KvDType, KvSpec, PagedAttn, Rope, RopeStyle, SeqAttn, Tensor,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cuda() -> Option<CudaBackend> {
    match CudaBackend::open(0) {
        Ok(b) => Some(b),
        Err(e) => {
            if std::env::var("GOVBOX_REQUIRE_CUDA").as_deref() == Ok("1") {
                panic!("GOVBOX_REQUIRE_CUDA=1 but cuda:0 did not open: {e}");
            }
            eprintln!("SKIPPED: no CUDA device ({e})");
            None
        }
    }
}

fn cpu() -> CpuBackend {
    CpuBackend::new(2).unwrap()
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let rms = (b.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / b.len().max(1) as f64).sqrt() as f32;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let bound = tol * (y.abs() + rms);
        assert!((x - y).abs() <= bound || (x.is_nan() && y.is_nan()), "{what}[{i}]: cuda {x} cpu {y} (bound {bound})");
    }
}

/// The same values as an F32 tensor on both backends.
fn both(g: &CudaBackend, c: &CpuBackend, v: &[f32], shape: &[usize]) -> (Tensor, Tensor) {
    (g.upload_f32(v, shape).unwrap(), c.upload_f32(v, shape).unwrap())
}

/// The same weight bytes of `dt` on both backends (rows of `shape`'s last dimension).
fn weight(g: &CudaBackend, c: &CpuBackend, dt: DType, v: &[f32], shape: &[usize]) -> (Tensor, Tensor) {
    let k = *shape.last().unwrap();
    let mut bytes = Vec::new();
    for row in v.chunks(k) {
        quantize_row(dt, row, &mut bytes).unwrap();
    }
    (
        g.upload(HostBytes::from_vec(bytes.clone()), dt, shape).unwrap(),
        c.upload(HostBytes::from_vec(bytes), dt, shape).unwrap(),
    )
}

fn get(g: &CudaBackend, t: &Tensor) -> Vec<f32> {
    g.download_f32(t).unwrap()
}

#[test]
fn matmul_and_linear_match_cpu_for_every_weight_format_and_row_count() {
    let Some(g) = cuda() else { return };
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(1);
    for (dt, tol) in [
        (DType::F32, 1e-4),
        (DType::F16, 1e-4),
        (DType::BF16, 1e-4),
        (DType::Q8_0, 1e-4),
        (DType::Q4_1, 1e-2),
        (DType::Q5_0, 1e-2),
    ] {
        // k = 96 is not a multiple of 8·32 lanes (tails), 100 not a multiple of 8 (scalar path).
        for k in [64usize, 96, 100, 512] {
            if dt.row_bytes(k).is_none() {
                continue;
            }
            for n in [1usize, 37, 130] {
                let wv = rand_vec(&mut rng, n * k, 1.0);
                let (gw, cw) = weight(&g, &c, dt, &wv, &[n, k]);
                let bias = rand_vec(&mut rng, n, 0.5);
                let (gb, cb) = both(&g, &c, &bias, &[n]);
                for m in [1usize, 3, 8, 9, 40] {
                    let xv = rand_vec(&mut rng, m * k, 1.0);
                    let (gx, cx) = both(&g, &c, &xv, &[m, k]);
                    let what = format!("matmul {dt} m{m} n{n} k{k}");
                    let gy = g.matmul(&gx, &gw).unwrap();
                    assert_eq!(gy.shape(), [m, n]);
                    close(&what, &get(&g, &gy), &c.download_f32(&c.matmul(&cx, &cw).unwrap()).unwrap(), tol);
                    for gelu in [false, true] {
                        let gy = g.linear(&gx, &gw, &gb, gelu).unwrap();
                        let cy = c.linear(&cx, &cw, &cb, gelu).unwrap();
                        close(&format!("linear gelu={gelu} {what}"), &get(&g, &gy), &c.download_f32(&cy).unwrap(), tol);
                    }
                }
            }
        }
    }
    let notes = g.info().notes;
    assert!(notes.iter().any(|n| n == "Q4_1 weights de-quantised to BF16 at upload"), "{notes:?}");
    assert!(notes.iter().any(|n| n == "Q5_0 weights de-quantised to BF16 at upload"), "{notes:?}");
    assert!(!notes.iter().any(|n| n.starts_with("Q8_0")), "{notes:?}");
}

#[test]
fn large_prefill_gemm_spans_several_weight_panels() {
    let Some(g) = cuda() else { return };
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(2);
    // 64 MiB panels of f32 at k = 4096 hold 4096 rows: 5000 rows take two panels.
    let (n, k, m) = (5000usize, 4096usize, 16usize);
    let wv = rand_vec(&mut rng, n * k, 0.05);
    let (gw, cw) = weight(&g, &c, DType::BF16, &wv, &[n, k]);
    let xv = rand_vec(&mut rng, m * k, 1.0);
    let (gx, cx) = both(&g, &c, &xv, &[m, k]);
    close(
        "panelled gemm",
        &get(&g, &g.matmul(&gx, &gw).unwrap()),
        &c.download_f32(&c.matmul(&cx, &cw).unwrap()).unwrap(),
        1e-4,
    );
}

#[test]
fn norms_rope_softmax_and_elementwise_ops_match_cpu() {
    let Some(g) = cuda() else { return };
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(3);
    for (rows, n) in [(1usize, 64usize), (5, 896), (3, 5000)] {
        let xv = rand_vec(&mut rng, rows * n, 3.0);
        let (gx, cx) = both(&g, &c, &xv, &[rows, n]);
        let rv = rand_vec(&mut rng, rows * n, 1.0);
        let (gr, cr) = both(&g, &c, &rv, &[rows, n]);
        for wdt in [DType::F32, DType::BF16] {
            let (gw, cw) = weight(&g, &c, wdt, &rand_vec(&mut rng, n, 1.0), &[n]);
            let (gb, cb) = weight(&g, &c, wdt, &rand_vec(&mut rng, n, 1.0), &[n]);
            let w = format!("{rows}x{n} {wdt}");
            let cmp = |what: &str, a: Tensor, b: Tensor| {
                close(&format!("{what} {w}"), &get(&g, &a), &c.download_f32(&b).unwrap(), 1e-4)
            };
            cmp("rms_norm", g.rms_norm(&gx, &gw, 1e-6).unwrap(), c.rms_norm(&cx, &cw, 1e-6).unwrap());
            cmp("layer_norm", g.layer_norm(&gx, &gw, &gb, 1e-5).unwrap(), c.layer_norm(&cx, &cw, &cb, 1e-5).unwrap());
            cmp(
                "add_layer_norm",
                g.add_layer_norm(&gx, &gr, &gw, &gb, 1e-12).unwrap(),
                c.add_layer_norm(&cx, &cr, &cw, &cb, 1e-12).unwrap(),
            );
            cmp("add row", g.add(&gx, &gb).unwrap(), c.add(&cx, &cb).unwrap());
            cmp("mul row", g.mul(&gx, &gw).unwrap(), c.mul(&cx, &cw).unwrap());
        }
        let cmp = |what: &str, a: Tensor, b: Tensor| {
            close(&format!("{what} {rows}x{n}"), &get(&g, &a), &c.download_f32(&b).unwrap(), 1e-4)
        };
        cmp("softmax", g.softmax(&gx).unwrap(), c.softmax(&cx).unwrap());
        cmp("swiglu", g.swiglu(&gx, &gr).unwrap(), c.swiglu(&cx, &cr).unwrap());
        cmp("gelu", g.gelu(&gx).unwrap(), c.gelu(&cx).unwrap());
        cmp("add", g.add(&gx, &gr).unwrap(), c.add(&cx, &cr).unwrap());
        cmp("mul", g.mul(&gx, &gr).unwrap(), c.mul(&cx, &cr).unwrap());
        cmp("scale", g.scale(&gx, -0.37).unwrap(), c.scale(&cx, -0.37).unwrap());
        let picks = [rows - 1, 0, rows / 2, rows - 1];
        cmp("gather_rows", g.gather_rows(&gx, &picks).unwrap(), c.gather_rows(&cx, &picks).unwrap());
        assert_eq!(g.argmax(&gx).unwrap(), c.argmax(&cx).unwrap(), "argmax {rows}x{n}");
    }
    // Ties go to the first index, as on the CPU.
    let (gt, ct) = both(&g, &c, &[1.0, 5.0, 5.0, -2.0, 7.0, 7.0, 7.0, 0.0], &[2, 4]);
    assert_eq!(g.argmax(&gt).unwrap(), c.argmax(&ct).unwrap());
    assert_eq!(g.argmax(&gt).unwrap(), vec![1, 0]);
    // Bad shapes are errors, not launches.
    let (ga, _) = both(&g, &c, &[1.0; 6], &[2, 3]);
    let (gb, _) = both(&g, &c, &[1.0; 4], &[4]);
    assert!(matches!(g.add(&ga, &gb), Err(DriverError::Shape { .. })));
    assert!(matches!(g.gather_rows(&ga, &[2]), Err(DriverError::Shape { .. })));
    let cx = c.upload_f32(&[1.0; 6], &[2, 3]).unwrap();
    assert!(matches!(g.gelu(&cx), Err(DriverError::ForeignTensor { .. })));
}

#[test]
fn rope_matches_cpu_in_both_styles_with_partial_rotation() {
    let Some(g) = cuda() else { return };
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(4);
    for style in [RopeStyle::Half, RopeStyle::Interleaved] {
        for (n_heads, head_dim, rotated) in [(4usize, 64usize, 64usize), (3, 80, 40), (2, 128, 128)] {
            let rows = 7;
            let inv_freq: Vec<f32> =
                (0..rotated / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / rotated as f32)).collect();
            let positions: Vec<u32> = (0..rows as u32).map(|i| i * 997 % 4000).collect();
            let r = Rope { n_heads, head_dim, inv_freq: &inv_freq, style, positions: &positions };
            let xv = rand_vec(&mut rng, rows * n_heads * head_dim, 2.0);
            let (gx, cx) = both(&g, &c, &xv, &[rows, n_heads * head_dim]);
            close(
                &format!("rope {style:?} {n_heads}x{head_dim} rot {rotated}"),
                &get(&g, &g.rope(&gx, &r).unwrap()),
                &c.download_f32(&c.rope(&cx, &r).unwrap()).unwrap(),
                1e-4,
            );
        }
    }
}

#[test]
fn embedding_matches_cpu_for_every_table_format() {
    let Some(g) = cuda() else { return };
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(5);
    let (vocab, dim) = (300usize, 128usize);
    let tv = rand_vec(&mut rng, vocab * dim, 1.0);
    let ids = [0u32, 299, 17, 17, 150];
    for (dt, tol) in
        [(DType::F32, 0.0), (DType::F16, 0.0), (DType::BF16, 0.0), (DType::Q8_0, 1e-6), (DType::Q4_0, 1e-2)]
    {
        let (gt, ct) = weight(&g, &c, dt, &tv, &[vocab, dim]);
        let gy = g.embedding(&gt, &ids).unwrap();
        assert_eq!(gy.shape(), [ids.len(), dim]);
        close(
            &format!("embedding {dt}"),
            &get(&g, &gy),
            &c.download_f32(&c.embedding(&ct, &ids).unwrap()).unwrap(),
            tol,
        );
        assert!(matches!(g.embedding(&gt, &[300]), Err(DriverError::TokenOutOfRange { id: 300, vocab: 300 })));
    }
}

/// Runs the same paged-attention calls on both backends: two sequences (one with a shared,
/// copied block), grouped-query heads, a prefill and then decode steps.
#[test]
fn paged_attention_and_copy_block_match_cpu() {
    let Some(g) = cuda() else { return };
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(6);
    for (nh, nkv, hd) in [(4usize, 2usize, 64usize), (14, 2, 64), (2, 2, 128), (8, 1, 256), (3, 3, 40)] {
        let spec =
            KvSpec { n_layers: 2, n_kv_heads: nkv, head_dim: hd, block_size: 4, n_blocks: 16, dtype: KvDType::F32 };
        let f16 = g.new_kv_cache(KvSpec { dtype: KvDType::F16, ..spec });
        assert!(
            matches!(f16, Err(DriverError::KvDType { dtype: KvDType::F16, backend: "cuda", .. })),
            "an f16 pool on CUDA must be refused naming kv_dtype: {f16:?}"
        );
        let mut gk = g.new_kv_cache(spec).unwrap();
        let mut ck = c.new_kv_cache(spec).unwrap();
        // Sequence A uses blocks 3, 7, 1, 9; sequence B shares A's first block through a copy
        // into block 5 and goes on in 12, 2, 14.
        let table_a = [3u32, 7, 1, 9];
        let table_b = [5u32, 12, 2, 14];
        let mut step = |seqs: &[SeqAttn<'_>],
                        layer: usize,
                        gk: &mut Box<dyn govbox_drivers::KvCache>,
                        ck: &mut Box<dyn govbox_drivers::KvCache>| {
            let rows: usize = seqs.iter().map(|s| s.n_new).sum();
            let q = rand_vec(&mut rng, rows * nh * hd, 1.0);
            let k = rand_vec(&mut rng, rows * nkv * hd, 1.0);
            let v = rand_vec(&mut rng, rows * nkv * hd, 1.0);
            let (gq, cq) = both(&g, &c, &q, &[rows, nh * hd]);
            let (gkk, ckk) = both(&g, &c, &k, &[rows, nkv * hd]);
            let (gv, cv) = both(&g, &c, &v, &[rows, nkv * hd]);
            let a =
                PagedAttn { layer, n_heads: nh, n_kv_heads: nkv, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), seqs };
            let go = g.attention(&gq, &gkk, &gv, gk.as_mut(), &a).unwrap();
            let co = c.attention(&cq, &ckk, &cv, ck.as_mut(), &a).unwrap();
            close(
                &format!("attention {nh}/{nkv}x{hd} layer {layer} rows {rows}"),
                &get(&g, &go),
                &c.download_f32(&co).unwrap(),
                1e-4,
            );
        };
        for layer in 0..2 {
            step(&[SeqAttn { block_table: &table_a, start_pos: 0, n_new: 6 }], layer, &mut gk, &mut ck);
        }
        gk.copy_block(3, 5).unwrap();
        ck.copy_block(3, 5).unwrap();
        for layer in 0..2 {
            step(
                &[
                    SeqAttn { block_table: &table_b, start_pos: 4, n_new: 5 },
                    SeqAttn { block_table: &table_a, start_pos: 6, n_new: 1 },
                ],
                layer,
                &mut gk,
                &mut ck,
            );
        }
        for pos in 7..13 {
            for layer in 0..2 {
                step(
                    &[
                        SeqAttn { block_table: &table_a, start_pos: pos, n_new: 1 },
                        SeqAttn { block_table: &table_b, start_pos: pos + 2, n_new: 1 },
                    ],
                    layer,
                    &mut gk,
                    &mut ck,
                );
            }
        }
        // A position without a block, a block outside the pool, a bad copy: errors.
        let q = g.upload_f32(&vec![0.0; nh * hd], &[1, nh * hd]).unwrap();
        let kv = g.upload_f32(&vec![0.0; nkv * hd], &[1, nkv * hd]).unwrap();
        let a = |seqs| PagedAttn { layer: 0, n_heads: nh, n_kv_heads: nkv, head_dim: hd, scale: 1.0, seqs };
        let short = [SeqAttn { block_table: &table_a[..1], start_pos: 4, n_new: 1 }];
        assert!(matches!(g.attention(&q, &kv, &kv, gk.as_mut(), &a(&short)), Err(DriverError::KvCache(_))));
        let outside = [SeqAttn { block_table: &[16], start_pos: 0, n_new: 1 }];
        assert!(matches!(g.attention(&q, &kv, &kv, gk.as_mut(), &a(&outside)), Err(DriverError::KvCache(_))));
        assert!(matches!(gk.copy_block(0, 16), Err(DriverError::KvCache(_))));
        // A CPU cache is not the CUDA backend's.
        assert!(matches!(
            g.attention(&q, &kv, &kv, ck.as_mut(), &a(&[SeqAttn { block_table: &table_a, start_pos: 0, n_new: 1 }])),
            Err(DriverError::ForeignTensor { .. })
        ));
    }
}

#[test]
fn dense_attention_matches_cpu_with_padding() {
    let Some(g) = cuda() else { return };
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(7);
    for (batch, seq_len, nh, hd) in [(1usize, 9usize, 12usize, 32usize), (3, 17, 4, 64), (2, 5, 2, 100)] {
        let rows = batch * seq_len;
        let mut mask = vec![true; rows];
        // Sequence 1 is padded after 5 tokens; a last sequence, when there is one, is all
        // padding (its outputs are zeros).
        if batch > 1 {
            mask[seq_len + 5..2 * seq_len].iter_mut().for_each(|m| *m = false);
        }
        if batch > 2 {
            mask[2 * seq_len..].iter_mut().for_each(|m| *m = false);
        }
        let w = nh * hd;
        let (gq, cq) = both(&g, &c, &rand_vec(&mut rng, rows * w, 1.0), &[rows, w]);
        let (gk, ck) = both(&g, &c, &rand_vec(&mut rng, rows * w, 1.0), &[rows, w]);
        let (gv, cv) = both(&g, &c, &rand_vec(&mut rng, rows * w, 1.0), &[rows, w]);
        let a =
            DenseAttn { batch, seq_len, n_heads: nh, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), key_mask: &mask };
        close(
            &format!("dense {batch}x{seq_len} {nh}x{hd}"),
            &get(&g, &g.attention_dense(&gq, &gk, &gv, &a).unwrap()),
            &c.download_f32(&c.attention_dense(&cq, &ck, &cv, &a).unwrap()).unwrap(),
            1e-4,
        );
    }
}

#[test]
fn info_reports_the_device_and_tracks_memory() {
    let Some(g) = cuda() else { return };
    let before = g.info();
    eprintln!("cuda:0 info: {before:?}");
    assert!(!before.name.is_empty());
    // NVML (the driver's libnvidia-ml) gives the temperature where it loads.
    if let Some(t) = before.temperature_c {
        assert!((0.0..=120.0).contains(&t), "{t} °C");
    }
    assert!(before.memory_total.unwrap() > 0);
    let t = g.upload_f32(&vec![1.0; 1 << 20], &[1024, 1024]).unwrap();
    let during = g.info().memory_used.unwrap();
    assert!(during >= before.memory_used.unwrap() + (4 << 20), "{during}");
    drop(t);
    assert_eq!(g.info().memory_used, before.memory_used);
    g.synchronize().unwrap();
    // Upload size checks.
    assert!(matches!(
        g.upload(HostBytes::from_vec(vec![0; 33]), DType::Q8_0, &[1, 32]),
        Err(DriverError::UploadSize { expected: 34, got: 33, .. })
    ));
    assert!(matches!(
        g.upload(HostBytes::from_vec(vec![0; 34]), DType::Q8_0, &[1, 33]),
        Err(DriverError::Shape { .. })
    ));
}
