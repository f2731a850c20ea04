# Two entry points: `make demo` and `make test`. Each creates .venv if missing and installs first.
# TORCH picks the torch wheel: torch==2.13.0 is a CPU wheel on machines that carry it locally and the
# default CUDA build from PyPI elsewhere; override e.g. TORCH="torch==2.13.0 --index-url ...".
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Until the quickstart study lands: the preset cost table and a seconds-long search on synthetic data.
demo: $(STAMP)
	$(VENV)/bin/condconv-nas presets
	$(VENV)/bin/condconv-nas search studies/tiny.yaml
	$(VENV)/bin/condconv-nas studies

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/condconv_layer.py

clean:
	rm -rf $(VENV) reports/*.html reports/*.csv
