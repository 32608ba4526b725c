# facerank: `make demo` runs the whole pipeline on the bundled demo sites; `make test` runs the test suite (what CI
# runs: all but the two-node cluster tests, `make test-cluster`); `make test-fast` all but the slow ones and those on Ray.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Every Ray started from here (make demo, the tests) has token auth on; the library also insists (pipeline/ray_env.py).
export RAY_AUTH_MODE := token
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install browser demo test test-fast test-cluster lint format bench clean

install: $(STAMP)

# uv installs the same versions as pip (checked with a freeze of both) in 86 s against pip's 3 min 20 s in a fresh
# clone here (torch's CUDA wheels are most of the 7 GB). --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE
# is set (it is here) every Ray worker would otherwise compile torch again (the suite took 8 minutes longer). uv does
# not read pip's config, so where it fails pip installs instead.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'uv==0.13.9'
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[dev,demo]' || $(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

# Debian's chromium and chromedriver, asked of apt only when missing.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
	  echo "installing chromium and chromium-driver with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; fi

# The opt-out key is never made on first use: this explicit step makes ~/.config/facerank/optout.key once (or uses
# FACERANK_OPTOUT_KEY) and records it in data/demo; later runs only check it (docs/security.md).
demo: install browser
	$(PY) -m pipeline privacy init-key --config configs/demo.yaml
	$(PY) -m pipeline demo --config configs/demo.yaml

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install browser lint
	$(VENV)/bin/pytest -m "not cluster" $(PYTEST_ARGS)

# The two-node cluster tests (tests/test_two_nodes.py, about 9 minutes): more than CI's budget leaves for them.
test-cluster: install
	$(VENV)/bin/pytest -m cluster $(PYTEST_ARGS)

# The fast loop: no Ray session (pytest -m ray: the tests that use one), no Ray heads, whole pipelines, Ray Train runs
# or Chromium crawls (pytest -m slow: those). No apt step: a Chromium test it still selects is skipped without one.
test-fast: install lint
	$(VENV)/bin/pytest -m "not slow and not ray" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench_labels.py
	$(PY) benchmarks/bench_faces.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_scrape.py

# Wheels benchmarks/gpu_check.py needs on the device machine (Python 3.12, x86_64, torch but none of these), at the
# versions installed here, into benchmarks/gpu_wheels/ (gitignored; the device run carries it: docs/benchmarks.md).
GPU_WHEELS := benchmarks/gpu_wheels
GPU_WHEEL_PKGS := facenet-pytorch pydantic pydantic-core annotated-types typing-inspection typing-extensions
.PHONY: gpu-wheels
gpu-wheels: install
	rm -rf $(GPU_WHEELS)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(GPU_WHEELS) \
	  $$($(PY) -c 'import sys, importlib.metadata as m; print(*(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $(GPU_WHEEL_PKGS))
	@test "$$(ls $(GPU_WHEELS)/*.whl | wc -l)" -eq $(words $(GPU_WHEEL_PKGS)) || { echo "expected $(words $(GPU_WHEEL_PKGS)) wheels"; exit 1; }
	@test "$$(du -sk $(GPU_WHEELS) | cut -f1)" -lt 16384 || { echo "$(GPU_WHEELS) is over 16 MiB"; exit 1; }
	@du -sh $(GPU_WHEELS); ls $(GPU_WHEELS)

clean:
	rm -rf data/demo data/test .pytest_cache .ruff_cache
