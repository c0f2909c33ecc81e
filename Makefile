# Two commands do all the set-up: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest venv clean

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -c requirements-dev.lock -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/modelyard demo digits

lint: $(STAMP)
	$(BIN)/ruff check modelyard tests bench
	$(BIN)/ruff format --check modelyard tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .modelyard
