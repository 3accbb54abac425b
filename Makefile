# Sonufy: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed when pyproject.toml or the pins change.
STAMP := $(VENV)/.installed

.PHONY: install demo test clean serve serve-one

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first and alone: here pip takes the CPU build from local disk; a bare
	# "torch" requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/sonufy demo

# Debian's Chromium, for the browser test of the landscape page: Playwright
# drives this one and never downloads a browser of its own.
CHROMIUM ?= /usr/bin/chromium
.PHONY: chromium
chromium: $(CHROMIUM)
$(CHROMIUM):
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core

# The linter first: a minute of tests is not spent on code that does not pass it.
# Two pytest workers, each given whole test files (module fixtures, such as a
# built store, are made once): most of the suite waits on subprocesses,
# servers and sleeps, so two workers on two cores take about 10 minutes where
# one took 12.5. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# `make serve`: a Prefect server on 127.0.0.1:$(PREFECT_PORT) (telemetry off,
# UI at http://127.0.0.1:$(PREFECT_PORT)), prefect.yaml's deployments on the
# process pool "sonufy", and a worker, in the foreground (Ctrl-C stops all).
# `make serve-one`: the same server, the deployments served by one process
# (deployments/serve.py) instead of a pool and a worker.
PREFECT_PORT ?= 4200
SONUFY_TIMEZONE ?= UTC
SERVE_ENV = DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=False \
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api PREFECT_LOGGING_EXTRA_LOGGERS=sonufy_model \
	SONUFY_HOME=$(CURDIR) SONUFY_TIMEZONE=$(SONUFY_TIMEZONE)
START_SERVER = $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) --analytics-off & \
	server=$$!; trap 'kill $$server' EXIT INT TERM; \
	$(BIN)/python -c "import time, urllib.request as u; exec('while True:\n try: u.urlopen(\'http://127.0.0.1:$(PREFECT_PORT)/api/health\'); break\n except OSError: time.sleep(1)')"

serve: install
	export $(SERVE_ENV); $(START_SERVER); \
	$(BIN)/prefect work-pool create sonufy --type process --overwrite; \
	$(BIN)/prefect --no-prompt deploy --all; \
	$(BIN)/prefect worker start --pool sonufy

serve-one: install
	export $(SERVE_ENV); $(START_SERVER); \
	$(BIN)/python deployments/serve.py

clean:
	rm -rf sonufy.duckdb sonufy.duckdb.wal sonufy.duckdb.writer.lock sonufy.snapshot sonufy.data .pytest_cache
