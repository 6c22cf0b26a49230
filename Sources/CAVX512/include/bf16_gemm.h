#ifndef MAE_BF16_GEMM_H
#define MAE_BF16_GEMM_H
#include <stdint.h>

/* bf16 matrix products with fp32 accumulation on AVX512-BF16 (vdpbf16ps), for CPUs that have the
   instruction but no AMX (AMD Zen 4 / Zen 5, Intel Cooper Lake): C (M,N) [+]= A (M,K) . B (K,N).
   Operands are bf16 pairs along K in 32-bit words, the low half the even k (what vdpbf16ps multiplies
   pairwise): word (m, p) of A holds A[m][2p], A[m][2p+1]; an odd K is padded with a zero.
   - A is read in tiles of MAE_BF16_TILE_ROWS rows: word (m, p) at a[(m / 6) * tileStride + p * pairStride
     + (m % 6) * rowStride]. Row-major bf16 rows of even leading dimension ld (mae_bf16_convert_rows):
     tileStride 6 * ld / 2, pairStride 1, rowStride ld / 2. The transpose of a row-major (K, M) float
     matrix packed tile by tile (mae_bf16_pack_tiles, no transpose pass): tileStride 6 * ceil(K / 2),
     pairStride 6, rowStride 1.
   - B is packed in panels of MAE_BF16_PANEL columns (mae_bf16_pack_panels): panel j holds, for every
     pair p, the words (B[2p][n], B[2p+1][n]) of its columns n, zero beyond N; panelStride words apart.
   The functions run on the calling thread; callers split rows or panels over their workers. They use
   AVX-512 and must only be called where mae_bf16_gemm_available() is 1. */

enum { MAE_BF16_PANEL = 64, MAE_BF16_TILE_ROWS = 6 };

/* 1 when this CPU and OS run AVX512-F/BW and AVX512-BF16 (cpuid and xgetbv), else 0. */
int mae_bf16_gemm_available(void);

/* Words of one panel of K rows: ceil(K / 2) * MAE_BF16_PANEL. */
static inline long mae_bf16_panel_stride(long k) { return (k + 1) / 2 * MAE_BF16_PANEL; }

/* Packs panels [panel0, panel1) of B (K,N) into `dst` (the whole pack's base): B[k][n] = src[k * ld + n], or
   src[n * ld + k] when `transposed` (a linear layer's weight stored (out, in) = (N, K)). Rounds to nearest
   even as torch's x.to(torch.bfloat16) (NaN stays NaN). */
void mae_bf16_pack_panels(uint32_t *dst, const float *src, long ld, int transposed, long k, long n,
                          long panel0, long panel1);

/* Rows of float32 (rows, K) with leading dimension ld into bf16 rows of leading dimension dstLd (even,
   >= K + K % 2; the pad is zero). */
void mae_bf16_convert_rows(uint16_t *dst, long dstLd, const float *src, long ld, long rows, long k);

/* Pairs [pair0, pair1) of the transpose of float32 (K, M) (leading dimension ld) as A's tiles: word
   (m, p) = (src[2p][m], src[2p+1][m]) at dst[(m / 6) * 6 * ceil(K / 2) + p * 6 + m % 6], the second half
   zero when 2p + 1 = K. */
void mae_bf16_pack_tiles(uint32_t *dst, const float *src, long ld, long k, long m, long pair0, long pair1);

/* C (M,N) [+]= A . B over `pairs` K-pairs; `accumulate` adds into C, else overwrites it. A's row 0 starts
   a tile; B's panel 0 is C's column 0 (offset both to compute a block of C). */
void mae_bf16_gemm(long m, long n, long pairs, const uint32_t *a, long tileStride, long pairStride, long rowStride,
                   const uint32_t *b, long panelStride, float *c, long ldc, int accumulate);

#endif
