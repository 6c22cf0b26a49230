#!/bin/sh
# Builds a libFuzzer + AddressSanitizer harness over one layer's sources and fuzzes it in one
# process (one core), seeded from the test fixtures.
#   scripts/fuzz/run.sh safetensors|torch|data|yaml [SECONDS]     (default 120 s)
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
yaml)
    # The task-spec parser is MAETasks, so the library stack is built (uninstrumented, so coverage
    # comes from the parser), then libyaml, Yams and MAETasks with the fuzzer and ASan.
    yams="$root/.build/checkouts/Yams/Sources"
    [ -d "$yams/Yams" ] || { echo "Yams' sources are missing: run 'swift build' once first" >&2; exit 2; }
    plain() {
        swiftc -O -parse-as-library -module-name "$1" -emit-module -emit-module-path "$work/$1.swiftmodule" \
            -emit-library -static -I "$work" -I "$root/Sources/COpenBLAS" -I "$root/Sources/CPNG" \
            -I "$root/Sources/CTurboJPEG" ${2:-} "$root"/Sources/"$1"/*.swift -o "$work/lib$1.a"
    }
    plain MAEJSON; plain MAEFormats; plain MAEKernels "-target-cpu haswell"; plain MAEModels "-target-cpu haswell"
    plain MAECOCO; plain MAEData "-target-cpu haswell"
    mkdir -p "$work/cyaml"
    for c in "$yams"/CYaml/src/*.c; do
        clang -O1 -fsanitize=fuzzer-no-link,address -DYAML_DECLARE_STATIC -I "$yams/CYaml/include" \
            -c "$c" -o "$work/cyaml/$(basename "$c" .c).o"
    done
    ar rcs "$work/libCYaml.a" "$work"/cyaml/*.o
    swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name Yams -D SWIFT_PACKAGE -emit-module \
        -emit-module-path "$work/Yams.swiftmodule" -emit-library -static -I "$yams/CYaml/include" \
        "$yams"/Yams/*.swift -o "$work/libYams.a"
    swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name MAETasks \
        -I "$work" -I "$yams/CYaml/include" -I "$root/Sources/COpenBLAS" -I "$root/Sources/CPNG" -I "$root/Sources/CTurboJPEG" \
        -L "$work" -lYams -lCYaml -lMAEData -lMAECOCO -lMAEModels -lMAEKernels -lMAEFormats -lMAEJSON \
        -lopenblas -lpng16 -lturbojpeg \
        "$root"/Sources/MAETasks/*.swift "$root/scripts/fuzz/fuzz_yaml.swift" -o "$work/fuzz" ;;
*) echo "unknown fuzz target '$target': use safetensors, torch, data or yaml" >&2; exit 2 ;;
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
    yaml)
        cp "$root"/Tasks/*.yaml "$work/corpus/"
        # The hostile cases: deep nesting, an alias bomb, a duplicate key, bad values, an override.
        lp="$root/Tasks/shapes-linprobe.yaml"; ft="$root/Tasks/shapes-finetune.yaml"
        { printf 'name: x\nseeds: '; head -c 60000 /dev/zero | tr '\0' '['; echo; } > "$work/corpus/nested.yaml"
        { echo 'a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]'; i=1
          while [ $i -lt 10 ]; do j=$((i - 1)); printf 'a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n' $i $i $j $j $j $j $j $j $j $j $j $j; i=$((i + 1)); done
          echo 'seeds: *a9'; } > "$work/corpus/laughs.yaml"
        sed 's/  epochs: 100/  epochs: 10\n  epochs: 20/' "$lp" > "$work/corpus/duplicate.yaml"
        sed 's/epochs: 100/epochs: ten/' "$lp" > "$work/corpus/ten.yaml"
        sed 's/lr_grid: \[0.01,/lr_grid: [.nan,/' "$lp" > "$work/corpus/nan.yaml"
        sed 's/lr_grid: \[0.01,/lr_grid: ["fast",/' "$lp" > "$work/corpus/fast.yaml"
        sed 's/rand-m5-mstd0.5-inc1/rand-m999-n50/' "$ft" > "$work/corpus/randaugment.yaml"
        sed 's/optimizer: adamw/optimizer: sgd/' "$ft" > "$work/corpus/sgd.yaml"
        { echo '#set recipe.base_lr=0.002'; cat "$ft"; } > "$work/corpus/set.yaml"
        { echo '#set recipe.augmentation.rrc_scale=[0.5, 1]'; cat "$ft"; } > "$work/corpus/set-list.yaml" ;;
    esac
fi
cd "$work"
./fuzz -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$work/crashes/" corpus
