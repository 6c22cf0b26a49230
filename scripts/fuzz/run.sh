#!/bin/sh
# Builds the data layer with libFuzzer + AddressSanitizer and fuzzes it for SECONDS (default 120),
# one worker, seeded with the test fixtures. Usage: scripts/fuzz/run.sh [SECONDS]
set -e
cd "$(dirname "$0")/../.."
OUT=.build-fuzz
mkdir -p $OUT/corpus
# MAECOCO first, as its own module (MAEData imports it), instrumented the same way.
swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name MAECOCO -emit-module \
    -emit-module-path $OUT/MAECOCO.swiftmodule -emit-library -static Sources/MAECOCO/*.swift -o $OUT/libMAECOCO.a
swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name MAEData \
    -I Sources/CPNG -I Sources/CTurboJPEG -I $OUT -L $OUT -lMAECOCO -lpng16 -lturbojpeg \
    Sources/MAEData/*.swift scripts/fuzz/FuzzDecode.swift -o $OUT/fuzz-data
# Seeds: every image fixture behind selector byte 0, a COCO file behind 1.
for f in Tests/DataTests/Fixtures/*.png Tests/DataTests/Fixtures/*.jpg; do
    { printf '\000'; cat "$f"; } > "$OUT/corpus/$(basename "$f")"
done
printf '\001{"images":[{"id":1,"file_name":"a.png","width":4,"height":3}],"categories":[{"id":1,"name":"x"}],"annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[0,0,2,2],"area":4,"iscrowd":0,"segmentation":{"counts":[1,4,7],"size":[3,4]}},{"id":2,"image_id":1,"category_id":1,"bbox":[0,0,2,2],"area":4,"iscrowd":1,"segmentation":{"counts":"0111","size":[2,2]}},{"id":3,"image_id":1,"category_id":1,"bbox":[0,0,2,2],"area":4,"iscrowd":0,"segmentation":[[0,0,1,0,1,1]]}]}' > $OUT/corpus/coco.json
$OUT/fuzz-data $OUT/corpus -max_total_time=${1:-120} -workers=1 -jobs=1 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
