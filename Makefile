# make dev   - install what is missing, run Kafka + Postgres + every skyjobs process (Ctrl-C stops all)
# make test  - install what is missing, lint, type-check and run the whole suite on real Kafka and Postgres
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install dev test unit lint schemas bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)
	$(BIN)/python -m infra install

dev: install
	$(BIN)/skyjobs dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

schemas: $(STAMP)
	$(BIN)/python -m events.schemas

bench: install
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .skyjobs
