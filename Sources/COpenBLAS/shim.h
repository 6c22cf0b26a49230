#include <cblas.h>
/* openblas_set_num_threads / openblas_get_num_threads / openblas_get_corename come from OpenBLAS's cblas.h. */
#include <cpuid.h>
#include <dlfcn.h>

/* Bits of mae_cpu_features(). */
enum {
    MAE_CPU_AVX2_FMA = 1,     /* AVX2 and FMA, and the OS saves ymm state */
    MAE_CPU_AVX512 = 2,       /* AVX-512 F, BW, VL and DQ, and the OS saves zmm state */
    MAE_CPU_AVX512_BF16 = 4,  /* AVX512-BF16 on top of MAE_CPU_AVX512 */
    MAE_CPU_AMD = 8           /* vendor string "AuthenticAMD" */
};

/* What the CPU and OS support, as MAE_CPU_* bits (cpuid leaves 1 and 7, xgetbv as OpenBLAS checks it). */
static inline int mae_cpu_features(void) {
    unsigned int a, b, c, d;
    int bits = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    unsigned int maxLeaf = a;
    if (b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163) bits |= MAE_CPU_AMD;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return bits;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx || maxLeaf < 7) return bits;
    unsigned int xcr0lo, xcr0hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0lo), "=d"(xcr0hi) : "c"(0));
    if ((xcr0lo & 0x6) != 0x6) return bits;            /* xmm and ymm state */
    __cpuid_count(7, 0, a, b, c, d);
    unsigned int ebx7 = b;
    if (fma && ((ebx7 >> 5) & 1)) bits |= MAE_CPU_AVX2_FMA;
    unsigned int avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31); /* F, DQ, BW, VL */
    if ((bits & MAE_CPU_AVX2_FMA) && (ebx7 & avx512) == avx512 && (xcr0lo & 0xe0) == 0xe0) {
        bits |= MAE_CPU_AVX512;
        __cpuid_count(7, 1, a, b, c, d);
        if ((a >> 5) & 1) bits |= MAE_CPU_AVX512_BF16;
    }
    return bits;
}

/* Re-runs OpenBLAS's kernel choice (which reads OPENBLAS_CORETYPE) in this process. Returns 0 when
   the library exports no gotoblas_dynamic_quit/gotoblas_dynamic_init (not a DYNAMIC_ARCH build), 1 otherwise.
   The symbols are looked up at run time so a library without them still links. */
static inline int mae_openblas_rerun_core_choice(void) {
    void *self = dlopen(NULL, RTLD_NOW);
    if (!self) return 0;
    void (*quit)(void) = (void (*)(void))dlsym(self, "gotoblas_dynamic_quit");
    void (*init)(void) = (void (*)(void))dlsym(self, "gotoblas_dynamic_init");
    dlclose(self);
    if (!quit || !init) return 0;
    quit();
    init();
    return 1;
}
