# Sonufy: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed when pyproject.toml or the pins change.
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

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

test: install $(CHROMIUM)
	$(BIN)/python -m pytest

clean:
	rm -rf sonufy.duckdb sonufy.duckdb.wal sonufy.data .pytest_cache
