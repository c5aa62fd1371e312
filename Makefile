# Every target creates .venv from requirements.txt first when it is missing or stale.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/lm_shakespeare.py
WORKDIR ?= workdirs/lm_shakespeare_mla

.PHONY: venv train test eval clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

train: venv  ## Train the default config (MLA on tiny_shakespeare), evaluate, print a sample.
	$(PY) train.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) eval.py --workdir=$(WORKDIR)

eval: venv
	$(PY) eval.py --workdir=$(WORKDIR)

test: venv  ## pytest's exit code 5 (no test collected) counts as a failure.
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
