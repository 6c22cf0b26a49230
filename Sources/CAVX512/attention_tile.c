#include "mae_avx512.h"
#include "vector_math.h"
#include <immintrin.h>

/* dst[0..<n] += src[0..<n] + plus in addRow's order (FlashAttention.swift: (dst + src) + plus in whole
   16-lane vectors, dst + (src + plus) in the tail), returning the running max of the new values folded into mx. */
AVX512 static inline __m512 add_run_max(float *dst, const float *src, long n, __m512 plus, __m512 mx) {
    long j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 v = _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(dst + j), _mm512_loadu_ps(src + j)), plus);
        _mm512_storeu_ps(dst + j, v);
        mx = _mm512_max_ps(mx, v);
    }
    if (j < n) {
        __mmask16 m = lanes(n - j);
        __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst + j), _mm512_add_ps(_mm512_maskz_loadu_ps(m, src + j), plus));
        _mm512_mask_storeu_ps(dst + j, m, v);
        mx = _mm512_mask_max_ps(mx, m, mx, v);
    }
    return mx;
}

/* The decomposed bias of a window-sized grid (gh <= 16, gw < 16, so cols < 256): relH and relW rows
   fit one register each, and the bias of the 16 keys from k0 + 16 c is two lane permutes of them,
   added as addRow adds runs shorter than 16 (row + (relW + relH)). */
AVX512 static void add_small_grid_bias_max(float *scores, long rows, long cols, long ld,
                                           const float *relH, const float *relW, long gh, long gw, long k0,
                                           float *rowMax) {
    __m512i hIndex[16], wIndex[16];
    long chunks = (cols + 15) / 16;
    for (long c = 0; c < chunks; c++) {
        int h[16], w[16];
        for (long l = 0; l < 16; l++) {
            long key = k0 + 16 * c + l;
            if (key >= k0 + cols) key = k0;
            h[l] = (int)(key / gw); w[l] = (int)(key % gw);
        }
        hIndex[c] = _mm512_loadu_si512(h); wIndex[c] = _mm512_loadu_si512(w);
    }
    const __mmask16 last = lanes(cols - 16 * (chunks - 1));
    for (long r = 0; r < rows; r++) {
        float *row = scores + r * ld;
        const __m512 rh = _mm512_maskz_loadu_ps(lanes(gh), relH + r * gh);
        const __m512 rw = _mm512_maskz_loadu_ps(lanes(gw), relW + r * gw);
        __m512 mx = _mm512_set1_ps(-__builtin_inff());
        for (long c = 0; c + 1 < chunks; c++) {
            __m512 bias = _mm512_add_ps(_mm512_permutexvar_ps(wIndex[c], rw), _mm512_permutexvar_ps(hIndex[c], rh));
            __m512 v = _mm512_add_ps(_mm512_loadu_ps(row + 16 * c), bias);
            _mm512_storeu_ps(row + 16 * c, v);
            mx = _mm512_max_ps(mx, v);
        }
        long c = chunks - 1;
        __m512 bias = _mm512_add_ps(_mm512_permutexvar_ps(wIndex[c], rw), _mm512_permutexvar_ps(hIndex[c], rh));
        __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(last, row + 16 * c), bias);
        _mm512_mask_storeu_ps(row + 16 * c, last, v);
        mx = _mm512_mask_max_ps(mx, last, mx, v);
        if (rowMax) rowMax[r] = _mm512_reduce_max_ps(mx);
    }
}

AVX512 void mae_tile_add_bias_max(float *scores, long rows, long cols, long ld,
                                  const float *dense, long ldDense,
                                  const float *relH, const float *relW, long gh, long gw, long k0,
                                  float *rowMax) {
    if (relH && !dense && gh <= 16 && gw < 16) {
        add_small_grid_bias_max(scores, rows, cols, ld, relH, relW, gh, gw, k0, rowMax);
        return;
    }
    const __m512 zero = _mm512_setzero_ps();
    for (long r = 0; r < rows; r++) {
        float *row = scores + r * ld;
        __m512 mx = _mm512_set1_ps(-__builtin_inff());
        if (dense) {
            mx = add_run_max(row, dense + r * ldDense, cols, zero, mx);
        } else if (relH) {
            /* Keys k0..<k0+cols in runs of constant kh: each run adds relH[kh] + relW[kw...]. */
            const float *rh = relH + r * gh, *rw = relW + r * gw;
            long kh = k0 / gw, kw = k0 % gw;
            for (long j = 0; j < cols; kh++, kw = 0) {
                long run = gw - kw < cols - j ? gw - kw : cols - j;
                mx = add_run_max(row + j, rw + kw, run, _mm512_set1_ps(rh[kh]), mx);
                j += run;
            }
        } else if (rowMax) {
            long j = 0;
            for (; j + 16 <= cols; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(row + j));
            if (j < cols) mx = _mm512_mask_max_ps(mx, lanes(cols - j), mx, _mm512_maskz_loadu_ps(lanes(cols - j), row + j));
        }
        if (rowMax) rowMax[r] = _mm512_reduce_max_ps(mx);
    }
}

AVX512 void mae_tile_exp_sum(float *scores, long rows, long cols, long ld, const float *shift, float *rowSum) {
    for (long r = 0; r < rows; r++) {
        float *row = scores + r * ld;
        const __m512 s = _mm512_set1_ps(shift[r]);
        __m512 acc = _mm512_setzero_ps();
        long j = 0;
        for (; j + 16 <= cols; j += 16) {
            __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(row + j), s));
            _mm512_storeu_ps(row + j, e);
            acc = _mm512_add_ps(acc, e);
        }
        if (j < cols) {
            __mmask16 m = lanes(cols - j);
            __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), s));
            _mm512_mask_storeu_ps(row + j, m, e);
            acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
        }
        if (rowSum) rowSum[r] = _mm512_reduce_add_ps(acc);
    }
}
