# Two entry points that work on a fresh machine (Python 3.11, nothing installed):
#   make estimate PARAMS=7e9   set up .venv and run the main job (planner estimate)
#   make test                  set up .venv and run the whole test suite
#   make demo                  set up .venv and run the end-to-end demo (CPU, a few minutes)
PYTHON ?= python3
VENV   ?= .venv
PARAMS ?= 7e9
ARGS   ?=
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed

.PHONY: setup estimate demo test test-deps lint bench clean

setup: $(STAMP)

# torch first, pinned (the CPU build on this machine), then the project with the same pin
# so nothing it depends on can replace torch with a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

estimate: setup
	$(VENV)/bin/planner estimate --params $(PARAMS) $(ARGS)

demo: setup
	$(VENV)/bin/launch demo --out demo $(ARGS)

# Debian's slurm-wlm gives tests/test_slurm_real.py a real sbatch and slurmctld, and Debian's chromium gives
# tests/test_mlflow_ui.py a browser (Playwright, from the test extras, drives it); where apt cannot install
# them (not root, no apt, no network) those tests skip and say why.
test-deps:
	@command -v sbatch >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q slurm-wlm >/dev/null 2>&1 || \
	    { timeout 300 apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q slurm-wlm >/dev/null 2>&1; }; }; } \
	  || echo "slurm-wlm not installed: the real-Slurm tests will skip"
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { timeout 300 apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q chromium >/dev/null 2>&1; }; }; } \
	  || echo "chromium not installed: the MLflow UI tests will skip"

# Two workers (pytest-xdist), whole files to each so module fixtures are built once; tests take
# free ports and their own temp folders, so they do not collide.
TEST_WORKERS ?= 2
test: setup test-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_planner.py
	$(PY) benchmarks/bench_fit.py
	$(PY) benchmarks/bench_curation.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) build *.egg-info
