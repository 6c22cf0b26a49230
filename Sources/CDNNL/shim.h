#include <oneapi/dnnl/dnnl.h>
#include <dlfcn.h>
#include <string.h>

/* Helpers over oneDNN 2.6's C API for the one primitive mae-eval uses: a 2-D matmul with bf16
   operands, fp32 accumulation and an fp32 destination (autocast's linear layers, see BF16Matmul.swift). */

/* How an operand of mae_dnnl_matmul is laid out in memory. */
enum {
    MAE_DNNL_ROW_MAJOR = 0,   /* dims (R, C) stored row-major: leading dimension C */
    MAE_DNNL_TRANSPOSED = 1,  /* dims (R, C) stored as its transpose (C, R) row-major */
    MAE_DNNL_PACKED = 2       /* weights only: oneDNN's blocked layout (format_tag any), see mae_dnnl_pack */
};

/* One matmul primitive: dst (M,N) f32 [+]= src (M,K) bf16 . weights (K,N) bf16. */
typedef struct {
    dnnl_primitive_t primitive;
    dnnl_memory_desc_t src, weights, dst;
} mae_dnnl_matmul;

/* A 2-D descriptor (rows, cols) of `layout` with leading dimension `ld` (ignored for MAE_DNNL_PACKED). */
static inline void mae_dnnl_md(dnnl_memory_desc_t *md, int64_t rows, int64_t cols, dnnl_data_type_t type, int layout,
                               int64_t ld) {
    dnnl_dims_t dims = {rows, cols};
    if (layout == MAE_DNNL_PACKED) {
        dnnl_memory_desc_init_by_tag(md, 2, dims, type, dnnl_format_tag_any);
        return;
    }
    dnnl_dims_t strides = {ld, 1};
    if (layout == MAE_DNNL_TRANSPOSED) { strides[0] = 1; strides[1] = ld; }
    dnnl_memory_desc_init_by_strides(md, 2, dims, type, strides);
}

/* Creates the matmul for (M,K) x (K,N) with leading dimensions lda, ldb, ldc. Packed weights take the
   layout `packedWeights` when given (the one a pack was made for), else the one oneDNN prefers.
   `accumulate` adds into dst (sum post-op) instead of overwriting. */
static inline dnnl_status_t mae_dnnl_matmul_create(mae_dnnl_matmul *mm, dnnl_engine_t engine, int64_t m, int64_t k,
                                                   int64_t n, int srcLayout, int64_t lda, int weightsLayout, int64_t ldb,
                                                   const dnnl_memory_desc_t *packedWeights, int64_t ldc, int accumulate) {
    dnnl_memory_desc_t src, weights, dst;
    mae_dnnl_md(&src, m, k, dnnl_bf16, srcLayout, lda);
    if (weightsLayout == MAE_DNNL_PACKED && packedWeights) weights = *packedWeights;
    else mae_dnnl_md(&weights, k, n, dnnl_bf16, weightsLayout, ldb);
    mae_dnnl_md(&dst, m, n, dnnl_f32, MAE_DNNL_ROW_MAJOR, ldc);
    dnnl_matmul_desc_t desc;
    dnnl_status_t s = dnnl_matmul_desc_init(&desc, &src, &weights, NULL, &dst);
    if (s != dnnl_success) return s;
    dnnl_primitive_attr_t attr;
    if ((s = dnnl_primitive_attr_create(&attr)) != dnnl_success) return s;
    if (accumulate) {
        dnnl_post_ops_t ops;
        dnnl_post_ops_create(&ops);
        dnnl_post_ops_append_sum(ops, 1.0f);
        dnnl_primitive_attr_set_post_ops(attr, ops);
        dnnl_post_ops_destroy(ops);
    }
    dnnl_primitive_desc_t pd;
    s = dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) return s;
    mm->src = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    mm->weights = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    mm->dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    s = dnnl_primitive_create(&mm->primitive, pd);
    dnnl_primitive_desc_destroy(pd);
    return s;
}

/* The name of the kernel oneDNN picked for `mm` ("brg:avx512_core_bf16"). */
static inline const char *mae_dnnl_matmul_impl(const mae_dnnl_matmul *mm) {
    const_dnnl_primitive_desc_t pd;
    const char *name = "unknown";
    if (dnnl_primitive_get_primitive_desc(mm->primitive, &pd) == dnnl_success)
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, (void *)&name);
    return name;
}

/* Runs one argument-set on `stream` and waits. */
static inline dnnl_status_t mae_dnnl_execute(dnnl_primitive_t primitive, dnnl_stream_t stream, int count,
                                             const int *kinds, dnnl_memory_t *memories) {
    dnnl_exec_arg_t args[4];
    for (int i = 0; i < count; i++) { args[i].arg = kinds[i]; args[i].memory = memories[i]; }
    dnnl_status_t s = dnnl_primitive_execute(primitive, stream, count, args);
    return s == dnnl_success ? dnnl_stream_wait(stream) : s;
}

/* dst (M,N) [+]= src . weights with the operands at these addresses (laid out as `mm` was created). */
static inline dnnl_status_t mae_dnnl_matmul_run(const mae_dnnl_matmul *mm, dnnl_engine_t engine, dnnl_stream_t stream,
                                                const void *src, const void *weights, float *dst) {
    dnnl_memory_t mem[3] = {0, 0, 0};
    dnnl_status_t s = dnnl_memory_create(&mem[0], &mm->src, engine, (void *)src);
    if (s == dnnl_success) s = dnnl_memory_create(&mem[1], &mm->weights, engine, (void *)weights);
    if (s == dnnl_success) s = dnnl_memory_create(&mem[2], &mm->dst, engine, dst);
    int kinds[3] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST};
    if (s == dnnl_success) s = mae_dnnl_execute(mm->primitive, stream, 3, kinds, mem);
    for (int i = 0; i < 3; i++) if (mem[i]) dnnl_memory_destroy(mem[i]);
    return s;
}

/* Converts fp32 weights (K,N), stored row-major or transposed, into `packed` (bf16, the layout `target`
   describes), through one reorder primitive. */
static inline dnnl_status_t mae_dnnl_pack(dnnl_engine_t engine, dnnl_stream_t stream, const float *weights,
                                          int64_t k, int64_t n, int layout, const dnnl_memory_desc_t *target,
                                          void *packed) {
    dnnl_memory_desc_t plain;
    mae_dnnl_md(&plain, k, n, dnnl_f32, layout, layout == MAE_DNNL_TRANSPOSED ? k : n);
    dnnl_primitive_desc_t pd;
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, &plain, engine, target, engine, NULL);
    if (s != dnnl_success) return s;
    dnnl_primitive_t reorder;
    s = dnnl_primitive_create(&reorder, pd);
    dnnl_primitive_desc_destroy(pd);
    if (s != dnnl_success) return s;
    dnnl_memory_t mem[2] = {0, 0};
    s = dnnl_memory_create(&mem[0], &plain, engine, (void *)weights);
    if (s == dnnl_success) s = dnnl_memory_create(&mem[1], target, engine, packed);
    int kinds[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
    if (s == dnnl_success) s = mae_dnnl_execute(reorder, stream, 2, kinds, mem);
    for (int i = 0; i < 2; i++) if (mem[i]) dnnl_memory_destroy(mem[i]);
    dnnl_primitive_destroy(reorder);
    return s;
}

/* Sets the OpenMP team size oneDNN's parallel regions use from the calling thread on (a per-thread setting). libgomp is loaded
   by libdnnl; the symbol is looked up at run time since this program does not link it directly.
   Returns 0 when the runtime exports no omp_set_num_threads. */
static inline int mae_omp_set_num_threads(int threads) {
    static void (*set)(int) = 0;
    if (!set) {
        void *self = dlopen(NULL, RTLD_NOW);
        if (!self) return 0;
        set = (void (*)(int))dlsym(self, "omp_set_num_threads");
        dlclose(self);
    }
    if (!set) return 0;
    set(threads);
    return 1;
}
