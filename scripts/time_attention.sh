#!/bin/sh
# Rough timing of fused vs materialised attention at ViTDet's global-block size (N 4096, 12 heads,
# head width 64, batch 1), optimised as the release build is (-O, whole module, -target-cpu haswell).
# Usage: scripts/time_attention.sh [tokens [heads [query-tile key-tile]]]   (FUSED_ONLY=1 skips the materialised run)
# Compiles the MAEKernels sources with scripts/time_attention.swift into one throwaway binary, so it
# needs no package resolution and leaves .build alone. On a shared machine the numbers are contended.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${TMPDIR:-/tmp}/mae-time-attention
mkdir -p "$OUT"
cp "$ROOT/scripts/time_attention.swift" "$OUT/main.swift"
clang -O2 -c -I "$ROOT/Sources/CBF16GEMM/include" "$ROOT/Sources/CBF16GEMM/bf16_gemm.c" -o "$OUT/bf16_gemm.o"
swiftc -O -wmo -target-cpu haswell -module-name TimeAttention \
    $(pkg-config --cflags openblas | sed 's/-I/-Xcc -I/g') -I "$ROOT/Sources/COpenBLAS" -I "$ROOT/Sources/CDNNL" -I "$ROOT/Sources/CBF16GEMM/include" \
    "$ROOT"/Sources/MAEKernels/*.swift "$OUT/main.swift" "$OUT/bf16_gemm.o" \
    $(pkg-config --libs openblas) -ldnnl -o "$OUT/time-attention"
"$OUT/time-attention" "$@"
