//! Every backend agrees with the CPU backend, op by op, on random inputs: one set of test
//! bodies, run by `test_device!` on each backend this build and machine have.
//!
//! - `NAME::cpu`: a second CPU backend with another thread count, so the bodies' error cases run
//!   everywhere and a result that depends on the number of workers fails;
//! - `NAME::ascend` (feature `ascend`): govbox's Ascend simulator (`drivers/ascend-sim`);
//! - `NAME::cuda` (feature `cuda`): `cuda:0`. Where it does not open (no driver, no device) the
//!   test prints "SKIPPED: no CUDA device" and passes, unless `GOVBOX_REQUIRE_CUDA=1`, when it
//!   fails: the GPU check script sets it so that a broken device run cannot look green.
//!
//! Tolerances, per value `a` (device) against `b` (CPU) of an output `B`:
//! `|a - b| <= tol * (|b| + rms(B))`.
//! - `tol = 1e-4` wherever both backends compute from the same values in f32: only the order of
//!   additions, fused multiply-adds and the math functions (exp, erf, sin, cos) differ, each
//!   worth a few ulp, which accumulate to ~1e-6 relative over the row lengths used here.
//! - `tol = 1e-2` for the block formats that CUDA de-quantises to BF16 at upload (Q4_0, Q4_1,
//!   Q5_0) while the CPU reads them exactly: BF16 keeps 8 significant bits, so each weight moves
//!   by at most 2^-9 of itself, and over a dot product those errors add like a random walk.
//! - Paged attention over a `q8_0` pool is held to 1e-4 too: both backends quantise the same
//!   f32 rows into the same blocks (the CPU as llama.cpp, `x · (1 / d)`; the simulator's
//!   aclnnDynamicQuant as CANN documents it, `x / d`, both rounding half away from zero). The two
//!   differ only for a value within an f32 ulp of a half step, which these inputs do not hit; a
//!   wrong scale or block layout moves outputs by whole quantisation steps (~1e-2).
//! - A matmul over block-quantised weights may also differ by the CPU's 8-bit activations: where
//!   its kernels quantise the activations per 32-value block (scale amax / 127, as llama.cpp
//!   does), each output moves by at most the sum over blocks of (amax / 254) x sum |w|.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[cfg(feature = "ascend")]
mod common {
    pub mod ascend_sim;
}

use govbox_drivers::cpu::CpuBackend;
use govbox_drivers::quant::quantize_row;
use govbox_drivers::{
    Backend, DType, DenseAttn, DriverError, HostBytes, KvCache, KvDType, KvSpec, PagedAttn, Rope, RopeStyle, SeqAttn,
    Tensor,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A backend under test, beside the CPU backend it is compared with.
struct Dev {
    name: &'static str,
    b: Box<dyn Backend>,
    cpu: CpuBackend,
    /// Whether the block formats it cannot read are de-quantised to BF16 at upload (CUDA).
    bf16_at_upload: bool,
}

impl Dev {
    fn new(name: &'static str, b: Box<dyn Backend>, bf16_at_upload: bool) -> Self {
        eprintln!("backend under test: {name}: {}", b.info().name);
        Dev { name, b, cpu: CpuBackend::new(2).unwrap(), bf16_at_upload }
    }

    /// The tolerance for results computed from weights stored as `dt` (see the module doc).
    fn tol(&self, dt: DType) -> f32 {
        let exact = matches!(dt, DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0);
        if self.bf16_at_upload && !exact { 1e-2 } else { 1e-4 }
    }

    /// The same values as an F32 tensor on the device and on the CPU.
    fn both(&self, v: &[f32], shape: &[usize]) -> (Tensor, Tensor) {
        (self.b.upload_f32(v, shape).unwrap(), self.cpu.upload_f32(v, shape).unwrap())
    }

    /// The same weight bytes of `dt` on both (rows of `shape`'s last dimension).
    fn weight(&self, dt: DType, v: &[f32], shape: &[usize]) -> (Tensor, Tensor) {
        let bytes = weight_bytes(dt, v, *shape.last().unwrap());
        (
            self.b.upload(HostBytes::from_vec(bytes.clone()), dt, shape).unwrap(),
            self.cpu.upload(HostBytes::from_vec(bytes), dt, shape).unwrap(),
        )
    }

    /// Checks a device result against the CPU's.
    fn check(&self, what: &str, got: Tensor, want: Tensor, tol: f32) {
        assert_eq!(got.shape(), want.shape(), "{what}: shapes");
        let (a, b) = (self.b.download_f32(&got).unwrap(), self.cpu.download_f32(&want).unwrap());
        close(&format!("{} {what}", self.name), &a, &b, tol);
    }

    /// Whether tensors of the CPU backend are foreign to this one.
    fn foreign_to_cpu(&self) -> bool {
        self.name != "cpu"
    }
}

fn weight_bytes(dt: DType, v: &[f32], k: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for row in v.chunks(k) {
        quantize_row(dt, row, &mut bytes).unwrap();
    }
    bytes
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    close_plus(what, a, b, tol, |_| 0.0)
}

/// [`close`], with `extra(i)` more allowed for value `i`.
fn close_plus(what: &str, a: &[f32], b: &[f32], tol: f32, extra: impl Fn(usize) -> f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let rms = (b.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / b.len().max(1) as f64).sqrt() as f32;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let bound = tol * (y.abs() + rms) + extra(i);
        assert!(
            (x - y).abs() <= bound || (x.is_nan() && y.is_nan()),
            "{what}[{i}]: device {x} cpu {y} (bound {bound})"
        );
    }
}

/// The CPU backend with one worker (the reference has two).
fn cpu() -> Dev {
    Dev::new("cpu", Box::new(CpuBackend::new(1).unwrap()), false)
}

/// The Ascend backend on govbox's simulator.
#[cfg(feature = "ascend")]
fn ascend() -> Dev {
    let lib = common::ascend_sim::sim_lib();
    let b = govbox_drivers::ascend::AscendBackend::open_with_library(&lib, 0)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    let info = b.info();
    assert!(info.simulated && info.name.contains("(simulated)"), "{} is not the simulator: {info:?}", lib.display());
    Dev::new("ascend", Box::new(b), false)
}

/// `cuda:0`, or `None` (after saying so) when it does not open and GOVBOX_REQUIRE_CUDA is not 1.
#[cfg(feature = "cuda")]
fn cuda() -> Option<Dev> {
    match govbox_drivers::cuda::CudaBackend::open(0) {
        Ok(b) => Some(Dev::new("cuda", Box::new(b), true)),
        Err(e) if std::env::var("GOVBOX_REQUIRE_CUDA").as_deref() != Ok("1") => {
            eprintln!("SKIPPED: no CUDA device ({e})");
            None
        }
        Err(e) => panic!("GOVBOX_REQUIRE_CUDA=1 but cuda:0 did not open: {e}"),
    }
}

/// Defines `name::cpu`, `name::ascend` (feature `ascend`) and `name::cuda` (feature `cuda`),
/// each calling `body` (a `fn(&Dev)`) with that backend.
macro_rules! test_device {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$body(&super::cpu())
            }

            #[cfg(feature = "ascend")]
            #[test]
            fn ascend() {
                super::$body(&super::ascend())
            }

            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                if let Some(d) = super::cuda() {
                    super::$body(&d)
                }
            }
        }
    };
}

test_device!(norms_and_elementwise_ops, norms_and_elementwise_ops_match_cpu);
fn norms_and_elementwise_ops_match_cpu(d: &Dev) {
    let mut rng = StdRng::seed_from_u64(3);
    for (rows, n) in [(1usize, 64usize), (5, 896), (3, 5000)] {
        let (gx, cx) = d.both(&rand_vec(&mut rng, rows * n, 3.0), &[rows, n]);
        let (gr, cr) = d.both(&rand_vec(&mut rng, rows * n, 1.0), &[rows, n]);
        for wdt in [DType::F32, DType::BF16] {
            let (gw, cw) = d.weight(wdt, &rand_vec(&mut rng, n, 1.0), &[n]);
            let (gb, cb) = d.weight(wdt, &rand_vec(&mut rng, n, 1.0), &[n]);
            let w = format!("{rows}x{n} {wdt}");
            let (b, c) = (&d.b, &d.cpu);
            d.check(
                &format!("rms_norm {w}"),
                b.rms_norm(&gx, &gw, 1e-6).unwrap(),
                c.rms_norm(&cx, &cw, 1e-6).unwrap(),
                1e-4,
            );
            d.check(
                &format!("layer_norm {w}"),
                b.layer_norm(&gx, &gw, &gb, 1e-5).unwrap(),
                c.layer_norm(&cx, &cw, &cb, 1e-5).unwrap(),
                1e-4,
            );
            d.check(
                &format!("add_layer_norm {w}"),
                b.add_layer_norm(&gx, &gr, &gw, &gb, 1e-12).unwrap(),
                c.add_layer_norm(&cx, &cr, &cw, &cb, 1e-12).unwrap(),
                1e-4,
            );
            d.check(&format!("add row {w}"), b.add(&gx, &gb).unwrap(), c.add(&cx, &cb).unwrap(), 1e-4);
        }
        let (b, c) = (&d.b, &d.cpu);
        let w = format!("{rows}x{n}");
        d.check(&format!("swiglu {w}"), b.swiglu(&gx, &gr).unwrap(), c.swiglu(&cx, &cr).unwrap(), 1e-4);
        d.check(&format!("gelu {w}"), b.gelu(&gx).unwrap(), c.gelu(&cx).unwrap(), 1e-4);
        d.check(&format!("add {w}"), b.add(&gx, &gr).unwrap(), c.add(&cx, &cr).unwrap(), 1e-4);
        d.check(&format!("scale {w}"), b.scale(&gx, -0.37).unwrap(), c.scale(&cx, -0.37).unwrap(), 1e-4);
        let picks = [rows - 1, 0, rows / 2, rows - 1];
        d.check(
            &format!("gather_rows {w}"),
            b.gather_rows(&gx, &picks).unwrap(),
            c.gather_rows(&cx, &picks).unwrap(),
            1e-4,
        );
    }
    // Bad shapes are errors, not launches.
    let (ga, ca) = d.both(&[1.0; 6], &[2, 3]);
    let (gb, _) = d.both(&[1.0; 4], &[4]);
    assert!(matches!(d.b.add(&ga, &gb), Err(DriverError::Shape { .. })));
    assert!(matches!(d.b.gather_rows(&ga, &[2]), Err(DriverError::Shape { .. })));
    if d.foreign_to_cpu() {
        assert!(matches!(d.b.gelu(&ca), Err(DriverError::ForeignTensor { .. })));
    }
}

test_device!(rope, rope_matches_cpu_in_both_styles_with_partial_rotation);
fn rope_matches_cpu_in_both_styles_with_partial_rotation(d: &Dev) {
    let mut rng = StdRng::seed_from_u64(4);
    for style in [RopeStyle::Half, RopeStyle::Interleaved] {
        for (n_heads, head_dim, rotated) in [(4usize, 64usize, 64usize), (3, 80, 40), (2, 128, 128), (4, 16, 12)] {
            let rows = 7;
            let inv_freq: Vec<f32> =
                (0..rotated / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / rotated as f32)).collect();
            let positions: Vec<u32> = (0..rows as u32).map(|i| i * 997 % 4000).collect();
            let r = Rope { n_heads, head_dim, inv_freq: &inv_freq, style, positions: &positions };
            let (gx, cx) = d.both(&rand_vec(&mut rng, rows * n_heads * head_dim, 2.0), &[rows, n_heads * head_dim]);
            let what = format!("rope {style:?} {n_heads}x{head_dim} rot {rotated}");
            d.check(&what, d.b.rope(&gx, &r).unwrap(), d.cpu.rope(&cx, &r).unwrap(), 1e-4);
        }
    }
}

/// The most a quantised matmul's output `o` may move by the CPU's 8-bit activations.
fn activation_bound(x: &[f32], w: &[f32], o: usize, n: usize, k: usize) -> f32 {
    let (row, col) = (o / n, o % n);
    let (xr, wr) = (&x[row * k..(row + 1) * k], &w[col * k..(col + 1) * k]);
    xr.chunks(32)
        .zip(wr.chunks(32))
        .map(|(xb, wb)| xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 254.0 * wb.iter().map(|v| v.abs()).sum::<f32>())
        .sum()
}

test_device!(matmul_and_linear, matmul_and_linear_match_cpu_for_every_weight_format_and_row_count);
fn matmul_and_linear_match_cpu_for_every_weight_format_and_row_count(d: &Dev) {
    let mut rng = StdRng::seed_from_u64(1);
    for dt in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_1, DType::Q5_0] {
        let tol = d.tol(dt);
        // k = 96 is not a multiple of 8·32 lanes (tails), 100 not a multiple of 8 (scalar path).
        for k in [64usize, 96, 100, 512] {
            if dt.row_bytes(k).is_none() {
                continue;
            }
            for n in [1usize, 37, 130] {
                let wv = rand_vec(&mut rng, n * k, 1.0);
                let (gw, cw) = d.weight(dt, &wv, &[n, k]);
                let (gb, cb) = d.both(&rand_vec(&mut rng, n, 0.5), &[n]);
                // 8 and 9 rows: either side of CUDA's decode kernel limit.
                for m in [1usize, 3, 8, 9, 40] {
                    let xv = rand_vec(&mut rng, m * k, 1.0);
                    let (gx, cx) = d.both(&xv, &[m, k]);
                    // The 8-bit activation bound for block formats (times 1.2 after GELU, whose
                    // slope is at most 1.13), nothing for the float formats.
                    let extra = |o: usize, gelu: bool| {
                        let b = if dt.is_quantized() { 1.1 * activation_bound(&xv, &wv, o, n, k) } else { 0.0 };
                        if gelu { 1.2 * b } else { b }
                    };
                    let what = format!("{} matmul {dt} m{m} n{n} k{k}", d.name);
                    let (gy, cy) = (d.b.matmul(&gx, &gw).unwrap(), d.cpu.matmul(&cx, &cw).unwrap());
                    assert_eq!(gy.shape(), [m, n]);
                    close_plus(&what, &d.b.download_f32(&gy).unwrap(), &d.cpu.download_f32(&cy).unwrap(), tol, |o| {
                        extra(o, false)
                    });
                    for gelu in [false, true] {
                        let (gy, cy) =
                            (d.b.linear(&gx, &gw, &gb, gelu).unwrap(), d.cpu.linear(&cx, &cw, &cb, gelu).unwrap());
                        let (got, want) = (d.b.download_f32(&gy).unwrap(), d.cpu.download_f32(&cy).unwrap());
                        close_plus(&format!("linear gelu={gelu} {what}"), &got, &want, tol, |o| extra(o, gelu));
                    }
                }
            }
        }
    }
    let notes = d.b.info().notes;
    if d.foreign_to_cpu() {
        assert!(notes.iter().any(|n| n.starts_with("Q4_1 weights de-quantised to")), "{notes:?}");
        assert!(!notes.iter().any(|n| n.starts_with("Q8_0")), "{notes:?}");
    }
    let (gx, _) = d.both(&[0.5; 6], &[2, 3]);
    let (gw, _) = d.both(&[0.5; 8], &[4, 2]);
    assert!(matches!(d.b.matmul(&gx, &gw), Err(DriverError::Shape { .. })), "a weight of the wrong width is refused");
}

test_device!(embedding, embedding_matches_cpu_for_every_table_format);
fn embedding_matches_cpu_for_every_table_format(d: &Dev) {
    let mut rng = StdRng::seed_from_u64(5);
    let (vocab, dim) = (300usize, 128usize);
    let tv = rand_vec(&mut rng, vocab * dim, 1.0);
    let ids = [0u32, 299, 17, 17, 150];
    for dt in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0] {
        let (gt, ct) = d.weight(dt, &tv, &[vocab, dim]);
        let gy = d.b.embedding(&gt, &ids).unwrap();
        assert_eq!(gy.shape(), [ids.len(), dim]);
        d.check(&format!("embedding {dt}"), gy, d.cpu.embedding(&ct, &ids).unwrap(), d.tol(dt));
        assert!(matches!(d.b.embedding(&gt, &[300]), Err(DriverError::TokenOutOfRange { id: 300, vocab: 300 })));
    }
}

test_device!(paged_attention, paged_attention_matches_cpu);
/// Runs the same paged-attention calls on both backends, for each pool type the device stores:
/// two sequences over scattered blocks, grouped-query heads, prefills and then decode steps in
/// one batch. Then the argument checks.
fn paged_attention_matches_cpu(d: &Dev) {
    let mut rng = StdRng::seed_from_u64(6);
    for (nh, nkv, hd) in [(4usize, 2usize, 64usize), (14, 2, 64), (2, 2, 128), (8, 1, 256), (3, 3, 40)] {
        for dtype in KvDType::ALL {
            if !hd.is_multiple_of(dtype.block_len()) {
                // q8_0 stores whole blocks of 32 values: a head of 40 has no such pool anywhere.
                continue;
            }
            let spec = KvSpec { n_layers: 2, n_kv_heads: nkv, head_dim: hd, block_size: 4, n_blocks: 16, dtype };
            let mut gk = match d.b.new_kv_cache(spec) {
                Ok(c) => c,
                Err(DriverError::KvDType { dtype: refused, backend, .. }) => {
                    // A pool type the device does not store is refused by name, before any
                    // allocation. Only CUDA's q8_0 is: the simulator stores all three types, so
                    // its q8_0 must match the CPU's below, not be skipped.
                    assert_eq!((refused, backend), (dtype, d.name));
                    assert!(d.name == "cuda" && dtype == KvDType::Q8_0, "{} refused a {dtype} pool", d.name);
                    continue;
                }
                Err(e) => panic!("{} {dtype} pool: {e}", d.name),
            };
            let mut ck = d.cpu.new_kv_cache(spec).unwrap();
            let (table_a, table_b) = ([3u32, 7, 1, 9], [5u32, 12, 2, 14]);
            let mut step = |seqs: &[SeqAttn<'_>], layer: usize, gk: &mut dyn KvCache, ck: &mut dyn KvCache| {
                let rows: usize = seqs.iter().map(|s| s.n_new).sum();
                let (gq, cq) = d.both(&rand_vec(&mut rng, rows * nh * hd, 1.0), &[rows, nh * hd]);
                let (gkk, ckk) = d.both(&rand_vec(&mut rng, rows * nkv * hd, 1.0), &[rows, nkv * hd]);
                let (gv, cv) = d.both(&rand_vec(&mut rng, rows * nkv * hd, 1.0), &[rows, nkv * hd]);
                let scale = 1.0 / (hd as f32).sqrt();
                let a = PagedAttn { layer, n_heads: nh, n_kv_heads: nkv, head_dim: hd, scale, seqs };
                let go = d.b.attention(&gq, &gkk, &gv, gk, &a).unwrap();
                let co = d.cpu.attention(&cq, &ckk, &cv, ck, &a).unwrap();
                d.check(&format!("attention {nh}/{nkv}x{hd} ({dtype} pool) layer {layer} rows {rows}"), go, co, 1e-4);
            };
            for layer in 0..2 {
                step(&[SeqAttn { block_table: &table_a, start_pos: 0, n_new: 6 }], layer, gk.as_mut(), ck.as_mut());
            }
            for layer in 0..2 {
                let seqs = [
                    SeqAttn { block_table: &table_b, start_pos: 0, n_new: 9 },
                    SeqAttn { block_table: &table_a, start_pos: 6, n_new: 1 },
                ];
                step(&seqs, layer, gk.as_mut(), ck.as_mut());
            }
            for pos in 7..13 {
                for layer in 0..2 {
                    let seqs = [
                        SeqAttn { block_table: &table_a, start_pos: pos, n_new: 1 },
                        SeqAttn { block_table: &table_b, start_pos: pos + 2, n_new: 1 },
                    ];
                    step(&seqs, layer, gk.as_mut(), ck.as_mut());
                }
            }
            // A position without a block, a block outside the pool, shapes that are not the
            // pool's: errors, and nothing written.
            let (q, _) = d.both(&vec![0.0; nh * hd], &[1, nh * hd]);
            let (kv, _) = d.both(&vec![0.0; nkv * hd], &[1, nkv * hd]);
            let a = |seqs| PagedAttn { layer: 0, n_heads: nh, n_kv_heads: nkv, head_dim: hd, scale: 1.0, seqs };
            let short = [SeqAttn { block_table: &table_a[..1], start_pos: 4, n_new: 1 }];
            assert!(matches!(d.b.attention(&q, &kv, &kv, gk.as_mut(), &a(&short)), Err(DriverError::KvCache(_))));
            let outside = [SeqAttn { block_table: &[16], start_pos: 0, n_new: 1 }];
            assert!(matches!(d.b.attention(&q, &kv, &kv, gk.as_mut(), &a(&outside)), Err(DriverError::KvCache(_))));
            let one = [SeqAttn { block_table: &table_a, start_pos: 0, n_new: 1 }];
            let e = d.b.attention(&q, &q, &q, gk.as_mut(), &a(&one));
            assert!(nh == nkv || matches!(e, Err(DriverError::Shape { op: "attention", .. })), "{e:?}");
            let two = [SeqAttn { block_table: &table_a, start_pos: 0, n_new: 2 }];
            let e = d.b.attention(&q, &kv, &kv, gk.as_mut(), &a(&two));
            assert!(matches!(e, Err(DriverError::Shape { op: "attention", .. })), "{e:?}");
            let layer2 = PagedAttn { layer: 2, ..a(&one) };
            let e = d.b.attention(&q, &kv, &kv, gk.as_mut(), &layer2);
            assert!(matches!(e, Err(DriverError::Shape { op: "attention", .. })), "{e:?}");
            if d.foreign_to_cpu() {
                let e = d.b.attention(&q, &kv, &kv, ck.as_mut(), &a(&one));
                assert!(matches!(e, Err(DriverError::ForeignTensor { .. })), "{e:?}");
            }
        }
    }
}

test_device!(dense_attention, dense_attention_matches_cpu_with_padding);
fn dense_attention_matches_cpu_with_padding(d: &Dev) {
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
        let (gq, cq) = d.both(&rand_vec(&mut rng, rows * w, 1.0), &[rows, w]);
        let (gk, ck) = d.both(&rand_vec(&mut rng, rows * w, 1.0), &[rows, w]);
        let (gv, cv) = d.both(&rand_vec(&mut rng, rows * w, 1.0), &[rows, w]);
        let scale = 1.0 / (hd as f32).sqrt();
        let a = DenseAttn { batch, seq_len, n_heads: nh, head_dim: hd, scale, key_mask: &mask };
        let (go, co) =
            (d.b.attention_dense(&gq, &gk, &gv, &a).unwrap(), d.cpu.attention_dense(&cq, &ck, &cv, &a).unwrap());
        d.check(&format!("dense {batch}x{seq_len} {nh}x{hd}"), go, co, 1e-4);
    }
}

test_device!(uploads, uploads_are_checked_and_memory_is_counted);
fn uploads_are_checked_and_memory_is_counted(d: &Dev) {
    let b = &d.b;
    assert!(matches!(
        b.upload(HostBytes::from_vec(vec![0; 33]), DType::Q8_0, &[1, 32]),
        Err(DriverError::UploadSize { expected: 34, got: 33, .. })
    ));
    assert!(matches!(
        b.upload(HostBytes::from_vec(vec![0; 34]), DType::Q8_0, &[1, 33]),
        Err(DriverError::Shape { .. })
    ));
    assert!(matches!(
        b.upload(HostBytes::from_vec(vec![0; 8]), DType::F32, &[usize::MAX, 2]),
        Err(DriverError::Shape { .. })
    ));
    assert!(matches!(b.upload_f32(&[1.0; 5], &[2, 3]), Err(DriverError::UploadSize { expected: 24, got: 20, .. })));
    // A download waits for the device's queued work, after which freed memory is given back
    // (the Ascend backend frees in stream order).
    let small = b.upload_f32(&[0.0], &[1]).unwrap();
    let before = b.info();
    let t = b.upload_f32(&vec![1.0; 1 << 20], &[1024, 1024]).unwrap();
    if let Some(used) = before.memory_used {
        let during = b.info().memory_used.unwrap();
        assert!(during >= used + (4 << 20), "{} memory in use: {during} after {used}", d.name);
        drop(t);
        b.download_f32(&small).unwrap();
        assert_eq!(b.info().memory_used, Some(used), "{}: the tensor's memory is given back", d.name);
    }
}

/// CUDA's prefill GEMM de-quantises a weight in f32 panels of at most 64 MiB: at k = 4096 a
/// panel holds 4096 rows, so 5000 rows take two.
#[cfg(feature = "cuda")]
#[test]
fn cuda_prefill_gemm_spans_several_weight_panels() {
    let Some(d) = cuda() else { return };
    let mut rng = StdRng::seed_from_u64(2);
    let (n, k, m) = (5000usize, 4096usize, 16usize);
    let (gw, cw) = d.weight(DType::BF16, &rand_vec(&mut rng, n * k, 0.05), &[n, k]);
    let (gx, cx) = d.both(&rand_vec(&mut rng, m * k, 1.0), &[m, k]);
    d.check("panelled gemm", d.b.matmul(&gx, &gw).unwrap(), d.cpu.matmul(&cx, &cw).unwrap(), 1e-4);
    // NVML (the driver's libnvidia-ml) gives the temperature where it loads.
    let info = d.b.info();
    eprintln!("cuda:0 info: {info:?}");
    if let Some(t) = info.temperature_c {
        assert!((0.0..=120.0).contains(&t), "{t} °C");
    }
    assert!(info.memory_total.unwrap() > 0);
}
