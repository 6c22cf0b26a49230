#!/bin/sh
# Builds a libFuzzer + AddressSanitizer harness over one layer's sources and fuzzes it in one
# process (one core), seeded from the test fixtures.
#   scripts/fuzz/run.sh safetensors|torch|data [SECONDS]     (default 120 s)
# Binaries, corpora and crash files go to /tmp/mae-eval-fuzz/<target>/.
set -eu
target=$1
seconds=${2:-120}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=/tmp/mae-eval-fuzz/$target
mkdir -p "$work/corpus" "$work/crashes"
# Builds Sources/NAME as its own instrumented static module in $work, importing the modules built before it.
module() {
    swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name "$1" -emit-module \
        -emit-module-path "$work/$1.swiftmodule" -emit-library -static -I "$work" "$root"/Sources/"$1"/*.swift \
        -o "$work/lib$1.a"
}
case $target in
safetensors|torch)
    module MAEJSON
    swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name MAEFormats -I "$work" -L "$work" -lMAEJSON \
        "$root"/Sources/MAEFormats/*.swift "$root/scripts/fuzz/fuzz_$target.swift" -o "$work/fuzz" ;;
data)
    # MAEJSON and MAECOCO first (MAEData imports MAECOCO, which imports MAEJSON).
    module MAEJSON
    module MAECOCO
    swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name MAEData \
        -I "$root/Sources/CPNG" -I "$root/Sources/CTurboJPEG" -I "$work" -L "$work" -lMAECOCO -lMAEJSON -lpng16 -lturbojpeg \
        "$root"/Sources/MAEData/*.swift "$root/scripts/fuzz/FuzzDecode.swift" -o "$work/fuzz" ;;
*) echo "unknown fuzz target '$target': use safetensors, torch or data" >&2; exit 2 ;;
esac
if [ -z "$(ls -A "$work/corpus")" ]; then
    case $target in
    safetensors) cp "$root"/Tests/FormatTests/Fixtures/*.safetensors "$work/corpus/" ;;
    torch)
        cp "$root"/Tests/FormatTests/Fixtures/views.pth "$root"/Tests/FormatTests/Fixtures/train_ckpt.pth "$work/corpus/"
        # The bare pickles too, so most inputs exercise the unpickler rather than the zip reader.
        (cd "$work/corpus" && for f in *.pth; do unzip -p "$f" '*/data.pkl' > "$f.pkl"; done) ;;
    data)
        # Selector byte 0: an image decode; 1: a COCO instances file.
        for f in "$root"/Tests/DataTests/Fixtures/*.png "$root"/Tests/DataTests/Fixtures/*.jpg; do
            { printf '\000'; cat "$f"; } > "$work/corpus/$(basename "$f")"
        done
        printf '\001{"images":[{"id":1,"file_name":"a.png","width":4,"height":3}],"categories":[{"id":1,"name":"x"}],"annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[0,0,2,2],"area":4,"iscrowd":0,"segmentation":{"counts":[1,4,7],"size":[3,4]}},{"id":2,"image_id":1,"category_id":1,"bbox":[0,0,2,2],"area":4,"iscrowd":1,"segmentation":{"counts":"0111","size":[2,2]}},{"id":3,"image_id":1,"category_id":1,"bbox":[0,0,2,2],"area":4,"iscrowd":0,"segmentation":[[0,0,1,0,1,1]]}]}' > "$work/corpus/coco.json" ;;
    esac
fi
cd "$work"
./fuzz -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$work/crashes/" corpus
