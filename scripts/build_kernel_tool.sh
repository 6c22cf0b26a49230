#!/bin/sh
# Compiles the MAEKernels sources with one tool's main.swift into a throwaway binary, optimised as the
# release build is (-O, whole module, -target-cpu haswell), with the CAVX512 C target's objects
# and a module map for its header as SwiftPM would make them; needs no package resolution and leaves
# .build alone. Usage: scripts/build_kernel_tool.sh MAIN.swift MODULE-NAME OUTPUT-DIR  (binary: OUTPUT-DIR/tool)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
main=$1; module=$2; out=$3
mkdir -p "$out/CAVX512"
cp "$main" "$out/main.swift"
printf 'module CAVX512 {\n    header "%s"\n    export *\n}\n' \
    "$ROOT/Sources/CAVX512/include/mae_avx512.h" > "$out/CAVX512/module.modulemap"
for c in "$ROOT"/Sources/CAVX512/*.c; do
    clang -O2 -ffp-contract=off -c "$c" -I "$ROOT/Sources/CAVX512/include" -o "$out/$(basename "$c" .c).o"
done
swiftc -O -wmo -target-cpu haswell -module-name "$module" \
    $(pkg-config --cflags openblas | sed 's/-I/-Xcc -I/g') -I "$ROOT/Sources/COpenBLAS" -I "$ROOT/Sources/CDNNL" \
    -I "$out/CAVX512" "$ROOT"/Sources/MAEKernels/*.swift "$out/main.swift" "$out"/*.o \
    $(pkg-config --libs openblas) -ldnnl -o "$out/tool"
