# rung — two commands: `make demo` and `make test`. Both run `setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rung-setup-stamp
PYTEST_ARGS ?=
PARITY_ARGS ?=
STACK_ARGS ?=
TOXIPROXY_VERSION := 2.12.0
# Toxiproxy (network faults for the chaos suite), built from the Go module proxy once per
# machine and cached next to the Kafka jars; stream_app/devstack/toxiproxy.py finds it there.
TOXIPROXY_BIN := $(or $(RUNG_CACHE_DIR),$(HOME)/.cache/rung)/toxiproxy-$(TOXIPROXY_VERSION)

.PHONY: setup demo test test-unit test-integration chaos bench bench-soak parity gpu-bench lint train evaluate stack-up stack-down clean

# Apicurio Registry (the Confluent API, for the Avro/Protobuf formats) is built with Maven
# once per machine into the same cache (stream_app/devstack/registry.py, docker/registry/).
setup: $(STAMP) $(TOXIPROXY_BIN)/toxiproxy-server ## venv, Python packages, redis-server/promtool (apt), Kafka jars (Maven), Toxiproxy (go install); all cached
	@$(PY) -c "from stream_app.devstack.stack import kafka_libs; kafka_libs()"
	@$(PY) -c "from stream_app.devstack.registry import registry_app; registry_app()"

$(TOXIPROXY_BIN)/toxiproxy-server:
	@command -v go >/dev/null || { echo "Go 1.22+ is required once, to build Toxiproxy $(TOXIPROXY_VERSION)"; exit 1; }
	@echo "building Toxiproxy $(TOXIPROXY_VERSION) into $(TOXIPROXY_BIN)"
	@rm -rf $(TOXIPROXY_BIN).partial && mkdir -p $(TOXIPROXY_BIN).partial
	@cd /tmp && GOBIN=$(TOXIPROXY_BIN).partial GOFLAGS=-mod=mod go install github.com/Shopify/toxiproxy/v2/cmd/server@v$(TOXIPROXY_VERSION)
	@mv $(TOXIPROXY_BIN).partial/server $(TOXIPROXY_BIN).partial/toxiproxy-server
	@rm -rf $(TOXIPROXY_BIN) && mv $(TOXIPROXY_BIN).partial $(TOXIPROXY_BIN)

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing Debian's redis-server and prometheus (promtool)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server prometheus >/dev/null; }
	@command -v java >/dev/null && command -v mvn >/dev/null || { echo "Java 17+ and Maven are required"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev,faust,otel]'
	@touch $(STAMP)

demo: setup ## the whole path on the local stack, with a summary
	$(VENV)/bin/rung demo

test: setup ## unit + integration tests + the CI chaos subset (starts its own stacks)
	$(PY) -m pytest -q -m "not chaos or ci_chaos" $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -q -m "not integration and not chaos" $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest -q -m "integration and not chaos" $(PYTEST_ARGS)

chaos: setup ## the whole chaos suite over the real stack (network faults through Toxiproxy)
	$(PY) -m pytest -q -m chaos $(PYTEST_ARGS)

bench: setup ## end-to-end and micro benchmarks, JSON in benchmarks/results/
	$(PY) -m benchmarks.run

parity: setup ## live scores vs the offline evaluation on the real stack (JSON in benchmarks/results/)
	$(PY) -m benchmarks.parity $(PARITY_ARGS)

bench-soak: setup ## 30-minute soak at 50% of the realistic maximum: RSS, lag, primary share, p99
	$(PY) -m benchmarks.soak --minutes 30

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
	$(VENV)/bin/rung stack up $(STACK_ARGS)

stack-down:
	$(VENV)/bin/rung stack down

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache benchmarks/results
