# Fresh-machine entry points. `make demo` runs the whole SAMora pipeline on a built-in phantom,
# `make test` runs the test suite. Both create .venv from the pinned constraints when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output

.PHONY: venv test test-quick lint demo bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt requirements/monailabel.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev,monailabel]"
	$(PY) -m pip install --quiet --no-deps -c requirements/constraints.txt -r requirements/monailabel.txt
	$(PY) -m pip install --quiet -c requirements/constraints.txt setuptools
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet --no-build-isolation -c requirements/constraints.txt -e ".[sam2]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check samora_monai tests benchmarks

demo: $(STAMP)
	$(PY) -m samora_monai demo --out $(DEMO_DIR)

bench: $(STAMP)
	$(PY) benchmarks/bench_networks.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info
