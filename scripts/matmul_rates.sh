#!/bin/sh
# sgemm and bf16 GFLOP/s of the kernels' linear-layer products at ViT-B/16 batch-8 shapes
# (197*8 x 768 x 2304, x768, x3072, 3072->768), forward and both backward products.
# Usage: scripts/matmul_rates.sh   (ONEDNN_MAX_CPU_ISA=AVX2 shows the fallback; contended on a shared machine)
# Compiles the MAEKernels sources with scripts/matmul_rates.swift into one throwaway binary, optimised
# as the release build is (-O, whole module, -target-cpu haswell), so it leaves .build alone.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${TMPDIR:-/tmp}/mae-matmul-rates
mkdir -p "$OUT"
cp "$ROOT/scripts/matmul_rates.swift" "$OUT/main.swift"
clang -O2 -c -I "$ROOT/Sources/CBF16GEMM/include" "$ROOT/Sources/CBF16GEMM/bf16_gemm.c" -o "$OUT/bf16_gemm.o"
swiftc -O -wmo -target-cpu haswell -module-name MatmulRates \
    $(pkg-config --cflags openblas | sed 's/-I/-Xcc -I/g') -I "$ROOT/Sources/COpenBLAS" -I "$ROOT/Sources/CDNNL" -I "$ROOT/Sources/CBF16GEMM/include" \
    "$ROOT"/Sources/MAEKernels/*.swift "$OUT/main.swift" "$OUT/bf16_gemm.o" \
    $(pkg-config --libs openblas) -ldnnl -o "$OUT/matmul-rates"
"$OUT/matmul-rates" "$@"
