# vectorai: `make demo` runs the whole chain on the embedded defaults; `make test` runs every test but
# the whole-system ones (marker `system`), `make test-all` runs them all (what CI runs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LUIGI  := $(VENV)/bin/luigi

.PHONY: setup demo test test-all unit fuzz services-up services-down bench luigid clean chromium

setup: $(VENV)/.installed

# constraints.txt pins the versions CI tested, so a new machine gets the same stack.
$(VENV)/.installed: setup.py constraints.txt vectorai/_resample.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: setup
	$(LUIGI) --module tasks PredictTask --local-scheduler
	$(VENV)/bin/vectorai-results

# One pytest worker per core (pytest-xdist), each test file on one worker: most tests wait on a
# broker, a subprocess or a timeout, so two workers on two cores overlap the waits. Each worker
# starts (and stops) the Kafka, PostgreSQL, Pub/Sub emulator and MLflow it needs, so a fault test
# stops only its own worker's broker; the trained model is shared (tests/conftest.py).
TEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile

test: setup chromium
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not system"

# Every test: the above, then the whole-system ones (compose stack, namespace cluster, clone demo,
# review loop, ...) one at a time, as each loads the whole machine by itself.
test-all: test
	$(PY) -m pytest -m system

# Debian's chromium for the browser tests, installed with apt when missing (needs root). Not
# fatal here: without it the browser tests skip, or fail under CI=true, saying why.
chromium:
	-@$(PY) -m services.chromium

unit: setup
	$(PY) -m pytest tests/unit

# The decoder's and the wire's fuzz tests with new random batches, far past the fixed budget `make test` runs
# (FUZZ_EXAMPLES=200000 for a night). A failure prints the smallest batch that breaks it.
fuzz: setup
	FUZZ_RANDOM=1 FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-30000} $(PY) -m pytest tests/unit/test_fuzz_decode.py tests/unit/test_fuzz_wire.py

services-up: setup
	$(PY) -m services up

services-down:
	$(PY) -m services down

bench: setup
	$(PY) benchmarks/throughput.py

# The central scheduler, configured by docker/luigid.cfg (retries, /metrics). With
# LUIGI_TASK_HISTORY_DB set to an SQLAlchemy URL, e.g.
#   LUIGI_TASK_HISTORY_DB=postgresql+psycopg2://vectorai:<password>@localhost:5432/luigi make luigid
# it records every task's history there (/history); without it, none. The URL stays in the
# environment, so it is neither echoed here nor written to any file.
LUIGID_PORT      ?= 8082
LUIGID_STATE_DIR ?= data/luigid
luigid: setup
	@mkdir -p $(LUIGID_STATE_DIR)
	LUIGI_CONFIG_PATH=docker/luigid.cfg LUIGID_RECORD_TASK_HISTORY=$(if $(LUIGI_TASK_HISTORY_DB),true,false) \
	    $(VENV)/bin/luigid --port $(LUIGID_PORT) --state-path $(LUIGID_STATE_DIR)/state.pickle

clean:
	rm -rf data/processed data/stream data/reports data/mlflow data/predictions.sqlite* models/*/ .services
