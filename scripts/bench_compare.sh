#!/usr/bin/env bash
# Side-by-side speed: mae-eval bench and scripts/bench_pytorch.py, alternated in one run so both see
# the same machine load; prints each pair and the median ratio per mode.
# Usage: scripts/bench_compare.sh [MODEL] [IMG] [BATCH] [ROUNDS]   (PYTHON=/path/to/python with torch+timm)
#        scripts/bench_compare.sh vitdet_b 1024 1 1                 (ViTDet-B at 1024 px, forward only)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-vit_base_patch16}; img=${2:-224}; batch=${3:-8}; rounds=${4:-3}
python=${PYTHON:-python3}
swift build -c release --product mae-eval >/dev/null
ours() { .build/release/mae-eval bench --model "$model" --img-size "$img" --batch-size "$batch" "$@"; }
torch() { "$python" scripts/bench_pytorch.py --model "$model" --img-size "$img" --batch-size "$batch" "$@"; }
rate() { sed -E 's/.*"img_per_s": ?([0-9.e+-]+).*/\1/'; }
specs=("forward" "train" "pretrain 0.75" "pretrain 0"); iters=3
# ViTDet-B (backbone + simple feature pyramid) is a forward-only preset; at 1024 px one timed forward is ~20 s.
[ "$model" = vitdet_b ] && specs=("forward") && iters=1
for spec in "${specs[@]}"; do
  set -- $spec
  mode=$1; extra=(--mode "$mode" --iters "$iters")
  [ -n "${2:-}" ] && extra+=(--mask-ratio "$2")
  ratios=()
  for r in $(seq "$rounds"); do
    a=$(ours "${extra[@]}" | rate); b=$(torch "${extra[@]}" | rate)
    ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }')")
    echo "$spec round $r: mae-eval $a img/s, pytorch $b img/s"
  done
  printf '%s\n' "${ratios[@]}" | sort -n | awk -v s="$spec" '{ v[NR] = $1 } END { print s ": median ratio mae-eval/pytorch " v[int((NR + 1) / 2)] }'
done
