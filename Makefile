# The two commands a fresh machine needs: `make demo` and `make test`.
PY ?= python3
# pytest-xdist workers of the non-fault tests (each starts its own broker)
TEST_WORKERS ?= 2
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration lint bench kafka-jars prometheus-bin label-studio-venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

kafka-jars: $(STAMP)
	$(BIN)/hitl-router kafka fetch

prometheus-bin: $(STAMP)
	$(BIN)/hitl-router prometheus fetch

label-studio-venv: $(STAMP)
	$(BIN)/hitl-router label-studio fetch

demo: $(STAMP)
	$(BIN)/hitl-router demo $(DEMO_ARGS)

test: $(STAMP) kafka-jars prometheus-bin label-studio-venv
	$(BIN)/ruff check hitl_router tests
	$(BIN)/ruff format --check hitl_router tests
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not faults" $(PYTEST_ARGS)
	$(BIN)/pytest -m faults tests/integration/test_faults.py $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP) kafka-jars
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
