# The quick start: `make run` starts everything (embedded NATS and PostgreSQL), `make test` runs
# every test. Both create .venv and install the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-faults bench lint lock analytics-js clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required (found " + sys.version.split()[0] + "); run: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/krenalis serve

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not faults"

# Exit code 5 is "no test selected": fine while no long fault test exists.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m faults || [ $$? -eq 5 ]

bench: $(STAMP)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

# constraints.txt pins every package `make install` installs (the releases the tests passed
# with). Refresh it on purpose: the newest releases pyproject.toml allows, from a scratch venv.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude krenalis-events > constraints.txt
	rm -rf .lock-venv build *.egg-info

# The analytics.js the collector serves (src/krenalis/collector/assets/analytics-next/, whose
# README says what is there): refreshed from npm's @segment/analytics-next, the newest release
# or ANALYTICS_JS_VERSION=x.y.z. Needs npm; run tests/browser/ before committing the result.
analytics-js:
	$(PYTHON) tools/refresh_analytics_js.py $(ANALYTICS_JS_VERSION)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
