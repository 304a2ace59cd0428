# authswitch — every target creates the virtualenv it needs (.venv) on first use.
#
#   make serve        run the server on embedded Postgres and Redis (nothing to install)
#   make test         lint, type-check and run the whole test suite
#   make demo         create a funded demo card on the running server
#   make proto        regenerate the Python code of protos/
#   make lock         re-pin constraints.txt to the newest releases pyproject.toml allows
#   make bench        the benchmark suite;  make bench-quick: its CI smoke mode (< 60 s)
#   make soak         30 minutes at half of capacity; fails if anything keeps growing
#                     (not in CI; SOAK_ARGS="--minutes 3" for a short run)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps per version of pyproject.toml and constraints.txt: what serving needs (make
# serve, make demo), and the development tools on top (tests, linters, type checker, proto
# generator, chart tests). constraints.txt pins every package to what `make lock` resolved.
HASH        := $(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
SERVE_STAMP := $(VENV)/.installed-serve-$(HASH)
DEV_STAMP   := $(VENV)/.installed-dev-$(HASH)
PIP         := $(BIN)/python -m pip install --quiet --disable-pip-version-check
LOCK_VENV   := $(VENV)-lock

.PHONY: serve test check lint typecheck pytest demo proto bench bench-quick soak clean venv lock

$(SERVE_STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "authswitch needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -c constraints.txt -e .
	@rm -f $(VENV)/.installed-serve-* && touch $@

$(DEV_STAMP): $(SERVE_STAMP)
	$(PIP) -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-dev-* && touch $@

venv: $(DEV_STAMP)

# The newest releases pyproject.toml's ranges allow, resolved in a scratch venv, as constraints.
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	{ echo "# Versions CI and \`make\` install (pip -c): what \`make lock\` resolved from pyproject.toml's"; \
	  echo "# ranges on $$(date -u +%Y-%m-%d), so that a new release cannot break a clean clone unseen."; \
	  echo "# Refresh with \`make lock\`, then run the tests."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf $(LOCK_VENV)
	@echo "constraints.txt refreshed: run make test before committing it"

serve: $(SERVE_STAMP)
	$(BIN)/authswitch serve

demo: $(SERVE_STAMP)
	$(BIN)/authswitch demo

test: check pytest

check: lint typecheck

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff format --check src tests tools benchmarks

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

pytest: $(DEV_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

proto: $(DEV_STAMP)
	$(BIN)/python tools/gen_protos.py

bench: $(DEV_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: $(DEV_STAMP)
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

soak: $(DEV_STAMP)
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
