# rung — two commands: `make demo` and `make test`. Both run `setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rung-setup-stamp
PYTEST_ARGS ?=
PARITY_ARGS ?=

.PHONY: setup demo test test-unit test-integration chaos bench bench-soak parity gpu-bench lint train evaluate stack-up stack-down clean

setup: $(STAMP) ## venv, Python packages, redis-server/promtool (apt), Kafka jars (Maven, cached)
	@$(PY) -c "from stream_app.devstack.stack import kafka_libs; kafka_libs()"

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing Debian's redis-server and prometheus (promtool)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server prometheus >/dev/null; }
	@command -v java >/dev/null && command -v mvn >/dev/null || { echo "Java 17+ and Maven are required"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev,faust]'
	@touch $(STAMP)

demo: setup ## the whole path on the local stack, with a summary
	$(VENV)/bin/rung demo

test: setup ## unit + integration tests (starts its own stack)
	$(PY) -m pytest -q -m "not chaos" $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -q -m "not integration and not chaos" $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest -q -m "integration and not chaos" $(PYTEST_ARGS)

chaos: setup ## the chaos suite over the real stack
	$(PY) -m pytest -q -m chaos $(PYTEST_ARGS)

bench: setup ## end-to-end and micro benchmarks, JSON in benchmarks/results/
	$(PY) -m benchmarks.run

parity: setup ## live scores vs the offline evaluation on the real stack (JSON in benchmarks/results/)
	$(PY) -m benchmarks.parity $(PARITY_ARGS)

bench-soak: setup ## RSS over a 10-minute soak at 50% load
	$(PY) -m benchmarks.soak --minutes 10

gpu-bench: ## on a CUDA machine: forward vs batch, pinned transfers, a real device error
	benchmarks/gpu.sh

lint: setup
	$(VENV)/bin/ruff check stream_app scorers topics tests benchmarks
	$(VENV)/bin/mypy scorers topics stream_app

train: setup
	$(VENV)/bin/rung train

evaluate: setup
	$(VENV)/bin/rung evaluate

stack-up: setup
	$(VENV)/bin/rung stack up

stack-down:
	$(VENV)/bin/rung stack down

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache benchmarks/results
