# Everything sets itself up: `make demo` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# zennit 1.0.0 is installed beside the pinned 0.5.1, for the test that runs the model-state suite against it.
ZENNIT100 := $(VENV)/zennit-1.0.0

.PHONY: install test demo bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip install -q --no-deps --ignore-requires-python --target $(ZENNIT100) zennit==1.0.0
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python -m pytest -q benchmarks --benchmark-columns=median,iqr,rounds --benchmark-sort=name

# On a machine with a CUDA GPU: the CUDA-graph checks of the four transforms, then the GPU overhead table.
gpu-check: $(STAMP)
	$(BIN)/python tests/gpu/check_cuda_graphs.py
	$(BIN)/python benchmarks/gpu_overhead.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache .benchmarks
