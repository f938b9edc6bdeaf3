# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test test-services test-browser lint format bench clean up down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ursa demo

test: install test-services test-browser
	$(BIN)/python -m pytest -q

# Servers the suite starts for real. CI runs as root on a fresh machine: install them there.
test-services:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The upload page is tested in Debian's Chromium (never `playwright install`: it downloads).
test-browser:
	@test -x /usr/bin/chromium || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Every benchmark, one after another (about half an hour on 2 cores; run on a quiet machine).
# imagededup is the reference in the ingest benchmarks; --no-deps keeps the torch pin intact.
bench: install
	$(BIN)/python -m pip install --quiet --no-deps imagededup PyWavelets tqdm
	$(BIN)/python -m benchmarks.bench_ingest
	$(BIN)/python -m benchmarks.bench_dedup
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_train.py --efficiency
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_cleaning.py
	$(BIN)/python benchmarks/bench_gpu.py
	$(BIN)/python benchmarks/bench_scale.py --ingest 1000,10000 --cache 1000,10000
	$(BIN)/python benchmarks/bench_photos.py

up: install
	$(BIN)/ursa up

down: install
	$(BIN)/ursa down

clean:
	rm -rf ursa-data .pytest_cache .ruff_cache
