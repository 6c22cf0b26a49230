// bf16 products on AVX512-BF16: see include/bf16_gemm.h for the operand layouts.
//
// The kernel keeps a 6 x 64 tile of C in 24 zmm accumulators; per K-pair it loads the panel's
// 64 words (4 zmm) and broadcasts one word of each of the 6 rows of A: 24 vdpbf16ps (32 multiply-adds
// each) per 10 loads. A panel's slice of 384 pairs (768 k, 96 KB) stays in L2 while every row of A
// streams past it, tile by tile; each tile prefetches the next tile's C, which it loads when it
// accumulates. Measured on Zen 5 (one core, 788 x 768 x {768, 2304, 3072}): 435-470 GFLOP/s of the
// core's ~465 vdpbf16ps peak; slices of 128 pairs (in L1) ran 390-450, reloading C three times as often.
#include "bf16_gemm.h"
#include <cpuid.h>
#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

enum { TILE_ROWS = MAE_BF16_TILE_ROWS, BLOCK_PAIRS = 384, BLOCK_ROWS = 56 * TILE_ROWS };

int mae_bf16_gemm_available(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return 0;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0xE6) != 0xE6) return 0;  // the OS saves the xmm, ymm, opmask and zmm state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!(b & bit_AVX512F) || !(b & bit_AVX512BW) || !(b & bit_AVX512VL) || !(b & bit_AVX512DQ)) return 0;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a & (1u << 5)) != 0;  // CPUID.(7,1):EAX bit 5 is AVX512_BF16
}

/* bf16 bits of 16 floats in the low half of each 32-bit lane: round to nearest even, NaN kept quiet
   (the scalar bf16Bits of BF16Matmul.swift, lane by lane). */
static inline TARGET __m512i round_bf16(__m512 x) {
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i top = _mm512_srli_epi32(bits, 16);
    const __m512i lsb = _mm512_and_si512(top, _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF)),
                                                  _mm512_set1_epi32(0x7F800000));
    return _mm512_mask_or_epi32(r, nan, top, _mm512_set1_epi32(0x40));
}

/* The first `count` (0...16) lanes. */
static inline __mmask16 lanes(long count) {
    return count >= 16 ? (__mmask16)0xFFFF : count <= 0 ? 0 : (__mmask16)((1u << count) - 1);
}

/* Words (lo[i], hi[i]) of 16 floats each; `count` valid lanes, the rest zero. */
static inline TARGET __m512i pair_words(const float *lo, const float *hi, long count) {
    const __mmask16 m = lanes(count);
    const __m512i l = round_bf16(_mm512_maskz_loadu_ps(m, lo));
    if (!hi) return l;
    return _mm512_or_si512(l, _mm512_slli_epi32(round_bf16(_mm512_maskz_loadu_ps(m, hi)), 16));
}

/* In place: r[i] lane j becomes r[j] lane i (a 16 x 16 transpose of 32-bit words). */
static inline TARGET void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // Each 128-bit lane now holds a 4 x 4 block; move the blocks across lanes.
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

TARGET void mae_bf16_pack_panels(uint32_t *dst, const float *src, long ld, int transposed, long k, long n,
                                 long panel0, long panel1) {
    const long pairs = (k + 1) / 2, stride = mae_bf16_panel_stride(k);
    if (!transposed) {
        // B (K,N) row-major: rows 2p and 2p+1 side by side, 16 columns per vector, read once in order.
        for (long p = 0; p < pairs; p++) {
            const float *r0 = src + 2 * p * ld, *r1 = 2 * p + 1 < k ? r0 + ld : 0;
            for (long j = panel0; j < panel1; j++)
                for (long q = 0; q < MAE_BF16_PANEL; q += 16) {
                    const long c = j * MAE_BF16_PANEL + q;
                    _mm512_storeu_si512(dst + j * stride + p * MAE_BF16_PANEL + q, pair_words(r0 + c, r1 ? r1 + c : 0, n - c));
                }
        }
        return;
    }
    // B[k][n] = src[n * ld + k]: row n of src holds column n's pairs side by side. Blocks of 16
    // columns x 16 pairs: each column's 16 words in a vector, transposed in registers into 16 rows.
    for (long j = panel0; j < panel1; j++) {
        uint32_t *panel = dst + j * stride;
        for (long g = 0; g < MAE_BF16_PANEL; g += 16) {
            const long col0 = j * MAE_BF16_PANEL + g;
            for (long p = 0; p < pairs; p += 16) {
                __m512i r[16];
                for (int i = 0; i < 16; i++) {
                    if (col0 + i >= n) { r[i] = _mm512_setzero_si512(); continue; }
                    const float *row = src + (col0 + i) * ld + 2 * p;
                    const __m256i lo = _mm512_cvtepi32_epi16(round_bf16(_mm512_maskz_loadu_ps(lanes(k - 2 * p), row)));
                    const __m256i hi = _mm512_cvtepi32_epi16(round_bf16(_mm512_maskz_loadu_ps(lanes(k - 2 * p - 16), row + 16)));
                    r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                }
                transpose16(r);
                const long count = pairs - p < 16 ? pairs - p : 16;
                for (long q = 0; q < count; q++) _mm512_storeu_si512(panel + (p + q) * MAE_BF16_PANEL + g, r[q]);
            }
        }
    }
}

TARGET void mae_bf16_convert_rows(uint16_t *dst, long dstLd, const float *src, long ld, long rows, long k) {
    for (long r = 0; r < rows; r++) {
        const float *in = src + r * ld;
        uint16_t *out = dst + r * dstLd;
        for (long c = 0; c < k; c += 16) {
            const __mmask16 m = lanes(k - c);
            _mm512_mask_cvtepi32_storeu_epi16(out + c, m, round_bf16(_mm512_maskz_loadu_ps(m, in + c)));
        }
        if (k % 2) out[k] = 0;
    }
}

TARGET void mae_bf16_pack_tiles(uint32_t *dst, const float *src, long ld, long k, long m, long pair0, long pair1) {
    enum { T = MAE_BF16_TILE_ROWS, CHUNK = 48 };  // 48 columns: 3 vectors of words, 8 whole tiles
    const long pairs = (k + 1) / 2, tileStride = pairs * T;
    for (long p = pair0; p < pair1; p++) {
        const float *r0 = src + 2 * p * ld, *r1 = 2 * p + 1 < k ? r0 + ld : 0;
        for (long i = 0; i < m; i += CHUNK) {
            uint32_t words[CHUNK];
            for (int v = 0; v < CHUNK; v += 16)
                _mm512_storeu_si512(words + v, pair_words(r0 + i + v, r1 ? r1 + i + v : 0, m - i - v));
            const long columns = m - i < CHUNK ? m - i : CHUNK;
            for (long t = 0; t * T < columns; t++) {
                uint32_t *out = dst + (i / T + t) * tileStride + p * T;
                const long rows = columns - t * T < T ? columns - t * T : T;
                if (rows == T) memcpy(out, words + t * T, T * sizeof(uint32_t));
                else for (long r = 0; r < rows; r++) out[r] = words[t * T + r];
            }
        }
    }
}

/* C tile (ROWS, 64) [+]= A rows . panel slice over `pairs`; masks[j] are the valid columns of vector j. */
static inline TARGET __attribute__((always_inline)) void tile(const int ROWS, const uint32_t *a, long pairStride,
                                                              long rowStride, const uint32_t *b, long pairs,
                                                              float *c, long ldc, const __mmask16 *masks, int load) {
    __m512 acc[TILE_ROWS][4];
    if (load) {  // the next tile's rows of C (past the end on the last tile: a prefetch never faults)
#pragma clang loop unroll(full)
        for (int r = 0; r < TILE_ROWS; r++)
#pragma clang loop unroll(full)
            for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(c + (TILE_ROWS + r) * ldc + 16 * j), _MM_HINT_T0);
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < ROWS; r++)
#pragma clang loop unroll(full)
        for (int j = 0; j < 4; j++)
            acc[r][j] = load ? _mm512_maskz_loadu_ps(masks[j], c + r * ldc + 16 * j) : _mm512_setzero_ps();
    for (long p = 0; p < pairs; p++, a += pairStride, b += MAE_BF16_PANEL) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
        const __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + 32), b3 = (__m512bh)_mm512_loadu_si512(b + 48);
#pragma clang loop unroll(full)
        for (int r = 0; r < ROWS; r++) {
            const __m512bh w = (__m512bh)_mm512_set1_epi32((int)a[r * rowStride]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], w, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], w, b1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], w, b2);
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], w, b3);
        }
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < ROWS; r++)
#pragma clang loop unroll(full)
        for (int j = 0; j < 4; j++) _mm512_mask_storeu_ps(c + r * ldc + 16 * j, masks[j], acc[r][j]);
}

#define TILE(R) \
    static TARGET void tile##R(const uint32_t *a, long ps, long rs, const uint32_t *b, long pairs, float *c, long ldc, \
                               const __mmask16 *masks, int load) { tile(R, a, ps, rs, b, pairs, c, ldc, masks, load); }
TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6)

typedef void (*tile_fn)(const uint32_t *, long, long, const uint32_t *, long, float *, long, const __mmask16 *, int);

TARGET void mae_bf16_gemm(long m, long n, long pairs, const uint32_t *a, long tileStride, long pairStride,
                          long rowStride, const uint32_t *b, long panelStride, float *c, long ldc, int accumulate) {
    static const tile_fn tiles[TILE_ROWS + 1] = {0, tile1, tile2, tile3, tile4, tile5, tile6};
    if (pairs == 0) {
        if (!accumulate)
            for (long i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return;
    }
    // Equal K-blocks of at most BLOCK_PAIRS (788 pairs: 394 + 394, not 384 + 384 + 20).
    const long blocks = (pairs + BLOCK_PAIRS - 1) / BLOCK_PAIRS, block = (pairs + blocks - 1) / blocks;
    for (long k0 = 0; k0 < pairs; k0 += block) {
        const long kc = pairs - k0 < block ? pairs - k0 : block;
        const int load = accumulate || k0 > 0;
        for (long i0 = 0; i0 < m; i0 += BLOCK_ROWS) {
            const long i1 = m - i0 < BLOCK_ROWS ? m : i0 + BLOCK_ROWS;
            for (long j = 0; j < n; j += MAE_BF16_PANEL) {
                const __mmask16 masks[4] = {lanes(n - j), lanes(n - j - 16), lanes(n - j - 32), lanes(n - j - 48)};
                const uint32_t *panel = b + (j / MAE_BF16_PANEL) * panelStride + k0 * MAE_BF16_PANEL;
                for (long i = i0; i < i1; i += TILE_ROWS) {
                    const long rows = i1 - i < TILE_ROWS ? i1 - i : TILE_ROWS;
                    tiles[rows](a + i / TILE_ROWS * tileStride + k0 * pairStride, pairStride, rowStride, panel, kc,
                                c + i * ldc + j, ldc, masks, load);
                }
            }
        }
    }
}
