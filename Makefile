# The two commands of the quick start; each installs the system libraries it needs when missing.
SYSTEM_PACKAGES = pkg-config libopenblas-dev libpng-dev libturbojpeg0-dev

.PHONY: run test deps bench

## Runs the main job on the embedded default (see README).
run: deps
	swift run -c release mae-eval linprobe

## Runs every unit, parity and end-to-end test.
test: deps
	swift test

## Installs the C libraries through apt when pkg-config cannot find them.
deps:
	@if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openblas libpng libturbojpeg; then \
		echo "installing $(SYSTEM_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	fi

## Side-by-side speed against PyTorch (needs torch and timm in PYTHON's environment): ViT-B/16 at 224 px,
## then ViTDet-B's backbone + pyramid at 1024 px (one round: ~half a minute per image and side on 2 cores).
bench: deps
	scripts/bench_compare.sh
	scripts/bench_compare.sh vitdet_b 1024 1 1
