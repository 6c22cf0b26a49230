#!/bin/sh
# sgemm and bf16 GFLOP/s of the kernels' linear-layer products at ViT-B/16 batch-8 shapes
# (197*8 x 768 x 2304, x768, x3072, 3072->768), forward and both backward products.
# Usage: scripts/matmul_rates.sh   (ONEDNN_MAX_CPU_ISA=AVX2 shows the fallback; contended on a shared machine)
# Compiles the MAEKernels sources with scripts/matmul_rates.swift into one throwaway binary
# (scripts/build_kernel_tool.sh).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${TMPDIR:-/tmp}/mae-matmul-rates
"$ROOT/scripts/build_kernel_tool.sh" "$ROOT/scripts/matmul_rates.swift" MatmulRates "$OUT"
"$OUT/tool" "$@"
