# Two commands on a machine with only python3 and make: `make run` (the pipeline on the shipped sample) and
# `make test`. Each creates .venv and installs the pinned dependencies on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

SERVICES := .cache/services/installed.json

.PHONY: run test lint typecheck check bench sample dry-run clean services

$(INSTALLED): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(INSTALLED)

run: $(INSTALLED)
	$(PY) scripts/bronze_dlt_pipeline.py

dry-run: $(INSTALLED)
	$(PY) scripts/bronze_dlt_pipeline.py --dry-run

# Prometheus, the Pushgateway, node-exporter and Chromium for the tests, unpacked from Debian's packages into
# .cache/services (no root needed; see tests/services.py).
$(SERVICES): tests/services.py
	$(PY) tests/services.py install

services: $(INSTALLED) $(SERVICES)

test: $(INSTALLED) $(SERVICES)
	$(PY) -m pytest

lint: $(INSTALLED)
	$(PY) -m ruff check retail_bronze_source schemas scripts tests bench

typecheck: $(INSTALLED)
	$(PY) -m mypy

check: lint typecheck test

bench: $(INSTALLED)
	$(PY) bench/run_benchmark.py

sample: $(INSTALLED)
	$(PY) scripts/generate_raw_data.py --out data_raw --seed 42 --scale 1

clean:
	rm -rf lake duckdb .pytest_cache .mypy_cache .ruff_cache
