# Every target sets up what it needs: on a fresh machine `make demo` and `make test` are enough.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint docs bench bench-import bench-layers bench-fused bench-layout bench-convert bench-vit bench-train bench-demo bench-clip bench-align bench-text bench-gpu bench-compiled bench-real bench-colour bench-coverage

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,timm,captum,quantus,hub,open-clip,transformers,docs]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/bcosify demo --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs/hooks
	$(BIN)/ruff format --check src tests benchmarks docs/hooks

test: lint
	$(BIN)/python -m pytest --doctest-modules src tests

# the documentation site, into site/; --strict: a broken link or docstring fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# the tests marked slow, which `make test` skips; CI runs them after it
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow tests

# The official `bcos` package is installed beside the project, for this benchmark only.
.bench/official: $(STAMP)
	$(BIN)/pip install --quiet --no-deps --target .bench/official bcos==0.1.3

bench-layers: .bench/official
	$(BIN)/python benchmarks/bench_layers.py --official .bench/official --write docs/benchmarks.md

# Each benchmark rewrites its own section of docs/benchmarks.md; run them one at a time, on an
# otherwise idle machine.
bench-convert bench-vit bench-train bench-demo bench-layout bench-clip bench-align bench-text bench-gpu bench-import: bench-%: $(STAMP)
	$(BIN)/python benchmarks/bench_$*.py --write docs/benchmarks.md

bench-compiled: $(STAMP)
	$(BIN)/python benchmarks/bench_convert.py --compiled --write docs/benchmarks.md

# A real ImageNet network (EfficientNet-Lite0 from PyPI) B-cosified without labels on real
# photos from Debian packages (installed with apt-get when run as root), about 80 minutes on a
# 2-core CPU: every label-free variant has a 20-minute budget.
bench-fused: $(STAMP)
	$(BIN)/python benchmarks/bench_fused.py --write docs/benchmarks.md

bench-real: $(STAMP)
	$(BIN)/python benchmarks/bench_real.py --write docs/benchmarks.md

bench-colour: $(STAMP)
	$(BIN)/python benchmarks/bench_colour.py --jobs 2 --write docs/benchmarks.md

# Every timm family (its smallest model) and every transformers text classifier, converted and
# checked; each case in its own process with a time limit, cached under .bench/coverage (an
# interrupted sweep resumes; a code change measures again).
bench-coverage: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_coverage.py --write docs/benchmarks.md

bench: bench-import bench-layers bench-fused bench-convert bench-compiled bench-vit bench-train bench-demo bench-layout bench-clip bench-align bench-text bench-real bench-colour bench-coverage
