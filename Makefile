# Two entry points: `make demo` and `make test`. Each creates .venv if missing and installs first.
# TORCH picks the torch wheel: torch==2.13.0 is a CPU wheel on machines that carry it locally and the
# default CUDA build from PyPI elsewhere; override e.g. TORCH="torch==2.13.0 --index-url ...".
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow docs install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,onnx,postgres,docs,images,dashboard]'
	touch $(STAMP)

install: $(STAMP)

CLI := $(VENV)/bin/condconv-nas

# The quickstart end to end: search, baselines, confirmation, report, export (re-running resumes).
demo: $(STAMP)
	bash scripts/get_fashion_mnist.sh
	$(CLI) search studies/quickstart.yaml
	$(CLI) baselines studies/quickstart.yaml
	$(CLI) confirm studies/quickstart.yaml
	$(CLI) report studies/quickstart.yaml -o reports/quickstart.html
	$(CLI) export studies/quickstart.yaml --pick best -o exports/quickstart-best
	@echo
	@echo "study:    studies/quickstart.journal (condconv-nas studies)"
	@echo "report:   reports/quickstart.html (+ reports/quickstart.trials.csv, .fronts.csv)"
	@echo "export:   exports/quickstart-best (arch.json, weights.pt, model.ts, MODEL_CARD.md)"
	@echo "next:     condconv-nas fidelity studies/quickstart.yaml --top 3 --epochs 10"

# The default run (under 10 minutes on 2 cores) leaves out the `slow` tests: the database and
# SIGTERM twins of the fault tests. CI runs both (.ci/run).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The documentation site (docs/, mkdocs.yml) into site/; --strict turns every warning (a broken
# link, a public definition without a docstring) into a failure.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d site

bench: $(STAMP)
	$(PY) bench/condconv_layer.py

clean:
	rm -rf $(VENV) reports/*.html reports/*.csv exports
