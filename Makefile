# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_STAMP := data/fashion_mnist/.prepared
# pytest-xdist workers; 2 matches the 2-core CI machine.
JOBS ?= 2

.PHONY: setup data demo test lint clean det

setup: $(STAMP) $(DATA_STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<81' wheel
	$(PY) -m pip install -q -e '.[tests,deploy]'
	touch $@

$(DATA_STAMP): tools/dataset_converters/prepare_fashion_mnist.py | $(STAMP)
	$(PY) tools/dataset_converters/prepare_fashion_mnist.py --out data/fashion_mnist
	touch $@

data: $(DATA_STAMP)

demo: setup
	$(PY) tools/demo.py

# Optional [det] extra: mmdet 3.3 + mmcv 2.1 ops built for this torch
# (10-15 min the first time; the wheel is kept in work_dirs/wheels/).
# tests/graph/test_mmdet_pruning.py runs once it is installed.
det: $(STAMP)
	PY=$(PY) bash tools/setup/install_det.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collected nothing: that is a failure here.
# The first mmengine import makes yapf write its grammar cache; doing it once
# here stops two xdist workers from racing on a half-written cache file.
test: setup lint
	@$(PY) -c 'import mmengine, mmpretrain' 2>/dev/null
	@OMP_NUM_THREADS=1 $(VENV)/bin/pytest -n $(JOBS) -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) work_dirs .pytest_cache .ruff_cache
