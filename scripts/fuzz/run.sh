#!/bin/sh
# Builds a libFuzzer harness over Sources/MAEFormats and runs it in one process (one core).
#   scripts/fuzz/run.sh safetensors|torch SECONDS
# Binaries, corpora and crash files go to /tmp/mae-eval-fuzz/<target>/ (seeded from the test fixtures).
set -eu
target=$1
seconds=${2:-120}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=/tmp/mae-eval-fuzz/$target
mkdir -p "$work/corpus" "$work/crashes"
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name MAEFormats \
    "$root"/Sources/MAEFormats/*.swift "$root/scripts/fuzz/fuzz_$target.swift" -o "$work/fuzz"
if [ -z "$(ls -A "$work/corpus")" ]; then
    case $target in
    safetensors) cp "$root"/Tests/FormatTests/Fixtures/*.safetensors "$work/corpus/" ;;
    torch)
        cp "$root"/Tests/FormatTests/Fixtures/views.pth "$root"/Tests/FormatTests/Fixtures/train_ckpt.pth "$work/corpus/"
        # The bare pickles too, so most inputs exercise the unpickler rather than the zip reader.
        cd "$work/corpus" && for f in *.pth; do unzip -p "$f" '*/data.pkl' > "$f.pkl"; done ;;
    esac
fi
cd "$work"
./fuzz -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="$work/crashes/" corpus
