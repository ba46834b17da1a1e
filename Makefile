# Two entry points: `make demo` and `make test`. Both create .venv and install
# the package with the exact pins in constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo test test-slow bench bench-deps bench-coverage lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,torch,hf,onnx,dist]'
	touch $(STAMP)

# The bench extra (OMLT, Torch-Pruning). Torch-Pruning goes in first with --no-deps, so
# that resolving the extra finds it satisfied and never touches the pinned torch.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps -c constraints.txt torch-pruning
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/optprune demo
	OMP_NUM_THREADS=1 $(VENV)/bin/optprune allocate --example llama-7b

# One worker per core (pytest-xdist); each worker's torch and BLAS run one thread.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_allocation.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_systolic.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_encode.py --archs 50x2,100x2 --images 0,1,2 --time-limit 60

bench-coverage: $(BENCH_STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_coverage.py

lint: $(STAMP)
	$(VENV)/bin/ruff check optprune tests benchmarks
	$(VENV)/bin/mypy optprune

clean:
	rm -rf $(VENV) build *.egg-info
