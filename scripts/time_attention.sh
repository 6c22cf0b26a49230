#!/bin/sh
# Rough timing of fused vs materialised attention at ViTDet's global-block size (N 4096, 12 heads,
# head width 64, batch 1), optimised as the release build is (-O, whole module, -target-cpu haswell).
# Usage: scripts/time_attention.sh [tokens [heads [query-tile key-tile]]]   (FUSED_ONLY=1 skips the materialised run,
#        SWIFT_TILES=1 runs the AVX2 Swift tile passes instead of the AVX-512 C ones)
# Compiles the MAEKernels sources with scripts/time_attention.swift into one throwaway binary
# (scripts/build_kernel_tool.sh). On a shared machine the numbers are contended.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${TMPDIR:-/tmp}/mae-time-attention
"$ROOT/scripts/build_kernel_tool.sh" "$ROOT/scripts/time_attention.swift" TimeAttention "$OUT"
"$OUT/tool" "$@"
