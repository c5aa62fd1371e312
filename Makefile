# Every target creates .venv from requirements.lock first when it is missing or stale.
# requirements.txt holds the human-edited lower bounds; `make lock` pins them into
# requirements.lock (uv pip compile, universal: every platform, Python >= 3.11).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/lm_shakespeare.py
WORKDIR ?= workdirs/lm_shakespeare_mla
# Parallel test workers: one per core (pytest-xdist); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto

.PHONY: venv preflight-deps train train-multiprocess test test-e2e test-results eval lock clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The pre-flight's compilers (libtpu, jax-cuda12-plugin) go to $(VENV)/preflight, outside
# site-packages: bench/preflight.py alone puts them on its path (requirements-preflight.txt says
# why). Their markers install nothing off Linux x86-64, where tests/test_preflight.py skips.
preflight-deps: $(VENV)/preflight/.installed  ## libtpu + CUDA plugin for scripts/preflight.py.

$(VENV)/preflight/.installed: requirements-preflight.lock $(VENV)/.installed
	$(PY) -m pip install --quiet --upgrade --no-deps --target $(VENV)/preflight \
	  -r requirements-preflight.lock
	touch $@

train: venv  ## Train the default config (MLA on tiny_shakespeare), evaluate, print a sample.
	$(PY) train.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) eval.py --workdir=$(WORKDIR)

train-multiprocess: venv  ## `train` as 2 local processes of 2 CPU devices, in $(WORKDIR)_2proc.
	$(PY) scripts/launch_local.py --num_processes=2 --devices_per_process=2 -- \
	  --config=$(CONFIG) --workdir=$(WORKDIR)_2proc
	$(PY) eval.py --workdir=$(WORKDIR)_2proc

eval: venv  ## Evaluate the latest checkpoint of $(WORKDIR) (eval_results.json there).
	$(PY) eval.py --workdir=$(WORKDIR)

# The fast tier. pytest's exit code 5 (no test collected) counts as a failure.
test: venv preflight-deps  ## The fast tier, on every core.
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-e2e: venv preflight-deps  ## The end-to-end tier: scripts, trainings, 2 processes, pre-flight compiles.
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m e2e --durations=5 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-results: venv  ## The results tier: real trainings guarding the published results (minutes).
	LATENT_ATTENTION_TEST_TIER=results $(PY) -m pytest -q -m results --durations=0 tests; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lock: venv  ## Re-pin requirements.lock from requirements.txt (then `make venv` installs it).
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile requirements.txt --universal --python-version 3.11 \
	  -o requirements.lock
	$(VENV)/bin/uv pip compile requirements-preflight.txt --universal --python-version 3.11 \
	  -o requirements-preflight.lock

clean:
	rm -rf $(VENV) .pytest_cache
