# The README's two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# PostgreSQL server binaries: use the installed ones, or install them with apt when initdb is missing.
postgres:
	@./scripts/ensure-postgres

demo: $(STAMP) postgres
	$(BIN)/orgmove demo

test: $(STAMP) postgres lint typecheck
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict orgmove

# Each benchmark prints a ratio against a baseline measured in the same run (see README).
bench: $(STAMP) postgres
	$(BIN)/python bench/seed_speed.py
	cd bench && ../$(BIN)/python copy_throughput.py
	cd bench && ../$(BIN)/python verify_speed.py
	cd bench && ../$(BIN)/python cutover_window.py
	cd bench && ../$(BIN)/python driver_stream.py

clean:
	rm -rf $(VENV) .orgmove .pytest_cache .mypy_cache .ruff_cache
