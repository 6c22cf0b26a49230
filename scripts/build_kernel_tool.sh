#!/bin/sh
# Compiles the MAEKernels sources with one tool's main.swift into a throwaway binary, optimised as the
# release build is (-O, whole module, -target-cpu haswell), with the CAttentionTile C target's object
# and a module map for its header as SwiftPM would make them; needs no package resolution and leaves
# .build alone. Usage: scripts/build_kernel_tool.sh MAIN.swift MODULE-NAME OUTPUT-DIR  (binary: OUTPUT-DIR/tool)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
main=$1; module=$2; out=$3
mkdir -p "$out/CAttentionTile"
cp "$main" "$out/main.swift"
printf 'module CAttentionTile {\n    header "%s"\n    export *\n}\n' \
    "$ROOT/Sources/CAttentionTile/include/attention_tile.h" > "$out/CAttentionTile/module.modulemap"
clang -O2 -c "$ROOT/Sources/CAttentionTile/attention_tile.c" -I "$ROOT/Sources/CAttentionTile/include" \
    -o "$out/attention_tile.o"
swiftc -O -wmo -target-cpu haswell -module-name "$module" \
    $(pkg-config --cflags openblas | sed 's/-I/-Xcc -I/g') -I "$ROOT/Sources/COpenBLAS" -I "$ROOT/Sources/CDNNL" \
    -I "$out/CAttentionTile" "$ROOT"/Sources/MAEKernels/*.swift "$out/main.swift" "$out/attention_tile.o" \
    $(pkg-config --libs openblas) -ldnnl -o "$out/tool"
