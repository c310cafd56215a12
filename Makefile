# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench serve clean chromium lock

# Installs exactly what requirements-dev.lock pins (hashes checked), then the project itself. After changing the
# dependencies in pyproject.toml: make lock.
$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# Re-pin every dependency (runtime for the image, runtime + dev for the venv) with their hashes.
lock:
	$(PYTHON) -m venv var/lock-tools && var/lock-tools/bin/pip install --quiet pip-tools
	var/lock-tools/bin/pip-compile --quiet --strip-extras --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml
	var/lock-tools/bin/pip-compile --quiet --strip-extras --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links --extra dev -o requirements-dev.lock pyproject.toml

demo: $(STAMP)
	$(BIN)/crm demo

serve: $(STAMP)
	$(BIN)/crm serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The suite runs twice: on the embedded SQLite and on PostgreSQL (tests/run_suites.py says which ran).
test: $(STAMP) chromium
	$(BIN)/python tests/run_suites.py

# The console's browser tests use Debian's Chromium at /usr/bin/chromium (and CJK fonts for legible screenshots);
# installed here when missing and possible (root or passwordless sudo), otherwise those tests fail saying how.
chromium:
	@{ test -x /usr/bin/chromium && dpkg -s fonts-noto-cjk >/dev/null 2>&1; } || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-noto-cjk; } \
	  || echo "could not install chromium (apt-get install -y chromium): the console's browser tests will fail"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) var .pytest_cache
