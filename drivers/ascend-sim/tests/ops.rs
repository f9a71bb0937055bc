//! Each aclnn op against small hand-computed examples, through the exported C functions.

mod common;

use common::*;
use govbox_ascend_sim::*;
use half::{bf16, f16};

/// Builds with `$ws_call` (its last two arguments are filled in), launches with `$launch`,
/// synchronises; evaluates to the synchronisation status.
macro_rules! run {
    ($launch:ident, $ws_fn:ident ( $($arg:expr),* )) => {{
        let mut ws = 0u64;
        let mut ex = std::ptr::null_mut();
        // SAFETY: handles come from aclCreate*; ws/ex are writable.
        let st = unsafe { $ws_fn($($arg,)* &mut ws, &mut ex) };
        launch_and_sync(st, ws, ex, $launch)
    }};
}

#[test]
fn mm_with_a_transposed_weight_view() {
    init();
    // a [2,3]; the weight is stored [n=2, k=3] and viewed as [3,2] with strides [1,3].
    let a = upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let w = upload(&[1.0f32, 0.0, -1.0, 2.0, 1.0, 0.5]);
    let o = zeros::<f32>(4);
    let (ta, tw, to) = (tensor(&a, &[2, 3]), view(&w, &[3, 2], &[1, 3], 0), tensor(&o, &[2, 2]));
    assert_eq!(run!(aclnnMm, aclnnMmGetWorkspaceSize(ta, tw, to, 0)), 0, "{}", msg());
    // row0: [1*1+2*0+3*-1, 1*2+2*1+3*0.5] = [-2, 5.5]; row1: [4-6, 8+5+3] = [-2, 16]
    assert_eq!(download::<f32>(&o), vec![-2.0, 5.5, -2.0, 16.0]);
}

#[test]
fn mm_in_f16_writes_through_output_strides() {
    init();
    let a = upload(&[1.0f32, 2.0, 3.0, 4.0].map(f16::from_f32));
    let b = upload(&[5.0f32, 6.0, 7.0, 8.0].map(f16::from_f32));
    // out [2,2] written transposed into its buffer (strides [1,2]).
    let o = zeros::<f16>(4);
    let (ta, tb, to) = (tensor(&a, &[2, 2]), tensor(&b, &[2, 2]), view(&o, &[2, 2], &[1, 2], 0));
    assert_eq!(run!(aclnnMm, aclnnMmGetWorkspaceSize(ta, tb, to, 1)), 0, "{}", msg());
    // [[19,22],[43,50]] stored column-major.
    let got: Vec<f32> = download::<f16>(&o).iter().map(|v| v.to_f32()).collect();
    assert_eq!(got, vec![19.0, 43.0, 22.0, 50.0]);
}

#[test]
fn matmul_broadcasts_batch_dims() {
    init();
    // a [2,1,2] (batch 2), b [2,2] broadcast to both batches.
    let a = upload(&[1.0f32, 2.0, 3.0, 4.0]);
    let b = upload(&[1.0f32, 1.0, 0.0, 2.0]);
    let o = zeros::<f32>(4);
    let (ta, tb, to) = (tensor(&a, &[2, 1, 2]), tensor(&b, &[2, 2]), tensor(&o, &[2, 1, 2]));
    assert_eq!(run!(aclnnMatmul, aclnnMatmulGetWorkspaceSize(ta, tb, to, 0)), 0, "{}", msg());
    // [1,2]@b = [1, 5]; [3,4]@b = [3, 11]
    assert_eq!(download::<f32>(&o), vec![1.0, 5.0, 3.0, 11.0]);

    // mat2 with its own batch [2,2,1] against self [1,2] (broadcast the other way, 2-D self).
    let b2 = upload(&[1.0f32, 0.0, 0.0, 1.0]);
    let o2 = zeros::<f32>(2);
    let (tb2, to2) = (tensor(&b2, &[2, 2, 1]), tensor(&o2, &[2, 1, 1]));
    let ta2 = view(&a, &[1, 2], &[2, 1], 2); // row [3,4]
    assert_eq!(run!(aclnnMatmul, aclnnMatmulGetWorkspaceSize(ta2, tb2, to2, 0)), 0, "{}", msg());
    assert_eq!(download::<f32>(&o2), vec![3.0, 4.0]);
}

/// Reference: y = x @ ((q + off) * scale[row / group]) + bias, plain loops.
#[allow(clippy::too_many_arguments)]
fn wq_reference(
    x: &[f32],
    q_kn: &[i8],
    scale: &[f32],
    off: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
    group: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                let g = p / group;
                acc += x[i * k + p] * ((q_kn[p * n + j] as f32 + off[g * n + j]) * scale[g * n + j]);
            }
            y[i * n + j] = acc + bias[j];
        }
    }
    y
}

#[test]
fn weight_quant_matmul_per_channel_by_hand() {
    init();
    // x [1,2], weight int8 [k=2, n=2] = [[1,2],[3,4]], per-channel scale [2] = [0.5, 2], no offset.
    let x = upload(&[1.0f32, 1.0].map(f16::from_f32));
    let w = upload(&[1i8, 2, 3, 4]);
    let s = upload(&[0.5f32, 2.0].map(f16::from_f32));
    let y = zeros::<f16>(2);
    let (tx, tw, ts, ty) = (tensor(&x, &[1, 2]), tensor(&w, &[2, 2]), tensor(&s, &[2]), tensor(&y, &[1, 2]));
    let null = std::ptr::null();
    assert_eq!(
        run!(
            aclnnWeightQuantBatchMatmulV2,
            aclnnWeightQuantBatchMatmulV2GetWorkspaceSize(tx, tw, ts, null, null, null, null, 0, ty)
        ),
        0,
        "{}",
        msg()
    );
    // column 0: (1+3)*0.5 = 2; column 1: (2+4)*2 = 12
    let got: Vec<f32> = download::<f16>(&y).iter().map(|v| v.to_f32()).collect();
    assert_eq!(got, vec![2.0, 12.0]);
}

#[test]
fn weight_quant_matmul_q8_group_32_transposed_with_offset_and_bias() {
    init();
    let (m, k, n, group) = (3usize, 64usize, 5usize, 32usize);
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 / 8.0 - 0.6).collect();
    let q_kn: Vec<i8> = (0..k * n).map(|i| ((i * 37) % 255) as i32 - 127).map(|v| v as i8).collect();
    let g = k / group;
    let scale: Vec<f32> = (0..g * n).map(|i| f16::from_f32(0.01 + i as f32 * 0.003).to_f32()).collect();
    let off: Vec<f32> = (0..g * n).map(|i| f16::from_f32(i as f32 - 4.0).to_f32()).collect();
    let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25).collect();
    // Store the weight as [n, k] (how checkpoints hold it) and view it as [k, n] strides [1, k].
    let mut q_nk = vec![0i8; k * n];
    for p in 0..k {
        for j in 0..n {
            q_nk[j * k + p] = q_kn[p * n + j];
        }
    }
    let xb = upload(&x);
    let wb = upload(&q_nk);
    let sb = upload(&scale.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>());
    let ob = upload(&off.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>());
    let bb = upload(&bias);
    let yb = zeros::<f32>(m * n);
    let tx = tensor(&xb, &[m as i64, k as i64]);
    let tw = view(&wb, &[k as i64, n as i64], &[1, k as i64], 0);
    let ts = tensor(&sb, &[g as i64, n as i64]);
    let to = tensor(&ob, &[g as i64, n as i64]);
    let tb = tensor(&bb, &[n as i64]);
    let ty = tensor(&yb, &[m as i64, n as i64]);
    let null = std::ptr::null();
    let st = run!(
        aclnnWeightQuantBatchMatmulV2,
        aclnnWeightQuantBatchMatmulV2GetWorkspaceSize(tx, tw, ts, to, null, null, tb, group as i32, ty)
    );
    assert_eq!(st, 0, "{}", msg());
    let want = wq_reference(&x, &q_kn, &scale, &off, &bias, m, k, n, group);
    assert_close(&download::<f32>(&yb), &want, 1e-4);

    // A group size that is not a multiple of 32 is refused with a clear message.
    let mut ws = 0u64;
    let mut ex = std::ptr::null_mut();
    // SAFETY: handles are live; outputs writable.
    let r = unsafe {
        aclnnWeightQuantBatchMatmulV2GetWorkspaceSize(tx, tw, ts, to, null, null, tb, 16, ty, &mut ws, &mut ex)
    };
    assert_eq!(r, codes::ACLNN_ERR_PARAM_INVALID);
    assert!(msg().contains("antiquantGroupSize 16"));
}

#[test]
fn rms_norm_and_rstd() {
    init();
    let x = upload(&[1.0f32, 2.0, 3.0, 4.0, 0.0, 0.0]);
    let g = upload(&[1.0f32, 0.5]);
    let y = zeros::<f32>(6);
    let r = zeros::<f32>(3);
    let (tx, tg, ty, tr) = (tensor(&x, &[3, 2]), tensor(&g, &[2]), tensor(&y, &[3, 2]), tensor(&r, &[3, 1]));
    assert_eq!(run!(aclnnRmsNorm, aclnnRmsNormGetWorkspaceSize(tx, tg, 1e-6, ty, tr)), 0, "{}", msg());
    let r0 = 1.0 / ((1.0f64 + 4.0) / 2.0 + 1e-6).sqrt();
    let r1 = 1.0 / ((9.0f64 + 16.0) / 2.0 + 1e-6).sqrt();
    let r2 = 1.0 / (1e-6f64).sqrt();
    let want = [r0, 2.0 * r0 * 0.5, 3.0 * r1, 4.0 * r1 * 0.5, 0.0, 0.0].map(|v| v as f32);
    assert_close(&download::<f32>(&y), &want, 1e-6);
    assert_close(&download::<f32>(&r), &[r0 as f32, r1 as f32, r2 as f32], 1e-6);
}

#[test]
fn layer_norm_with_weight_bias_mean_rstd() {
    init();
    let x = upload(&[1.0f32, 3.0, 2.0, 2.0]);
    let w = upload(&[2.0f32, 1.0]);
    let b = upload(&[0.0f32, 10.0]);
    let o = zeros::<f32>(4);
    let mean = zeros::<f32>(2);
    let rstd = zeros::<f32>(2);
    let shape = [2i64];
    // SAFETY: one readable i64.
    let ns = unsafe { aclCreateIntArray(shape.as_ptr(), 1) };
    let (tx, tw, tb, to) = (tensor(&x, &[2, 2]), tensor(&w, &[2]), tensor(&b, &[2]), tensor(&o, &[2, 2]));
    let (tm, tr) = (tensor(&mean, &[2, 1]), tensor(&rstd, &[2, 1]));
    assert_eq!(run!(aclnnLayerNorm, aclnnLayerNormGetWorkspaceSize(tx, ns, tw, tb, 1e-5, to, tm, tr)), 0, "{}", msg());
    // row0: mean 2, var 1 -> [-1, 1] * rstd; row1: mean 2, var 0 -> 0
    let r0 = 1.0 / (1.0f64 + 1e-5).sqrt();
    let r1 = 1.0 / (1e-5f64).sqrt();
    assert_close(&download::<f32>(&o), &[(-2.0 * r0) as f32, (r0 + 10.0) as f32, 0.0, 10.0], 1e-6);
    assert_close(&download::<f32>(&mean), &[2.0, 2.0], 0.0);
    assert_close(&download::<f32>(&rstd), &[r0 as f32, r1 as f32], 1e-6);

    // Without the optional tensors (NULL).
    let o2 = zeros::<f32>(4);
    let to2 = tensor(&o2, &[2, 2]);
    let null = std::ptr::null_mut();
    assert_eq!(
        run!(aclnnLayerNorm, aclnnLayerNormGetWorkspaceSize(tx, ns, null, null, 1e-5, to2, null, null)),
        0,
        "{}",
        msg()
    );
    assert_close(&download::<f32>(&o2), &[-r0 as f32, r0 as f32, 0.0, 0.0], 1e-6);
}

fn rope_case(mode: i64) -> (Vec<f32>, Vec<f32>) {
    init();
    // x [B=1, S=2, N=2, D=4]; cos/sin [1, S, 1, D] broadcast over heads.
    let xs: Vec<f32> = (0..16).map(|i| i as f32 + 1.0).collect();
    let cs: Vec<f32> = (0..8).map(|i| 0.1 * i as f32).collect();
    let sn: Vec<f32> = (0..8).map(|i| 1.0 - 0.05 * i as f32).collect();
    let (x, c, s, o) = (upload(&xs), upload(&cs), upload(&sn), zeros::<f32>(16));
    let (tx, tc, ts, to) =
        (tensor(&x, &[1, 2, 2, 4]), tensor(&c, &[1, 2, 1, 4]), tensor(&s, &[1, 2, 1, 4]), tensor(&o, &[1, 2, 2, 4]));
    assert_eq!(
        run!(aclnnRotaryPositionEmbedding, aclnnRotaryPositionEmbeddingGetWorkspaceSize(tx, tc, ts, mode, to)),
        0,
        "{}",
        msg()
    );
    let mut want = vec![0f32; 16];
    for sidx in 0..2 {
        for h in 0..2 {
            let xb = &xs[(sidx * 2 + h) * 4..(sidx * 2 + h) * 4 + 4];
            let cb = &cs[sidx * 4..sidx * 4 + 4];
            let sb = &sn[sidx * 4..sidx * 4 + 4];
            let out = &mut want[(sidx * 2 + h) * 4..(sidx * 2 + h) * 4 + 4];
            if mode == 0 {
                // rotate_half([x0,x1,x2,x3]) = [-x2,-x3,x0,x1]
                let rot = [-xb[2], -xb[3], xb[0], xb[1]];
                for i in 0..4 {
                    out[i] = xb[i] * cb[i] + rot[i] * sb[i];
                }
            } else {
                for p in 0..2 {
                    out[2 * p] = xb[2 * p] * cb[2 * p] - xb[2 * p + 1] * sb[2 * p];
                    out[2 * p + 1] = xb[2 * p + 1] * cb[2 * p + 1] + xb[2 * p] * sb[2 * p + 1];
                }
            }
        }
    }
    (download::<f32>(&o), want)
}

#[test]
fn rope_half_mode() {
    let (got, want) = rope_case(0);
    assert_close(&got, &want, 1e-6);
    // One element by hand: x[0..4] = [1,2,3,4], cos[0] = 0, sin[0] = 1 -> 1*0 + (-3)*1 = -3
    assert_eq!(got[0], -3.0);
}

#[test]
fn rope_interleave_mode() {
    let (got, want) = rope_case(1);
    assert_close(&got, &want, 1e-6);
    // x0*cos0 - x1*sin0 = 1*0 - 2*1 = -2
    assert_eq!(got[0], -2.0);
}

#[test]
fn rope_in_bf16_with_seq_first_cos() {
    init();
    // x [S=2, N=1, D=2]; cos/sin [2, 1, 2] in bf16.
    let bf = |v: &[f32]| v.iter().map(|x| bf16::from_f32(*x)).collect::<Vec<_>>();
    let (x, c, s, o) = (
        upload(&bf(&[1.0, 2.0, 3.0, 4.0])),
        upload(&bf(&[1.0, 1.0, 0.0, 0.0])),
        upload(&bf(&[0.0, 0.0, 1.0, 1.0])),
        zeros::<bf16>(4),
    );
    let (tx, tc, ts, to) =
        (tensor(&x, &[2, 1, 2]), tensor(&c, &[2, 1, 2]), tensor(&s, &[2, 1, 2]), tensor(&o, &[2, 1, 2]));
    assert_eq!(
        run!(aclnnRotaryPositionEmbedding, aclnnRotaryPositionEmbeddingGetWorkspaceSize(tx, tc, ts, 0, to)),
        0,
        "{}",
        msg()
    );
    // position 0: identity; position 1: [-4, 3]
    let got: Vec<f32> = download::<bf16>(&o).iter().map(|v| v.to_f32()).collect();
    assert_eq!(got, vec![1.0, 2.0, -4.0, 3.0]);
}

#[test]
fn softmax_any_dim() {
    init();
    let x = upload(&[0.0f32, 1.0, 2.0, 0.0]);
    let o = zeros::<f32>(4);
    let (tx, to) = (tensor(&x, &[2, 2]), tensor(&o, &[2, 2]));
    assert_eq!(run!(aclnnSoftmax, aclnnSoftmaxGetWorkspaceSize(tx, -1, to)), 0, "{}", msg());
    let e = std::f32::consts::E;
    assert_close(
        &download::<f32>(&o),
        &[1.0 / (1.0 + e), e / (1.0 + e), e * e / (e * e + 1.0), 1.0 / (e * e + 1.0)],
        1e-6,
    );
    assert_eq!(run!(aclnnSoftmax, aclnnSoftmaxGetWorkspaceSize(tx, 0, to)), 0, "{}", msg());
    // columns: [0,2] and [1,0]
    assert_close(
        &download::<f32>(&o),
        &[1.0 / (1.0 + e * e), e / (e + 1.0), e * e / (1.0 + e * e), 1.0 / (e + 1.0)],
        1e-6,
    );
}

fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

#[test]
fn swiglu_silu_gelu() {
    init();
    let x = upload(&[1.0f32, -2.0, 3.0, 4.0]);
    let o = zeros::<f32>(2);
    let (tx, to) = (tensor(&x, &[1, 4]), tensor(&o, &[1, 2]));
    assert_eq!(run!(aclnnSwiGlu, aclnnSwiGluGetWorkspaceSize(tx, -1, to)), 0, "{}", msg());
    assert_close(&download::<f32>(&o), &[silu(1.0) * 3.0, silu(-2.0) * 4.0], 1e-6);

    let o4 = zeros::<f32>(4);
    let to4 = tensor(&o4, &[1, 4]);
    assert_eq!(run!(aclnnSilu, aclnnSiluGetWorkspaceSize(tx, to4)), 0, "{}", msg());
    assert_close(&download::<f32>(&o4), &[silu(1.0), silu(-2.0), silu(3.0), silu(4.0)], 1e-6);

    assert_eq!(run!(aclnnGelu, aclnnGeluGetWorkspaceSize(tx, to4)), 0, "{}", msg());
    // exact GELU: gelu(1) = 0.8413447, gelu(-2) = -0.04550026, gelu(3) = 2.9959502, gelu(4) = 3.9998734
    assert_close(&download::<f32>(&o4), &[0.841_344_8, -0.045_500_26, 2.995_950_2, 3.999_873_4], 1e-6);
}

#[test]
fn add_mul_muls_broadcast() {
    init();
    let a = upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = upload(&[10.0f32, 20.0, 30.0]);
    let o = zeros::<f32>(6);
    let (ta, tb, to) = (tensor(&a, &[2, 3]), tensor(&b, &[3]), tensor(&o, &[2, 3]));
    let alpha = scalar_f32(0.5);
    assert_eq!(run!(aclnnAdd, aclnnAddGetWorkspaceSize(ta, tb, alpha, to)), 0, "{}", msg());
    assert_eq!(download::<f32>(&o), vec![6.0, 12.0, 18.0, 9.0, 15.0, 21.0]);
    // Column vector [2,1] times row [3] -> [2,3]
    let tcol = view(&b, &[2, 1], &[1, 1], 0); // [10, 20]
    assert_eq!(run!(aclnnMul, aclnnMulGetWorkspaceSize(tcol, tb, to)), 0, "{}", msg());
    assert_eq!(download::<f32>(&o), vec![100.0, 200.0, 300.0, 200.0, 400.0, 600.0]);
    let three = scalar_f32(3.0);
    assert_eq!(run!(aclnnMuls, aclnnMulsGetWorkspaceSize(ta, three, to)), 0, "{}", msg());
    assert_eq!(download::<f32>(&o), vec![3.0, 6.0, 9.0, 12.0, 15.0, 18.0]);
    // SAFETY: live scalars.
    unsafe {
        assert_eq!(aclDestroyScalar(alpha), 0);
        assert_eq!(aclDestroyScalar(three), 0);
    }
}

#[test]
fn cast_and_strided_copy() {
    init();
    let a = upload(&[1.5f32, -2.7, 3.25, 70000.0]);
    let h = zeros::<f16>(4);
    let i = zeros::<i32>(4);
    let (ta, th, ti) = (tensor(&a, &[4]), tensor(&h, &[4]), tensor(&i, &[4]));
    assert_eq!(run!(aclnnCast, aclnnCastGetWorkspaceSize(ta, dt::ACL_FLOAT16, th)), 0, "{}", msg());
    let got: Vec<f32> = download::<f16>(&h).iter().map(|v| v.to_f32()).collect();
    assert_eq!(got, vec![1.5, f16::from_f32(-2.7).to_f32(), 3.25, f32::INFINITY]);
    assert_eq!(run!(aclnnCast, aclnnCastGetWorkspaceSize(ta, dt::ACL_INT32, ti)), 0, "{}", msg());
    assert_eq!(download::<i32>(&i), vec![1, -2, 3, 70000]);

    // Transpose copy: dst [3,2] contiguous = src [2,3] viewed transposed.
    let s = upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let d = zeros::<f32>(6);
    let (ts, td) = (view(&s, &[3, 2], &[1, 3], 0), tensor(&d, &[3, 2]));
    assert_eq!(run!(aclnnInplaceCopy, aclnnInplaceCopyGetWorkspaceSize(td, ts)), 0, "{}", msg());
    assert_eq!(download::<f32>(&d), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // Strided destination: write [7,8] into column 1 of a [2,2] buffer, with a dtype change.
    let src = upload(&[7i64, 8]);
    let dst = zeros::<f32>(4);
    let (tsrc, tdst) = (tensor(&src, &[2]), view(&dst, &[2], &[2], 1));
    assert_eq!(run!(aclnnInplaceCopy, aclnnInplaceCopyGetWorkspaceSize(tdst, tsrc)), 0, "{}", msg());
    assert_eq!(download::<f32>(&dst), vec![0.0, 7.0, 0.0, 8.0]);
}

#[test]
fn embedding_index_select_argmax() {
    init();
    let w = upload(&[0.0f32, 0.5, 1.0, 1.5, 2.0, 2.5]); // [3,2]
    let idx = upload(&[2i64, 0, 2]);
    let o = zeros::<f32>(6);
    let (tw, ti, to) = (tensor(&w, &[3, 2]), tensor(&idx, &[1, 3]), tensor(&o, &[1, 3, 2]));
    assert_eq!(run!(aclnnEmbedding, aclnnEmbeddingGetWorkspaceSize(tw, ti, to)), 0, "{}", msg());
    assert_eq!(download::<f32>(&o), vec![2.0, 2.5, 0.0, 0.5, 2.0, 2.5]);

    let idx32 = upload(&[1i32, 1]);
    let o2 = zeros::<f32>(4);
    let (ti2, to2) = (tensor(&idx32, &[2]), tensor(&o2, &[2, 2]));
    assert_eq!(run!(aclnnEmbedding, aclnnEmbeddingGetWorkspaceSize(tw, ti2, to2)), 0, "{}", msg());
    assert_eq!(download::<f32>(&o2), vec![1.0, 1.5, 1.0, 1.5]);

    // index_select along dim 1 of [3,2]: columns [1, 0]
    let sel = upload(&[1i32, 0]);
    let o3 = zeros::<f32>(6);
    let (ts, to3) = (tensor(&sel, &[2]), tensor(&o3, &[3, 2]));
    assert_eq!(run!(aclnnIndexSelect, aclnnIndexSelectGetWorkspaceSize(tw, -1, ts, to3)), 0, "{}", msg());
    assert_eq!(download::<f32>(&o3), vec![0.5, 0.0, 1.5, 1.0, 2.5, 2.0]);

    // argmax over the last dim of [2,3] (ties keep the first), int64 and keepdim int32.
    let x = upload(&[1.0f32, 5.0, 5.0, -1.0, -3.0, 7.0]);
    let am = zeros::<i64>(2);
    let (tx, tam) = (tensor(&x, &[2, 3]), tensor(&am, &[2]));
    assert_eq!(run!(aclnnArgMax, aclnnArgMaxGetWorkspaceSize(tx, 1, false, tam)), 0, "{}", msg());
    assert_eq!(download::<i64>(&am), vec![1, 2]);
    let am32 = zeros::<i32>(3);
    let tam32 = tensor(&am32, &[1, 3]);
    assert_eq!(run!(aclnnArgMax, aclnnArgMaxGetWorkspaceSize(tx, 0, true, tam32)), 0, "{}", msg());
    assert_eq!(download::<i32>(&am32), vec![0, 0, 1]);
}

#[test]
fn embedding_index_out_of_range_fails_at_sync() {
    init();
    let w = upload(&[0.0f32, 0.5, 1.0, 1.5]); // [2,2]
    let idx = upload(&[1i64, 2]);
    let o = upload(&[9.0f32; 4]);
    let (tw, ti, to) = (tensor(&w, &[2, 2]), tensor(&idx, &[2]), tensor(&o, &[2, 2]));
    let r = run!(aclnnEmbedding, aclnnEmbeddingGetWorkspaceSize(tw, ti, to));
    assert_eq!(r, codes::ACL_ERROR_RT_AICORE_EXCEPTION);
    let m = msg();
    assert!(m.contains("aclrtSynchronizeStream") && m.contains("indices[1] = 2 is out of range"), "{m}");
    assert_eq!(download::<f32>(&o), vec![9.0; 4], "the output must be left untouched");
}

#[test]
fn every_op_asks_for_a_non_zero_workspace() {
    init();
    let a = upload(&[1.0f32; 4]);
    let ta = tensor(&a, &[2, 2]);
    let mut ws = 0u64;
    let mut ex = std::ptr::null_mut();
    // SAFETY: live handles; writable outputs.
    unsafe {
        assert_eq!(aclnnSiluGetWorkspaceSize(ta, ta, &mut ws, &mut ex), 0);
        assert!(ws >= 512);
        ws = 0;
        assert_eq!(aclnnSoftmaxGetWorkspaceSize(ta, 0, ta, &mut ws, &mut ex), 0);
        assert!(ws >= 512);
        ws = 0;
        assert_eq!(aclnnMmGetWorkspaceSize(ta, ta, ta, 0, &mut ws, &mut ex), 0);
        assert!(ws >= 512);
    }
}

#[test]
fn matmul_with_one_dimensional_operands() {
    init();
    let v = upload(&[1.0f32, 2.0]);
    let m = upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]); // [2,3]
    let o3 = zeros::<f32>(3);
    let (tv, tm, to3) = (tensor(&v, &[2]), tensor(&m, &[2, 3]), tensor(&o3, &[3]));
    // [2] @ [2,3] -> [3]
    assert_eq!(run!(aclnnMatmul, aclnnMatmulGetWorkspaceSize(tv, tm, to3, 0)), 0, "{}", msg());
    assert_eq!(download::<f32>(&o3), vec![9.0, 12.0, 15.0]);
    // [3,2] (m transposed) @ [2] -> [3]
    let tmt = view(&m, &[3, 2], &[1, 3], 0);
    assert_eq!(run!(aclnnMatmul, aclnnMatmulGetWorkspaceSize(tmt, tv, to3, 0)), 0, "{}", msg());
    assert_eq!(download::<f32>(&o3), vec![9.0, 12.0, 15.0]);
    // A wrong output shape is refused.
    let to_bad = tensor(&o3, &[1, 3]);
    let mut ws = 0u64;
    let mut ex = std::ptr::null_mut();
    // SAFETY: live handles; writable outputs.
    let r = unsafe { aclnnMatmulGetWorkspaceSize(tv, tm, to_bad, 0, &mut ws, &mut ex) };
    assert_eq!(r, codes::ACLNN_ERR_PARAM_INVALID);
    assert!(msg().contains("out is [1,3] but must be [3]"));
}

#[test]
fn rope_on_a_partial_strided_view_leaves_the_rest() {
    init();
    // Two heads of 4; only the first 2 values of each head rotate (half mode, D = 2).
    let x = upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let o = upload(&[0.0f32, 0.0, -1.0, -1.0, 0.0, 0.0, -1.0, -1.0]);
    let c = upload(&[0.0f32, 0.0]);
    let s = upload(&[1.0f32, 1.0]);
    let tx = view(&x, &[1, 2, 2], &[8, 4, 1], 0);
    let to = view(&o, &[1, 2, 2], &[8, 4, 1], 0);
    let (tc, ts) = (tensor(&c, &[1, 1, 2]), tensor(&s, &[1, 1, 2]));
    assert_eq!(
        run!(aclnnRotaryPositionEmbedding, aclnnRotaryPositionEmbeddingGetWorkspaceSize(tx, tc, ts, 0, to)),
        0,
        "{}",
        msg()
    );
    // cos 0, sin 1: [a, b] -> [-b, a]
    assert_eq!(download::<f32>(&o), vec![-2.0, 1.0, -1.0, -1.0, -6.0, 5.0, -1.0, -1.0]);
}

#[test]
fn dynamic_quant_per_row_scale_and_rounding() {
    init();
    // Row 0: max |x| 2.54, scale 2.54 / 127: 1.25 / scale is 62.5 exactly in f32, which rounds
    // away from zero to 63 (half to even would give 62); row 1 is zeros (scale 0, values 0);
    // row 2's largest value is negative.
    let x: Vec<f32> = vec![2.54, -1.0, 0.3, 1.25, 0.0, 0.0, 0.0, 0.0, -4.0, 1.0, 0.5, -0.01];
    let xb = upload(&x);
    let (y, s) = (zeros::<i8>(12), zeros::<f32>(3));
    let (tx, ty, ts) = (tensor(&xb, &[3, 4]), tensor(&y, &[3, 4]), tensor(&s, &[3]));
    let none: *const aclTensor = std::ptr::null();
    assert_eq!(run!(aclnnDynamicQuant, aclnnDynamicQuantGetWorkspaceSize(tx, none, ty, ts)), 0, "{}", msg());
    let scales: Vec<f32> = x.chunks(4).map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).collect();
    assert_eq!(download::<f32>(&s), scales);
    let want: Vec<i8> = x
        .chunks(4)
        .zip(&scales)
        .flat_map(|(r, &d)| r.iter().map(move |&v| if d == 0.0 { 0 } else { (v / d).round() as i8 }))
        .collect();
    assert_eq!(download::<i8>(&y), want);
    assert_eq!(&download::<i8>(&y)[..4], &[127, -50, 15, 63]);
    assert_eq!(&download::<i8>(&y)[8..], &[-127, 32, 16, 0]);

    // yOut must be int8 and scaleOut x's shape without its last dim.
    let bad = zeros::<f32>(12);
    let tb = tensor(&bad, &[3, 4]);
    let (mut ws, mut ex) = (0u64, std::ptr::null_mut());
    // SAFETY: live handles; writable outputs.
    assert_ne!(unsafe { aclnnDynamicQuantGetWorkspaceSize(tx, none, tb, ts, &mut ws, &mut ex) }, 0);
    assert!(msg().contains("ACL_INT8"), "{}", msg());
    let ts4 = tensor(&s, &[1, 3]);
    // SAFETY: as above.
    assert_ne!(unsafe { aclnnDynamicQuantGetWorkspaceSize(tx, none, ty, ts4, &mut ws, &mut ex) }, 0);
    assert!(msg().contains("scaleOut"), "{}", msg());
}
