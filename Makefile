# The two commands of the quick start; each installs the system libraries it needs when missing.
SYSTEM_PACKAGES = pkg-config libopenblas-dev libpng-dev libturbojpeg0-dev
# oneDNN (the bf16 path) ships no pkg-config file: its header is what tells it is installed.
DNNL_HEADER = /usr/include/oneapi/dnnl/dnnl.h

.PHONY: run test deps bench

## Runs the main job on the embedded default (see README).
run: deps
	swift run -c release mae-eval linprobe

## Runs every unit, parity and end-to-end test.
test: deps
	swift test

## Installs the C libraries through apt when pkg-config (or, for oneDNN, its header) cannot find them.
deps:
	@if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openblas libpng libturbojpeg; then \
		echo "installing $(SYSTEM_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	fi
	@if [ ! -f $(DNNL_HEADER) ]; then \
		echo "installing libdnnl-dev"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libdnnl-dev; \
	fi

## Side-by-side speed against PyTorch (needs torch and timm in PYTHON's environment).
bench: deps
	scripts/bench_compare.sh
