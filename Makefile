# vectorai: `make demo` runs the whole chain on the embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LUIGI  := $(VENV)/bin/luigi

.PHONY: setup demo test unit fuzz services-up services-down bench luigid clean

setup: $(VENV)/.installed

# constraints.txt pins the versions CI tested, so a new machine gets the same stack.
$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: setup
	$(LUIGI) --module tasks PredictTask --local-scheduler
	$(VENV)/bin/vectorai-results

# Starts (and stops) Kafka, PostgreSQL and the Pub/Sub emulator itself, in the test session.
test: setup
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

# The decoder's fuzz test with new random batches, far past the fixed budget `make test` runs
# (FUZZ_EXAMPLES=200000 for a night). A failure prints the smallest batch that breaks it.
fuzz: setup
	FUZZ_RANDOM=1 FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-30000} $(PY) -m pytest tests/unit/test_fuzz_decode.py

services-up: setup
	$(PY) -m services up

services-down:
	$(PY) -m services down

bench: setup
	$(PY) benchmarks/throughput.py

luigid: setup
	$(VENV)/bin/luigid --port 8082

clean:
	rm -rf data/processed data/stream data/reports data/mlflow data/predictions.sqlite* models/*/ .services
