//! The CUDA C source of every device kernel, compiled by NVRTC once per backend at open.
//!
//! No headers are included (NVRTC would need the toolkit's include directory): half and bfloat16
//! values are converted with a PTX instruction and a shift. Every kernel takes its sizes as
//! arguments and checks its indices against them; grids are sized by the host code in
//! `mod.rs`, which is the only caller. Conventions:
//! - elementwise kernels use 256-thread blocks in a grid-stride loop over `long` indices;
//! - row kernels use one 256-thread block per row (`blockIdx.x` is the row);
//! - the attention kernels use one 128-thread block (4 warps) per (row, head), flattened into
//!   `blockIdx.x = row * n_heads + head` so that no grid dimension is limited to 65535.
//!
//! Weight dtype codes (argument `dt`) are those of [`super::dtype_code`]: 0 f32, 1 f16, 2 bf16,
//! 3 q8_0 (34-byte blocks: f16 scale, 32 × i8).

/// Names of the kernels in [`SOURCE`], loaded once after compilation.
pub(super) const NAMES: &[&str] = &[
    "rms_norm",
    "layer_norm",
    "rope",
    "binary",
    "unary",
    "embedding",
    "gather_rows",
    "matvec",
    "dequant_rows",
    "kv_write",
    "kv_write_f16",
    "paged_attention",
    "paged_attention_f16",
    "dense_attention",
];

/// Most activation rows the `matvec` kernel takes (its per-row accumulators live in registers).
pub(super) const MATVEC_MAX_M: usize = 8;
/// Output rows per `matvec` block (one warp each).
pub(super) const MATVEC_WARPS: u32 = 8;
/// Largest head dimension the attention kernels take (8 values per lane of a warp).
pub(super) const ATT_MAX_HEAD_DIM: usize = 256;
/// Threads of an attention block.
pub(super) const ATT_THREADS: u32 = 128;

/// The kernels.
pub(super) const SOURCE: &str = r#"
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned char u8;

#define NEG_INF __int_as_float(0xff800000)
#define MATVEC_MAX_M 8
#define MATVEC_WARPS 8
#define ATT_WARPS 4
#define ATT_PER_LANE 8

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// A KV value as f32, whichever type the pool stores (f32, or f16 bits).
__device__ __forceinline__ float kv_load(float x) { return x; }
__device__ __forceinline__ float kv_load(u16 h) { return f16_to_f32(h); }
__device__ __forceinline__ void kv_store(float* p, float x) { *p = x; }
__device__ __forceinline__ void kv_store(u16* p, float x) { *p = f32_to_f16(x); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide reductions for blockDim.x a multiple of 32 (at most 1024); every thread gets the
// result. `sh` holds 32 values; the leading __syncthreads lets callers reduce several times.
__device__ float block_sum(float v, float* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float t = lane < nw ? sh[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}
__device__ double block_sum_d(double v, double* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

// Value `d` of row `row` of a weight of dtype `dt` with `k` values per row.
__device__ __forceinline__ float load_w(const u8* w, int dt, long row, int k, int d) {
    switch (dt) {
    case 0: return ((const float*)w)[row * k + d];
    case 1: return f16_to_f32(((const u16*)w)[row * k + d]);
    case 2: return bf16_to_f32(((const u16*)w)[row * k + d]);
    default: {
        // Rows of Q8_0 are k / 32 blocks of 34 bytes; block starts are 2-byte aligned.
        const u8* blk = w + row * (long)(k / 32) * 34 + (long)(d / 32) * 34;
        float scale = f16_to_f32(*(const u16*)blk);
        return scale * (float)(signed char)blk[2 + (d & 31)];
    }
    }
}

// RMSNorm of each row (one block per row), sum of squares in double as the CPU backend.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* y, int n, float eps) {
    __shared__ double sh[32];
    long row = blockIdx.x;
    const float* xr = x + row * n;
    float* yr = y + row * n;
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double a = xr[i];
        ss += a * a;
    }
    ss = block_sum_d(ss, sh);
    float inv = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// LayerNorm of each row of x (+ r when has_r): mean, then the variance of the deviations.
extern "C" __global__ void layer_norm(const float* x, const float* r, int has_r, const float* w, const float* b,
                                      float* y, int n, float eps) {
    __shared__ float sh[32];
    long row = blockIdx.x;
    const float* xr = x + row * n;
    const float* rr = r + row * n;
    float* yr = y + row * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += has_r ? xr[i] + rr[i] : xr[i];
    float mean = block_sum(s, sh) / (float)n;
    float v = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float d = (has_r ? xr[i] + rr[i] : xr[i]) - mean;
        v += d * d;
    }
    float var = block_sum(v, sh) / (float)n;
    float inv = 1.0f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float a = has_r ? xr[i] + rr[i] : xr[i];
        yr[i] = ((a - mean) * inv) * w[i] + b[i];
    }
}

// Rotary embedding of one row per block: `half` pairs per head are rotated, the values from
// 2 * half to head_dim are copied.
extern "C" __global__ void rope(const float* x, float* y, const u32* pos, const float* inv_freq, int n_heads,
                                int head_dim, int half, int interleaved) {
    long row = blockIdx.x;
    long base = row * (long)n_heads * head_dim;
    float p = (float)pos[row];
    int pairs = n_heads * half;
    for (int t = threadIdx.x; t < pairs; t += blockDim.x) {
        int h = t / half, i = t % half;
        int a = interleaved ? 2 * i : i;
        int b = interleaved ? 2 * i + 1 : i + half;
        float ang = p * inv_freq[i];
        float c = cosf(ang), s = sinf(ang);
        long o = base + (long)h * head_dim;
        float x0 = x[o + a], x1 = x[o + b];
        y[o + a] = x0 * c - x1 * s;
        y[o + b] = x1 * c + x0 * s;
    }
    int rest = head_dim - 2 * half;
    for (int t = threadIdx.x; t < n_heads * rest; t += blockDim.x) {
        long o = base + (long)(t / rest) * head_dim + 2 * half + t % rest;
        y[o] = x[o];
    }
}

// y = op(a, b) where b has `bn` values: either as many as a, or one row broadcast over a.
// op: 0 add, 2 silu(a) * b, 3 gelu(a + b) (1 was mul, which nothing calls).
extern "C" __global__ void binary(const float* a, const float* b, float* y, long total, long bn, int op) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        float x = a[i];
        float z = b[bn == total ? i : i % bn];
        float r;
        switch (op) {
        case 0: r = x + z; break;
        case 2: r = x / (1.0f + expf(-x)) * z; break;
        default: {
            float t = x + z;
            r = 0.5f * t * (1.0f + erff(t * 0.70710678118654752f));
        }
        }
        y[i] = r;
    }
}

// y = op(x): 0 exact (erf) GELU, 1 x * s.
extern "C" __global__ void unary(const float* x, float* y, long total, int op, float s) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = op == 0 ? 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)) : v * s;
    }
}

// Rows `ids` of a [vocab, dim] table of dtype dt, as f32 (one block per id; ids checked by the
// host).
extern "C" __global__ void embedding(const u8* table, int dt, const u32* ids, float* y, int dim) {
    long r = blockIdx.x;
    long id = ids[r];
    for (int d = threadIdx.x; d < dim; d += blockDim.x) y[r * dim + d] = load_w(table, dt, id, dim, d);
}

// Rows `idx` of x (one block per output row; indices checked by the host).
extern "C" __global__ void gather_rows(const float* x, const u32* idx, float* y, int n) {
    long r = blockIdx.x;
    long src = idx[r];
    for (int d = threadIdx.x; d < n; d += blockDim.x) y[r * n + d] = x[src * n + d];
}

// y [m, n] = x [m, k] · wᵀ for m <= MATVEC_MAX_M (decode): one warp per weight row, which is
// read once in its stored dtype; blocks of MATVEC_WARPS warps. Vector loads need k % 8 == 0
// (f16/bf16), k % 4 == 0 (f32); Q8_0 rows are whole 32-value blocks by construction.
extern "C" __global__ void matvec(const float* x, const u8* w, int dt, float* y, int m, int n, int k) {
    int lane = threadIdx.x & 31;
    long j = (long)blockIdx.x * MATVEC_WARPS + (threadIdx.x >> 5);
    if (j >= n) return;
    float acc[MATVEC_MAX_M];
#pragma unroll
    for (int r = 0; r < MATVEC_MAX_M; r++) acc[r] = 0.0f;
    if (dt == 3) {
        int nb = k / 32;
        const u8* row = w + j * (long)nb * 34;
        for (int b = lane; b < nb; b += 32) {
            const u16* blk = (const u16*)(row + (long)b * 34);
            float scale = f16_to_f32(blk[0]);
            float q[32];
#pragma unroll
            for (int t = 0; t < 16; t++) {
                u16 two = blk[1 + t];
                q[2 * t] = (float)(signed char)(two & 0xff);
                q[2 * t + 1] = (float)(signed char)(two >> 8);
            }
#pragma unroll
            for (int r = 0; r < MATVEC_MAX_M; r++) {
                if (r < m) {
                    const float4* xv = (const float4*)(x + (long)r * k + b * 32);
                    float s = 0.0f;
#pragma unroll
                    for (int t = 0; t < 8; t++) {
                        float4 v = xv[t];
                        s += q[4 * t] * v.x + q[4 * t + 1] * v.y + q[4 * t + 2] * v.z + q[4 * t + 3] * v.w;
                    }
                    acc[r] += scale * s;
                }
            }
        }
    } else if ((dt == 1 || dt == 2) && k % 8 == 0) {
        const uint4* row = (const uint4*)(w + j * (long)k * 2);
        for (int c = lane; c < k / 8; c += 32) {
            uint4 raw = row[c];
            u32 words[4] = {raw.x, raw.y, raw.z, raw.w};
            float wv[8];
#pragma unroll
            for (int t = 0; t < 4; t++) {
                u16 lo = (u16)(words[t] & 0xffff), hi = (u16)(words[t] >> 16);
                wv[2 * t] = dt == 2 ? bf16_to_f32(lo) : f16_to_f32(lo);
                wv[2 * t + 1] = dt == 2 ? bf16_to_f32(hi) : f16_to_f32(hi);
            }
#pragma unroll
            for (int r = 0; r < MATVEC_MAX_M; r++) {
                if (r < m) {
                    const float4* xv = (const float4*)(x + (long)r * k + c * 8);
                    float4 a = xv[0], b = xv[1];
                    acc[r] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x + wv[5] * b.y +
                              wv[6] * b.z + wv[7] * b.w;
                }
            }
        }
    } else if (dt == 0 && k % 4 == 0) {
        const float4* row = (const float4*)(w + j * (long)k * 4);
        for (int c = lane; c < k / 4; c += 32) {
            float4 v = row[c];
#pragma unroll
            for (int r = 0; r < MATVEC_MAX_M; r++) {
                if (r < m) {
                    float4 a = ((const float4*)(x + (long)r * k))[c];
                    acc[r] += v.x * a.x + v.y * a.y + v.z * a.z + v.w * a.w;
                }
            }
        }
    } else {
        for (int d = lane; d < k; d += 32) {
            float v = load_w(w, dt, j, k, d);
#pragma unroll
            for (int r = 0; r < MATVEC_MAX_M; r++)
                if (r < m) acc[r] += v * x[(long)r * k + d];
        }
    }
#pragma unroll
    for (int r = 0; r < MATVEC_MAX_M; r++) {
        if (r < m) {
            float s = warp_sum(acc[r]);
            if (lane == 0) y[(long)r * n + j] = s;
        }
    }
}

// Rows row0 .. row0 + nrows of a weight of dtype dt, de-quantised to f32 (a GEMM panel, or a
// whole small tensor).
extern "C" __global__ void dequant_rows(const u8* w, int dt, float* out, long row0, long nrows, int k) {
    long total = nrows * k;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total; e += (long)gridDim.x * blockDim.x) {
        long r = e / k;
        int d = (int)(e % k);
        out[e] = load_w(w, dt, row0 + r, k, d);
    }
}

// Writes rows of k and v ([rows, width]) into the cache at slot slots[row] of layer `layer`
// (layer_off = layer * n_blocks * block_size slots; slots checked by the host), rounded to the
// pool's type T (f16: to nearest even, as the CPU's `half`).
template <class T>
__device__ void kv_write_t(T* kc, T* vc, const float* k, const float* v, const u32* slots, long rows, int width,
                           long layer_off) {
    long total = rows * width;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total; e += (long)gridDim.x * blockDim.x) {
        long r = e / width;
        int c = (int)(e % width);
        long dst = (layer_off + (long)slots[r]) * width + c;
        kv_store(kc + dst, k[e]);
        kv_store(vc + dst, v[e]);
    }
}

extern "C" __global__ void kv_write(float* kc, float* vc, const float* k, const float* v, const u32* slots, long rows,
                                   int width, long layer_off) {
    kv_write_t(kc, vc, k, v, slots, rows, width, layer_off);
}

extern "C" __global__ void kv_write_f16(u16* kc, u16* vc, const float* k, const float* v, const u32* slots, long rows,
                                       int width, long layer_off) {
    kv_write_t(kc, vc, k, v, slots, rows, width, layer_off);
}

// Keys of one paged-attention query: positions 0 ..= pos through the sequence's block table.
struct PagedKeys {
    const u32* table;
    long bs;
    long layer_off;
    long nkv;
    long kvh;
    long hd;
    __device__ bool at(long p, long* base) const {
        long slot = (long)table[p / bs] * bs + p % bs;
        *base = ((layer_off + slot) * nkv + kvh) * hd;
        return true;
    }
};

// Keys of one dense-attention query: its sequence's rows whose mask is set.
struct DenseKeys {
    const u8* mask;
    long first_row;
    long nh;
    long h;
    long hd;
    __device__ bool at(long j, long* base) const {
        if (!mask[first_row + j]) return false;
        *base = ((first_row + j) * nh + h) * hd;
        return true;
    }
};

// Attention of one query head over n_keys keys with an online softmax: each warp takes every
// ATT_WARPS-th key, keeping its running max, sum and weighted values (head_dim <= 256: 8 values
// per lane); the warps are then combined. A query with no keys gets zeros.
template <class Keys, class T>
__device__ void attend(const float* qh, const T* kc, const T* vc, float* oh, int hd, float scale, long n_keys,
                       Keys keys) {
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
    __shared__ float so[ATT_WARPS][ATT_PER_LANE * 32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float q[ATT_PER_LANE], o[ATT_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; i++) {
        int d = lane + 32 * i;
        q[i] = d < hd ? qh[d] : 0.0f;
        o[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (long p = w; p < n_keys; p += ATT_WARPS) {
        long base;
        if (!keys.at(p, &base)) continue;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < hd) s += q[i] * kv_load(kc[base + d]);
        }
        s = warp_sum(s) * scale;
        float mn = fmaxf(m, s);
        float corr = expf(m - mn);
        float e = expf(s - mn);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < hd) o[i] = o[i] * corr + e * kv_load(vc[base + d]);
        }
        m = mn;
    }
    if (lane == 0) {
        sm[w] = m;
        sl[w] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; i++) {
        int d = lane + 32 * i;
        if (d < hd) so[w][d] = o[i];
    }
    __syncthreads();
    float mx = NEG_INF;
    for (int i = 0; i < ATT_WARPS; i++) mx = fmaxf(mx, sm[i]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float tot = 0.0f, acc = 0.0f;
        for (int i = 0; i < ATT_WARPS; i++) {
            if (sl[i] > 0.0f) {
                float f = expf(sm[i] - mx);
                tot += sl[i] * f;
                acc += so[i][d] * f;
            }
        }
        oh[d] = tot > 0.0f ? acc / tot : 0.0f;
    }
}

// Causal attention over the paged cache of type T, one block per (row, head): row r attends to
// positions 0 ..= row_pos[r] of the block table starting at tables[row_table_off[r]].
template <class T>
__device__ void paged_attention_t(const float* q, const T* kc, const T* vc, float* out, const u32* tables,
                                  const u32* row_table_off, const u32* row_pos, int nh, int nkv, int hd, int bs,
                                  long layer_off, float scale) {
    long row = blockIdx.x / nh;
    int h = blockIdx.x % nh;
    PagedKeys keys;
    keys.table = tables + row_table_off[row];
    keys.bs = bs;
    keys.layer_off = layer_off;
    keys.nkv = nkv;
    keys.kvh = h / (nh / nkv);
    keys.hd = hd;
    long off = (row * nh + h) * (long)hd;
    attend(q + off, kc, vc, out + off, hd, scale, (long)row_pos[row] + 1, keys);
}

extern "C" __global__ void paged_attention(const float* q, const float* kc, const float* vc, float* out,
                                          const u32* tables, const u32* row_table_off, const u32* row_pos, int nh,
                                          int nkv, int hd, int bs, long layer_off, float scale) {
    paged_attention_t(q, kc, vc, out, tables, row_table_off, row_pos, nh, nkv, hd, bs, layer_off, scale);
}

extern "C" __global__ void paged_attention_f16(const float* q, const u16* kc, const u16* vc, float* out,
                                              const u32* tables, const u32* row_table_off, const u32* row_pos, int nh,
                                              int nkv, int hd, int bs, long layer_off, float scale) {
    paged_attention_t(q, kc, vc, out, tables, row_table_off, row_pos, nh, nkv, hd, bs, layer_off, scale);
}

// Bidirectional attention over a padded batch, one block per (row, head); padding queries get
// zeros, padding keys no weight.
extern "C" __global__ void dense_attention(const float* q, const float* k, const float* v, float* out, const u8* mask,
                                          int seq_len, int nh, int hd, float scale) {
    long row = blockIdx.x / nh;
    int h = blockIdx.x % nh;
    long off = (row * nh + h) * (long)hd;
    if (!mask[row]) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x) out[off + d] = 0.0f;
        return;
    }
    DenseKeys keys;
    keys.mask = mask;
    keys.first_row = row / seq_len * seq_len;
    keys.nh = nh;
    keys.h = h;
    keys.hd = hd;
    attend(q + off, k, v, out + off, hd, scale, (long)seq_len, keys);
}
"#;
