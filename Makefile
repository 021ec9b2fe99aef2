# Two commands on a fresh machine (README): `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install quickstart test bench clean

# Set up once: a virtualenv with torch (CPU or CUDA build, whatever pip resolves here),
# vitscope in editable mode with its test extras, and the example third-party plugin.
$(STAMP): setup.cfg pyproject.toml examples/vitscope-attention-entropy/setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch>=2.3" "torchvision>=0.18"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q -e examples/vitscope-attention-entropy
	touch $(STAMP)

install: $(STAMP)

# Train a ViT on the built-in offline `shapes` data, then render every analysis plugin.
quickstart: install
	$(BIN)/vitscope train --config train/recipes/shapes-quick.toml --name quickstart --overwrite
	$(BIN)/vitscope analyze --all runs/quickstart/best.pt -o outputs/quickstart

test: install
	$(BIN)/python -m pytest -q

# Throughput benchmarks: numbers, not tests. CIFAR is the extracted JPEG mirror:
#   mkdir -p /tmp/vitscope-data && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C /tmp/vitscope-data
CIFAR ?= /tmp/vitscope-data/cifar10-jpeg

bench: install
	$(BIN)/python benchmarks/train_throughput.py --model seed-cifar10 --baseline --data folder:$(CIFAR)
	$(BIN)/python benchmarks/train_throughput.py --model vit-tiny --baseline --data folder:$(CIFAR)
	$(BIN)/python benchmarks/capture_throughput.py --device cpu
	$(BIN)/python benchmarks/analyze_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
