# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv themselves; torch comes from the pinned CPU build and every
# other package is held by constraints.txt so nothing can pull another torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: venv demo demo-quick test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/relist demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(VENV)/bin/relist demo --quick --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check relist tests benchmarks scripts
	$(PY) -m pytest -n 2 --timeout 600 -q

bench: $(STAMP)  # make bench STUDY=ranking_latency
	$(PY) -m benchmarks $(STUDY)

lint: $(STAMP)
	$(VENV)/bin/ruff check relist tests benchmarks scripts

clean:
	rm -rf $(VENV) $(DEMO_OUT)
