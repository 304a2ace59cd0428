# authswitch — every target creates the virtualenv it needs (.venv) on first use.
#
#   make serve        run the server on embedded Postgres and Redis (nothing to install)
#   make test         lint, type-check and run the whole test suite
#   make demo         create a funded demo card on the running server
#   make proto        regenerate the Python code of protos/
#   make bench        the benchmark suite;  make bench-quick: its CI smoke mode (< 60 s)
#   make soak         30 minutes at half of capacity; fails if anything keeps growing
#                     (not in CI; SOAK_ARGS="--minutes 3" for a short run)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps per pyproject.toml version: what serving needs (make serve, make demo), and the
# development tools on top (tests, linters, type checker, proto generator, chart tests).
HASH        := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SERVE_STAMP := $(VENV)/.installed-serve-$(HASH)
DEV_STAMP   := $(VENV)/.installed-dev-$(HASH)
PIP         := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: serve test check lint typecheck pytest demo proto bench bench-quick soak clean venv

$(SERVE_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "authswitch needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	@rm -f $(VENV)/.installed-serve-* && touch $@

$(DEV_STAMP): $(SERVE_STAMP)
	$(PIP) -e '.[dev]'
	@rm -f $(VENV)/.installed-dev-* && touch $@

venv: $(DEV_STAMP)

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
