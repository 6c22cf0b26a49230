#!/bin/sh
# Times JSONValue.parse (Sources/MAEJSON, built with -O) on COCO-val-sized files: best of 3 per file.
#   scripts/bench_json.sh [DIR]      (default /tmp/mae-eval-json-bench)
# Makes DIR/gt.json and DIR/dt.json (scripts/make_metrics_fixtures.py --benchmark: 2-decimal numbers,
# RLE strings) and DIR/long.json (10k images x 100 detections with full-precision float32 boxes and
# double scores, as detectron2 writes them) unless they exist.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-/tmp/mae-eval-json-bench}
python=${PYTHON:-/work/venv/bin/python}
mkdir -p "$dir"
[ -f "$dir/dt.json" ] || "$python" "$root/scripts/make_metrics_fixtures.py" --benchmark "$dir"
[ -f "$dir/long.json" ] || "$python" - "$dir/long.json" <<'PY'
import json, sys
import numpy as np
rng = np.random.default_rng(3)
dets = []
for img in range(1, 10001):
    boxes = rng.uniform(0, 600, size=(100, 4)).astype(np.float32).astype(np.float64)
    scores, cats = rng.uniform(0, 1, size=100), rng.integers(1, 81, size=100)
    dets += [{"image_id": img, "category_id": int(c), "bbox": b.tolist(), "score": float(s)}
             for b, s, c in zip(boxes, scores, cats)]
with open(sys.argv[1], "w") as f:
    json.dump(dets, f)
PY
cat > "$dir/main.swift" <<'SWIFT'
import Foundation
@main struct Bench {
    static func main() throws {
        for path in CommandLine.arguments.dropFirst() {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            var best = Double.infinity
            for _ in 0..<3 {
                let start = Date()
                let value = try JSONValue.parse(data)
                best = min(best, Date().timeIntervalSince(start))
                precondition(value.arrayValue != nil || value.objectValue != nil)
            }
            print("\(path): \(data.count / 1_000_000) MB, \(String(format: "%.3f", best)) s")
        }
    }
}
SWIFT
swiftc -O -parse-as-library "$root"/Sources/MAEJSON/*.swift "$dir/main.swift" -o "$dir/bench"
"$dir/bench" "$dir/gt.json" "$dir/dt.json" "$dir/long.json"
