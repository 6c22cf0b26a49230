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

enum { TILE_ROWS = MAE_BF16_TILE_ROWS, BLOCK_PAIRS = 384 };

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

TARGET void mae_bf16_pack_panels(uint32_t *dst, const float *src, long ld, int transposed, long k, long n,
                                 long panel0, long panel1) {
    const long pairs = (k + 1) / 2, stride = mae_bf16_panel_stride(k);
    for (long j = panel0; j < panel1; j++) {
        uint32_t *panel = dst + j * stride;
        const long col0 = j * MAE_BF16_PANEL;
        if (!transposed) {
            // B (K,N) row-major: rows 2p and 2p+1 side by side, 16 columns per vector.
            for (long p = 0; p < pairs; p++) {
                const float *r0 = src + 2 * p * ld, *r1 = 2 * p + 1 < k ? r0 + ld : 0;
                for (long q = 0; q < MAE_BF16_PANEL; q += 16) {
                    const long c = col0 + q;
                    _mm512_storeu_si512(panel + p * MAE_BF16_PANEL + q,
                                        pair_words(r0 + c, r1 ? r1 + c : 0, n - c));
                }
            }
            continue;
        }
        // B[k][n] = src[n * ld + k]: a row of src holds a column's pairs side by side already.
        memset(panel, 0, (size_t)stride * sizeof(uint32_t));
        for (long col = col0; col < col0 + MAE_BF16_PANEL && col < n; col++) {
            const float *row = src + col * ld;
            uint32_t *out = panel + (col - col0);
            for (long p = 0; p < pairs; p += 16) {
                const long kk = 2 * p;
                const __m256i lo = _mm512_cvtepi32_epi16(round_bf16(_mm512_maskz_loadu_ps(lanes(k - kk), row + kk)));
                const __m256i hi = _mm512_cvtepi32_epi16(round_bf16(_mm512_maskz_loadu_ps(lanes(k - kk - 16), row + kk + 16)));
                uint32_t words[16];
                _mm256_storeu_si256((__m256i *)words, lo);
                _mm256_storeu_si256((__m256i *)(words + 8), hi);
                const long count = pairs - p < 16 ? pairs - p : 16;
                for (long q = 0; q < count; q++) out[(p + q) * MAE_BF16_PANEL] = words[q];
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
    const long pairs = (k + 1) / 2, tileStride = pairs * MAE_BF16_TILE_ROWS;
    for (long p = pair0; p < pair1; p++) {
        const float *r0 = src + 2 * p * ld, *r1 = 2 * p + 1 < k ? r0 + ld : 0;
        for (long i = 0, t = 0; i < m; i += MAE_BF16_TILE_ROWS, t++) {
            const long rows = m - i < MAE_BF16_TILE_ROWS ? m - i : MAE_BF16_TILE_ROWS;
            _mm512_mask_storeu_epi32(dst + t * tileStride + p * MAE_BF16_TILE_ROWS, lanes(rows),
                                     pair_words(r0 + i, r1 ? r1 + i : 0, rows));
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
        for (long j = 0; j < n; j += MAE_BF16_PANEL) {
            const __mmask16 masks[4] = {lanes(n - j), lanes(n - j - 16), lanes(n - j - 32), lanes(n - j - 48)};
            const uint32_t *panel = b + (j / MAE_BF16_PANEL) * panelStride + k0 * MAE_BF16_PANEL;
            for (long i = 0; i < m; i += TILE_ROWS) {
                const long rows = m - i < TILE_ROWS ? m - i : TILE_ROWS;
                tiles[rows](a + i / TILE_ROWS * tileStride + k0 * pairStride, pairStride, rowStride, panel, kc,
                            c + i * ldc + j, ldc, masks, load);
            }
        }
    }
}
