#ifndef MAE_AVX512_H
#define MAE_AVX512_H
/* AVX-512 versions of a few hot AVX2 Swift loops of MAEKernels: the fused attention's passes over
   one score tile (FlashAttention.swift) and the exact GELU (Activation.swift). Call them only when
   the CPU has AVX-512 F (CPUFeatures.current.avx512): they are compiled for it function by function
   whatever the rest of the package targets; the Swift side keeps its loops for every other CPU. */

/* scores (rows x cols, row stride ld) += the tile's bias, in place, and rowMax[r] = the row's max
   afterwards (rowMax may be NULL). The bias is either
     dense:      dense[r * ldDense + j]                       (dense != NULL), or
     decomposed: relH[r * gh + kh] + relW[r * gw + kw]         (relH != NULL), key k0 + j = kh gw + kw
   (ViTDet's rel-pos terms, FlashAttention.swift's AttentionBias.decomposed), or none (both NULL). */
void mae_tile_add_bias_max(float *scores, long rows, long cols, long ld,
                           const float *dense, long ldDense,
                           const float *relH, const float *relW, long gh, long gw, long k0,
                           float *rowMax);

/* In place scores[r, j] = e^(scores[r, j] - shift[r]); rowSum[r] = the row's sum of the new values
   (rowSum may be NULL). The exponential is exp16's (VectorMath.swift) operation for operation. */
void mae_tile_exp_sum(float *scores, long rows, long cols, long ld, const float *shift, float *rowSum);

/* out[i] = input[i] * Phi(input[i]) for i < n (out may alias input): geluForward's normalCDF16
   (VectorMath.swift) operation for operation, so the results are bit-identical. */
void mae_gelu_forward(float *out, const float *input, long n);

/* The bf16 matrix product (bf16_gemm.c). */
#include "bf16_gemm.h"

#endif
