# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
# No wheel cache: the environments hold about 7 GB already, and CI machines can be short of disk.
export PIP_NO_CACHE_DIR := 1
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fcnseg-installed
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-fast typecheck bench-cpu clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,rtx,openvino,video,triton,report,datasets]"
	# Type stubs for checking the TensorRT layer; --no-deps because its dependency is the uninstallable stub package.
	$(BIN)/python -m pip install -q --no-deps tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

# Triton Inference Server for the serving tests and fcn-serve: the tritonserver bundled by nvidia-pytriton, in
# an environment of its own because pytriton pins numpy < 2. Its Python backend runs this checkout's runtime.
TRITON_VENV  := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.fcnseg-installed

# OpenVINO there too, so the served Segmenter runs the same backend as an in-process one (OpenVINO accepts numpy < 2).
$(TRITON_STAMP): pyproject.toml Makefile
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "onnxruntime>=1.18,<1.20" "pillow>=9" \
		"openvino==2026.4.1"
	$(TRITON_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(TRITON_STAMP)

venv: $(STAMP) $(TRITON_STAMP)

demo: $(STAMP)
	$(BIN)/python -m fcnseg.benchmarks.demo --out $(DEMO_OUT)

test: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# FCN-ResNet50 and FCN-8s/ResNet-18 at 520x520 on this CPU: PyTorch FP32 eager vs ONNX Runtime and OpenVINO on the
# FP32 and INT8 graphs, end to end and model only, interleaved in one run, each row against this CPU's measured
# convolution peak (bench_out/<arch>/cpu_speed.md).
bench-cpu: $(STAMP)
	$(BIN)/python -m fcnseg.benchmarks.cpu_speed --out bench_out

# Type-check the TensorRT layer against tensorrt-stubs (also part of `make test`).
typecheck: $(STAMP)
	$(BIN)/python -m pytest -q tests/export/test_tensorrt_typecheck.py

clean:
	rm -rf $(DEMO_OUT) bench_out .pytest_cache .mypy_cache
