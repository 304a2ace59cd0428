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
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: serve test check lint typecheck pytest demo proto bench bench-quick soak clean venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "authswitch needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

serve: $(STAMP)
	$(BIN)/authswitch serve

demo: $(STAMP)
	$(BIN)/authswitch demo

test: check pytest

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff format --check src tests tools benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

proto: $(STAMP)
	$(BIN)/python tools/gen_protos.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
