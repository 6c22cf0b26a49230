#!/bin/sh
# Rough timing of fused vs materialised attention at ViTDet's global-block size (N 4096, 12 heads,
# head width 64, batch 1), optimised as the release build is (-O, whole module, -target-cpu haswell).
# Usage: scripts/time_attention.sh [tokens [heads [query-tile key-tile]]]   (FUSED_ONLY=1 skips the materialised run,
#        SWIFT_TILES=1 runs the AVX2 Swift tile passes instead of the AVX-512 C ones)
# Compiles the MAEKernels sources with scripts/time_attention.swift into one throwaway binary, so it
# needs no package resolution and leaves .build alone. On a shared machine the numbers are contended.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${TMPDIR:-/tmp}/mae-time-attention
mkdir -p "$OUT"
cp "$ROOT/scripts/time_attention.swift" "$OUT/main.swift"
# The C target CAttentionTile: its object and a module map for its header, as SwiftPM would make them.
mkdir -p "$OUT/CAttentionTile"
printf 'module CAttentionTile {\n    header "%s"\n    export *\n}\n' \
    "$ROOT/Sources/CAttentionTile/include/attention_tile.h" > "$OUT/CAttentionTile/module.modulemap"
clang -O2 -c "$ROOT/Sources/CAttentionTile/attention_tile.c" -I "$ROOT/Sources/CAttentionTile/include" \
    -o "$OUT/attention_tile.o"
swiftc -O -wmo -target-cpu haswell -module-name TimeAttention \
    $(pkg-config --cflags openblas | sed 's/-I/-Xcc -I/g') -I "$ROOT/Sources/COpenBLAS" -I "$ROOT/Sources/CDNNL" \
    -I "$OUT/CAttentionTile" "$ROOT"/Sources/MAEKernels/*.swift "$OUT/main.swift" "$OUT/attention_tile.o" \
    $(pkg-config --libs openblas) -ldnnl -o "$OUT/time-attention"
"$OUT/time-attention" "$@"
