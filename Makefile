# Two commands on a fresh machine (README): `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install browser quickstart test bench clean

# Set up once: a virtualenv with torch (CPU or CUDA build, whatever pip resolves here: on
# Linux that is the CUDA build, about 6 GB, even without a GPU), vitscope in editable mode
# with its test extras (the notebook runner included), the timm/hf extras (so the adapter
# tests run), the bench extra (pytorch-grad-cam, for benchmarks/api_vs_peers.py), and the
# example third-party plugin. TORCH_INDEX=URL installs torch from that index instead, e.g. a CPU-only
# build where your package index offers one:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
$(STAMP): setup.cfg pyproject.toml examples/vitscope-attention-entropy/setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch>=2.3" "torchvision>=0.18"
	$(BIN)/python -m pip install -q -e ".[dev,timm,hf,clip,bench,cam,captum,lrp]"
	$(BIN)/python -m pip install -q -e examples/vitscope-attention-entropy
	touch $(STAMP)

install: $(STAMP)

# Train a ViT on the built-in offline `shapes` data, then render every analysis plugin.
quickstart: install
	$(BIN)/vitscope train --config train/recipes/shapes-quick.toml --name quickstart --overwrite
	$(BIN)/vitscope analyze --all runs/quickstart/best.pt -o outputs/quickstart

# Headless Chromium for the browser tests (tests/browser.py): one idempotent step, nothing
# to do when a Chromium is installed; else Debian's package (as root, or with sudo -n), with
# apt-get update only when the package lists lack it. Without one the browser tests FAIL
# (VITSCOPE_SKIP_BROWSER_TESTS=1 skips them on a dev machine).
APT_CHROMIUM = env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
browser:
	@have() { command -v "$$1" >/dev/null 2>&1; }; \
	if [ -n "$$VITSCOPE_CHROMIUM" ] || have chromium || have chromium-browser || have google-chrome; \
	then :; elif have apt-get; then \
	  S=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); echo "Installing chromium (apt-get) for the browser tests"; \
	  $$S $(APT_CHROMIUM) >/dev/null 2>&1 || { $$S apt-get update -qq \
	    && $$S $(APT_CHROMIUM) >/dev/null; } || echo "Could not install chromium: the browser tests will fail"; \
	else echo "No Chromium found: the browser tests will fail (install one)"; fi

test: install browser
	$(BIN)/python -m pytest -q

# Throughput benchmarks: numbers, not tests. CIFAR is the extracted JPEG mirror:
#   mkdir -p /tmp/vitscope-data && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C /tmp/vitscope-data
CIFAR ?= /tmp/vitscope-data/cifar10-jpeg

bench: install
	$(BIN)/python benchmarks/train_throughput.py --model seed-cifar10 --baseline --data folder:$(CIFAR)
	$(BIN)/python benchmarks/train_throughput.py --model vit-tiny --baseline --data folder:$(CIFAR)
	$(BIN)/python benchmarks/capture_throughput.py --device cpu
	$(BIN)/python benchmarks/analyze_throughput.py
	$(BIN)/python benchmarks/api_vs_peers.py

clean:
	rm -rf $(VENV) build *.egg-info
