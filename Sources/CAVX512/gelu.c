#include "mae_avx512.h"
#include "vector_math.h"

/* Phi(x) as VectorMath.swift's normalCDF16: erfc(-x / sqrt 2) / 2 through Numerical Recipes' erfc. */
AVX512 static inline __m512 normal_cdf512(__m512 x) {
    const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(-0.70710678118654752f));
    const __m512 az = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32(0x7FFFFFFF)));
    /* erfcPositive16(|z|) */
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(az, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(0.17087277f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.82215223f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.48851587f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.13520398f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.27886807f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.18628806f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.09678418f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.37409196f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.00002368f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.26551223f));
    const __m512 e = _mm512_mul_ps(t, exp512(_mm512_fnmadd_ps(az, az, p)));
    const __m512 half = _mm512_mul_ps(e, _mm512_set1_ps(0.5f));
    /* x < 0 (sign bit set): half, else 1 - half. */
    const __mmask16 negative = _mm512_cmplt_epi32_mask(_mm512_castps_si512(x), _mm512_setzero_si512());
    return _mm512_mask_blend_ps(negative, _mm512_sub_ps(_mm512_set1_ps(1.0f), half), half);
}

AVX512 void mae_gelu_forward(float *out, const float *input, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(input + i);
        _mm512_storeu_ps(out + i, _mm512_mul_ps(x, normal_cdf512(x)));
    }
    if (i < n) {
        __mmask16 m = lanes(n - i);
        __m512 x = _mm512_maskz_loadu_ps(m, input + i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(x, normal_cdf512(x)));
    }
}
