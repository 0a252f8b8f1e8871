# tiermux: `make run` starts the demo, `make test` runs every test. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
SYSTEM_DEPS := nginx wrk redis-server
PYTEST_FLAGS ?= -q

.PHONY: all install build run test test-compiled test-pure lint bench bench-throughput bench-budgets bench-cache bench-metrics bench-quality bench-dialects bench-locust bench-micro bench-classifier model clean

all: install

# The virtual environment, the package (editable) with its extras, and the compiled extensions.
$(INSTALLED): pyproject.toml setup.py $(wildcard csrc/*.pyx)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,redis,bench]'
	touch $@

install: $(INSTALLED)

# Rebuild the extensions after editing csrc/ (an editable install compiles them in place).
build: $(INSTALLED)
	$(PY) -m pip install -q --no-deps -e .

system-deps:
	scripts/install-system-deps.sh $(SYSTEM_DEPS)

# The demo: mock vLLM on :8001, mock cloud on :8002, tiermux on :8080 (Ctrl-C stops all three).
run: $(INSTALLED)
	$(PY) -m bench.demo

# Every test, twice: against the compiled extensions (asserting they are really loaded),
# then against the pure-Python twins.
test: $(INSTALLED) system-deps test-compiled test-pure

test-compiled: $(INSTALLED)
	TIERMUX_EXPECT_COMPILED=1 $(PY) -m pytest $(PYTEST_FLAGS)

test-pure: $(INSTALLED)
	TIERMUX_NO_EXTENSIONS=1 $(PY) -m pytest $(PYTEST_FLAGS)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# Benchmarks live outside the test run. Results land in bench/results/.
bench: bench-micro bench-classifier bench-throughput bench-budgets bench-cache bench-metrics bench-quality bench-dialects bench-locust

bench-throughput: $(INSTALLED) system-deps
	$(PY) -m bench.throughput

# What budgets (shared memory and Redis) and health tracking cost (bench/results/budgets.md).
bench-budgets: $(INSTALLED) system-deps
	$(PY) -m bench.throughput --budgets

# Response cache hits against a Granian app answering with no upstream (bench/results/cache.md).
bench-cache: $(INSTALLED) system-deps
	$(PY) -m bench.throughput --cache

# What Prometheus metrics (scraped during the run) and the access log cost (bench/results/metrics.md).
bench-metrics: $(INSTALLED) system-deps
	$(PY) -m bench.throughput --metrics

# Whether the quality safety net's background checks slow the hot path (bench/results/quality.md).
bench-quality: $(INSTALLED) system-deps
	$(PY) -m bench.throughput --quality

# What translating between the OpenAI and Anthropic dialects costs (bench/results/dialects.md).
bench-dialects: $(INSTALLED) system-deps
	$(PY) -m bench.throughput --dialects

bench-locust: $(INSTALLED)
	$(PY) -m bench.locust_run

# Routing quality on held-out and left-out sets (bench/results/classifier.md).
bench-classifier: $(INSTALLED)
	$(PY) -m bench.classifier

# Retrain the bundled classifier from bench/data (deterministic), then measure it.
model: $(INSTALLED)
	$(PY) -m bench.classifier --build

bench-micro: $(INSTALLED)
	$(PY) -m pytest bench/micro -q -p no:randomly --benchmark-only --benchmark-columns=min,median,mean,max,rounds

clean:
	rm -rf build $(VENV) src/*.egg-info csrc/*.c src/tiermux/_ext/*.so
