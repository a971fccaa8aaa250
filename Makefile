# Two entry points: `make speedrun` (the main job) and `make test` (the whole suite).
# Each creates or refreshes the virtual environment when it is missing or stale.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genlab-installed

.PHONY: speedrun test bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

speedrun: $(STAMP)
	$(VENV)/bin/genlab speedrun $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

clean-venv:
	rm -rf $(VENV)
