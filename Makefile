# facerank: `make demo` runs the whole pipeline on the bundled demo sites; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Every Ray started from here (make demo, the tests) has token auth on; the library also insists (pipeline/ray_env.py).
export RAY_AUTH_MODE := token
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install browser demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's chromium and chromedriver, asked of apt only when missing.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
	  echo "installing chromium and chromium-driver with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; fi

demo: install browser
	$(PY) -m pipeline demo --config configs/demo.yaml

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install browser lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench_labels.py
	$(PY) benchmarks/bench_faces.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_scrape.py

clean:
	rm -rf data/demo data/test .pytest_cache .ruff_cache
